// ASCII helpers shared by the parsers: case-insensitive comparisons,
// trimming, hex digits.
#pragma once

#include <string_view>

namespace kv {

constexpr char ascii_lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c | 0x20) : c; }

constexpr bool starts_with_ci(std::string_view text, std::string_view prefix) {
  if (text.size() < prefix.size()) return false;
  for (size_t i = 0; i < prefix.size(); ++i) {
    if (ascii_lower(text[i]) != ascii_lower(prefix[i])) return false;
  }
  return true;
}

constexpr bool equals_ci(std::string_view a, std::string_view b) { return a.size() == b.size() && starts_with_ci(a, b); }

constexpr bool ends_with_ci(std::string_view text, std::string_view suffix) {
  return text.size() >= suffix.size() && equals_ci(text.substr(text.size() - suffix.size()), suffix);
}

// Strips any of `chars` from both ends.
constexpr std::string_view trim(std::string_view s, std::string_view chars) {
  while (!s.empty() && chars.find(s.front()) != std::string_view::npos) s.remove_prefix(1);
  while (!s.empty() && chars.find(s.back()) != std::string_view::npos) s.remove_suffix(1);
  return s;
}

// Strips optional whitespace (spaces and tabs, RFC 9110 5.6.3) from both ends.
constexpr std::string_view trim_ows(std::string_view s) { return trim(s, " \t"); }

// The value of a hex digit, or -1.
constexpr int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  char lower = ascii_lower(c);
  return lower >= 'a' && lower <= 'f' ? lower - 'a' + 10 : -1;
}

}  // namespace kv

#include "url.h"

#include "ascii.h"

namespace kv {

std::optional<std::string_view> find_query_param(std::string_view query, std::string_view name) {
  while (!query.empty()) {
    size_t amp = query.find('&');
    std::string_view pair = query.substr(0, amp);
    size_t eq = pair.find('=');
    if (pair.substr(0, eq) == name) return eq == std::string_view::npos ? std::string_view() : pair.substr(eq + 1);
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return std::nullopt;
}

std::optional<size_t> url_decode(std::string_view encoded, char* out) {
  size_t size = 0;
  for (size_t i = 0; i < encoded.size(); ++i) {
    char c = encoded[i];
    if (c == '+') {
      c = ' ';
    } else if (c == '%') {
      if (i + 2 >= encoded.size()) return std::nullopt;
      int high = hex_value(encoded[i + 1]), low = hex_value(encoded[i + 2]);
      if (high < 0 || low < 0) return std::nullopt;
      c = static_cast<char>(high * 16 + low);
      i += 2;
    }
    out[size++] = c;
  }
  return size;
}

}  // namespace kv

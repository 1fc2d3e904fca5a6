// Fuzz target for the /get query handling: find_query_param + url_decode.
//
// Checks that a found parameter lies inside the query, that decoding never
// grows (url_decode writes into a buffer of exactly encoded.size() bytes, so
// an overflow is an ASan report), that it agrees with a straightforward
// reference decoder, and that percent-encoding the decoded bytes and decoding
// again gives them back.
//
// Input layout: byte 0 = parameter name length (mod 8), then the name, then
// the query. The name "key" (what the server asks for) is always tried too.
#include "url.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace {

void check(bool ok) {
  if (!ok) __builtin_trap();
}

int hex(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::optional<std::string> reference_decode(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '+') {
      out += ' ';
    } else if (s[i] == '%') {
      if (s.size() - i < 3 || hex(s[i + 1]) < 0 || hex(s[i + 2]) < 0) return std::nullopt;
      out += static_cast<char>(hex(s[i + 1]) * 16 + hex(s[i + 2]));
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}

// Reference search: the first '&'-separated pair whose name is `name`.
std::optional<std::string_view> reference_find(std::string_view query, std::string_view name) {
  size_t start = 0;
  while (start < query.size()) {
    size_t amp = query.find('&', start);
    size_t end = amp == std::string_view::npos ? query.size() : amp;
    std::string_view pair = query.substr(start, end - start);
    size_t eq = pair.find('=');
    if (pair.substr(0, eq) == name) return eq == std::string_view::npos ? std::string_view() : pair.substr(eq + 1);
    if (amp == std::string_view::npos) break;
    start = amp + 1;
  }
  return std::nullopt;
}

// Percent-encodes everything but unreserved characters; spaces alternate
// between '+' and %20 so both spellings are exercised.
std::string encode(std::string_view raw) {
  static const char digits[] = "0123456789ABCDEF";
  std::string out;
  bool plus = false;
  for (unsigned char c : raw) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
        c == '_' || c == '~') {
      out += static_cast<char>(c);
    } else if (c == ' ' && (plus = !plus)) {
      out += '+';
    } else {
      out += '%';
      out += digits[c >> 4];
      out += (c & 1) ? static_cast<char>(digits[c & 15] | 0x20) : digits[c & 15];  // mixed-case hex
    }
  }
  return out;
}

std::optional<std::string> decode(std::string_view encoded) {
  // Exactly encoded.size() bytes, as the contract says (a new[0] for empty input).
  std::unique_ptr<char[]> out(new char[encoded.size()]);
  std::optional<size_t> size = kv::url_decode(encoded, out.get());
  std::optional<std::string> expected = reference_decode(encoded);
  check(size.has_value() == expected.has_value());
  if (!size) return std::nullopt;
  check(*size <= encoded.size());
  std::string decoded(out.get(), *size);
  check(decoded == *expected);
  return decoded;
}

void exercise(std::string_view query, std::string_view name) {
  std::optional<std::string_view> value = kv::find_query_param(query, name);
  std::optional<std::string_view> expected = reference_find(query, name);
  check(value.has_value() == expected.has_value());
  if (!value) return;
  check(*value == *expected);
  check(value->empty() || (value->data() >= query.data() && value->data() + value->size() <= query.data() + query.size()));
  check(value->find('&') == std::string_view::npos);
  std::optional<std::string> decoded = decode(*value);
  if (!decoded) return;
  std::string reencoded = encode(*decoded);
  std::optional<std::string> again = decode(reencoded);
  check(again.has_value() && *again == *decoded);
  // And through the query machinery, as a client would send it.
  std::string query2 = "a=1&" + std::string(name) + "=" + reencoded + "&" + std::string(name) + "=other";
  if (name.find('&') == std::string_view::npos && name.find('=') == std::string_view::npos && name != "a") {
    std::optional<std::string_view> found = kv::find_query_param(query2, name);
    check(found.has_value() && *found == reencoded);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  // Arbitrary bytes straight into the decoder, and round-tripped.
  if (std::optional<std::string> decoded = decode(input)) {
    std::optional<std::string> again = decode(encode(*decoded));
    check(again.has_value() && *again == *decoded);
  }
  if (size == 0) return 0;
  size_t name_size = std::min<size_t>(data[0] % 8, size - 1);
  std::string_view name = input.substr(1, name_size);
  std::string_view query = input.substr(1 + name_size);
  // A heap copy of exactly the query, so reads past it are ASan reports.
  std::unique_ptr<char[]> copy(new char[query.size()]);
  if (!query.empty()) std::memcpy(copy.get(), query.data(), query.size());
  std::string_view exact(copy.get(), query.size());
  exercise(exact, name);
  exercise(exact, "key");
  return 0;
}

#include "json_out.h"
#include "url.h"

#include <doctest/doctest.h>

#include <string>

using namespace kv;

namespace {

std::optional<std::string> decode(std::string_view encoded) {
  std::string out(encoded.size(), '\0');
  auto size = url_decode(encoded, out.data());
  if (!size) return std::nullopt;
  out.resize(*size);
  return out;
}

std::string escaped(std::string_view text) {
  std::string out;
  append_json_escaped(out, text);
  CHECK(out.size() == json_escaped_size(text));
  return out;
}

}  // namespace

TEST_CASE("query parameters") {
  CHECK(find_query_param("key=a&b=c", "key") == "a");
  CHECK(find_query_param("b=c&key=x%20y", "key") == "x%20y");
  CHECK(find_query_param("key", "key") == "");
  CHECK(find_query_param("keys=1", "key") == std::nullopt);
  CHECK(find_query_param("", "key") == std::nullopt);
}

TEST_CASE("url decoding") {
  CHECK(decode("a+b%20c%2Bd%2f") == "a b c+d/");
  CHECK(decode("") == "");
  CHECK(decode("%41%4a%4A") == "AJJ");
  CHECK_FALSE(decode("%"));
  CHECK_FALSE(decode("%4"));
  CHECK_FALSE(decode("%zz"));
  CHECK_FALSE(decode("abc%g1"));
}

TEST_CASE("json escaping") {
  CHECK(escaped("plain") == "plain");
  CHECK(escaped("a\"b\\c") == "a\\\"b\\\\c");
  CHECK(escaped("\n\r\t\b\f") == "\\n\\r\\t\\b\\f");
  CHECK(escaped(std::string("\x01\x1f\0", 3)) == "\\u0001\\u001f\\u0000");
  CHECK(escaped("/ and \x7f") == "/ and \x7f");
}

TEST_CASE("json escaping finds special bytes at every position of a word") {
  for (char special : {'"', '\\', '\n', '\x01', '\x1f'}) {
    for (size_t length = 1; length <= 20; ++length) {
      for (size_t at = 0; at < length; ++at) {
        std::string text(length, 'a');
        text[at] = special;
        std::string out = escaped(text);
        CAPTURE(length);
        CAPTURE(at);
        CHECK(out.size() > text.size());
        CHECK(out.find('\\') == at);
      }
    }
  }
  // Bytes next to the special ranges are plain.
  std::string edges = "\x20\x21\x23\x5b\x5d\x7f!#[]~ ";
  CHECK(escaped(edges) == edges);
}

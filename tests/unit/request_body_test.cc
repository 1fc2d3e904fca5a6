#include "request_body.h"

#include <doctest/doctest.h>

#include <string>

using namespace kv;

namespace {

// The decoder needs padding after the body, as the server's read buffer has.
struct Padded {
  explicit Padded(std::string text) : storage(text + std::string(RequestBodyDecoder::kPadding, '\0')), size(text.size()) {}
  operator std::string_view() const { return {storage.data(), size}; }
  std::string storage;
  size_t size;
};

std::string put_error(RequestBodyDecoder& decoder, const std::string& body) {
  PutItem item;
  return decoder.decode_put(Padded(body), item) ? "" : decoder.error();
}

}  // namespace

TEST_CASE("put bodies") {
  RequestBodyDecoder decoder;
  PutItem item;
  REQUIRE(decoder.decode_put(Padded(R"({"key":"a\"b","value":"x\\y\u0041","extra":[1,{}]})"), item));
  CHECK(item.key == "a\"b");
  CHECK(item.value == "x\\yA");
  CHECK(item.ttl_seconds == 0);
  REQUIRE(decoder.decode_put(Padded(R"({"value":"", "key":"k", "ttl": 30})"), item));
  CHECK(item.value.empty());
  CHECK(item.ttl_seconds == 30);
}

TEST_CASE("put errors") {
  RequestBodyDecoder decoder;
  CHECK(put_error(decoder, "") == "request body is missing");
  CHECK(put_error(decoder, " \r\n\t") == "request body is missing");
  CHECK(put_error(decoder, " {") == "malformed JSON");
  CHECK(put_error(decoder, "{\"key\":") == "malformed JSON");
  CHECK(put_error(decoder, R"({"key":"a","value":"b"} trailing)") == "malformed JSON");
  CHECK(put_error(decoder, R"({"key":"a","value":"b","x":tru})") == "malformed JSON");
  CHECK(put_error(decoder, "[1,2]") == "body must be a JSON object");
  CHECK(put_error(decoder, "\"str\"") == "body must be a JSON object");
  CHECK(put_error(decoder, R"({"value":"b"})") == "key is required");
  CHECK(put_error(decoder, R"({"key":1,"value":"b"})") == "key must be a string");
  CHECK(put_error(decoder, R"({"key":"","value":"b"})") == "key must not be empty");
  CHECK(put_error(decoder, R"({"key":"a"})") == "value is required");
  CHECK(put_error(decoder, R"({"key":"a","value":null})") == "value must be a string");
  CHECK(put_error(decoder, R"({"key":")" + std::string(257, 'k') + R"(","value":"b"})") == "key exceeds 256 characters");
  CHECK(put_error(decoder, R"({"key":"a","value":")" + std::string(257, 'v') + R"("})") == "value exceeds 256 characters");
  CHECK(put_error(decoder, R"({"key":"\u00e9","value":"b"})") == "key must be ASCII");
  CHECK(put_error(decoder, "{\"key\":\"a\",\"value\":\"\xc3\xa9\"}") == "value must be ASCII");
  for (const char* ttl : {"-1", "1.5", "\"5\"", "2147483648", "true"}) {
    CAPTURE(ttl);
    CHECK(put_error(decoder, std::string(R"({"key":"a","value":"b","ttl":)") + ttl + "}") ==
          "ttl must be an integer between 0 and 2147483647");
  }
}

TEST_CASE("lengths are counted after unescaping") {
  RequestBodyDecoder decoder;
  std::string escaped;
  for (int i = 0; i < 256; ++i) escaped += "\\u0041";
  CHECK(put_error(decoder, R"({"key":")" + escaped + R"(","value":"b"})") == "");
  CHECK(put_error(decoder, R"({"key":")" + escaped + R"(A","value":"b"})") == "key exceeds 256 characters");
}

TEST_CASE("mput and mget") {
  RequestBodyDecoder decoder;
  REQUIRE(decoder.decode_mput(Padded(R"({"items":[{"key":"a","value":"1"},{"key":"b","value":"2","ttl":5}]})")));
  REQUIRE(decoder.items().size() == 2);
  CHECK(decoder.items()[1].key == "b");
  CHECK(decoder.items()[1].ttl_seconds == 5);
  CHECK_FALSE(decoder.decode_mput(Padded(R"({"items":[{"key":"a","value":"1"},{"key":"b","value":2}]})")));
  CHECK(decoder.error() == "items[1]: value must be a string");
  CHECK_FALSE(decoder.decode_mput(Padded(R"({"items":[1]})")));
  CHECK(decoder.error() == "item 0 must be a JSON object");
  CHECK_FALSE(decoder.decode_mput(Padded(R"({"items":{}})")));
  CHECK(decoder.error() == "items must be an array");

  REQUIRE(decoder.decode_mget(Padded(R"({"keys":["a","b","c"]})")));
  CHECK(decoder.keys().size() == 3);
  CHECK_FALSE(decoder.decode_mget(Padded(R"({"keys":["a",""]})")));
  CHECK(decoder.error() == "keys[1]: key must not be empty");
  std::string many = R"({"keys":[)";
  for (int i = 0; i < 1001; ++i) many += (i ? ",\"k\"" : "\"k\"");
  CHECK_FALSE(decoder.decode_mget(Padded(many + "]}")));
  CHECK(decoder.error() == "too many keys (max 1000)");
}

TEST_CASE("delete bodies") {
  RequestBodyDecoder decoder;
  std::string_view key;
  REQUIRE(decoder.decode_key(Padded(R"({"key":"gone"})"), key));
  CHECK(key == "gone");
  CHECK_FALSE(decoder.decode_key(Padded(R"({"key":5})"), key));
  CHECK(decoder.error() == "key must be a string");
}

TEST_CASE("expire bodies: key and ttl required, ttl validated as /put's") {
  RequestBodyDecoder decoder;
  std::string_view key;
  uint32_t ttl = 7;
  REQUIRE(decoder.decode_expire(Padded(R"({"key":"k","ttl":30})"), key, ttl));
  CHECK(key == "k");
  CHECK(ttl == 30);
  REQUIRE(decoder.decode_expire(Padded(R"({"ttl":0,"key":"z","extra":[1]})"), key, ttl));
  CHECK(ttl == 0);
  REQUIRE(decoder.decode_expire(Padded(R"({"key":"k","ttl":2147483647})"), key, ttl));
  CHECK(ttl == 2147483647u);
  auto error = [&](std::string body) {
    return decoder.decode_expire(Padded(body), key, ttl) ? std::string() : decoder.error();
  };
  CHECK(error("") == "request body is missing");
  CHECK(error("{") == "malformed JSON");
  CHECK(error("[]") == "body must be a JSON object");
  CHECK(error(R"({"key":"k"})") == "ttl is required");
  CHECK(error(R"({"ttl":5})") == "key is required");
  CHECK(error(R"({"key":"","ttl":5})") == "key must not be empty");
  for (const char* bad : {"-1", "1.5", "\"5\"", "2147483648", "true", "null"}) {
    CHECK(error(std::string(R"({"key":"k","ttl":)") + bad + "}") == "ttl must be an integer between 0 and 2147483647");
  }
}

TEST_CASE("every body-taking decoder says a missing body is missing") {
  RequestBodyDecoder decoder;
  std::string_view key;
  uint32_t ttl;
  PutItem item;
  for (std::string body : {"", " ", "\n\r\t  "}) {
    CHECK_FALSE(decoder.decode_put(Padded(body), item));
    CHECK(decoder.error() == "request body is missing");
    CHECK_FALSE(decoder.decode_key(Padded(body), key));
    CHECK(decoder.error() == "request body is missing");
    CHECK_FALSE(decoder.decode_mput(Padded(body)));
    CHECK(decoder.error() == "request body is missing");
    CHECK_FALSE(decoder.decode_mget(Padded(body)));
    CHECK(decoder.error() == "request body is missing");
    CHECK_FALSE(decoder.decode_expire(Padded(body), key, ttl));
    CHECK(decoder.error() == "request body is missing");
  }
}

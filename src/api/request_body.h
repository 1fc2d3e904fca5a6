// Turns JSON request bodies into commands, validating every field.
#pragma once

#include "http_handler.h"

#include <simdjson.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kv {

struct PutItem {
  std::string_view key;
  std::string_view value;
  uint32_t ttl_seconds = 0;
};

// One per worker thread: reuses the simdjson parser and the batch vectors, so
// decoding allocates nothing once warm. Decoded strings point into the parser
// and stay valid until the next decode.
class RequestBodyDecoder {
 public:
  // simdjson reads up to this many bytes past the end of the body.
  static constexpr size_t kPadding = simdjson::SIMDJSON_PADDING;
  static_assert(kPadding <= http::kBodyPadding, "the connection layer pads bodies by http::kBodyPadding");

  RequestBodyDecoder();

  // Each returns false with error() set when the body is invalid. The body
  // must be followed by kPadding readable bytes.
  bool decode_put(std::string_view body, PutItem& item);
  bool decode_key(std::string_view body, std::string_view& key);
  bool decode_mput(std::string_view body);
  bool decode_mget(std::string_view body);
  // POST /expire: {"key": K, "ttl": N}, ttl required, validated as /put's.
  bool decode_expire(std::string_view body, std::string_view& key, uint32_t& ttl_seconds);

  const std::vector<PutItem>& items() const { return items_; }
  const std::vector<std::string_view>& keys() const { return keys_; }
  const std::string& error() const { return error_; }

 private:
  bool parse_object(std::string_view body, simdjson::dom::object& object);
  bool read_string(simdjson::dom::object object, const char* field, std::string_view& out);
  bool read_put_item(simdjson::dom::object object, PutItem& item);
  // An absent ttl leaves ttl_seconds as it is.
  bool read_ttl(simdjson::dom::object object, uint32_t& ttl_seconds, bool required);
  bool read_batch(std::string_view body, const char* field, simdjson::dom::array& array);
  bool fail(std::string message);

  simdjson::dom::parser parser_;
  std::vector<PutItem> items_;
  std::vector<std::string_view> keys_;
  std::string error_;
};

}  // namespace kv

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

  // Allocates the parser for the largest body up front; if that fails (no
  // memory at start), each parse tries again and fails with 503 meanwhile.
  RequestBodyDecoder();

  // Each returns false with error() and error_status() set when the body is
  // invalid (400) or could not be parsed for want of memory (503: the
  // server's failure, not the client's). The body must be followed by
  // kPadding readable bytes.
  bool decode_put(std::string_view body, PutItem& item);
  bool decode_key(std::string_view body, std::string_view& key);
  bool decode_mput(std::string_view body);
  bool decode_mget(std::string_view body);
  // POST /expire: {"key": K, "ttl": N}, ttl required, validated as /put's.
  bool decode_expire(std::string_view body, std::string_view& key, uint32_t& ttl_seconds);

  const std::vector<PutItem>& items() const { return items_; }
  const std::vector<std::string_view>& keys() const { return keys_; }
  const std::string& error() const { return error_; }
  int error_status() const { return error_status_; }

 private:
  bool parse_object(std::string_view body, simdjson::dom::object& object);
  bool read_string(simdjson::dom::object object, const char* field, std::string_view& out);
  bool read_put_item(simdjson::dom::object object, PutItem& item);
  // An absent ttl leaves ttl_seconds as it is.
  bool read_ttl(simdjson::dom::object object, uint32_t& ttl_seconds, bool required);
  bool read_batch(std::string_view body, const char* field, simdjson::dom::array& array);
  bool fail(std::string message, int status = 400);
  // Allocates the parser for the largest body, once; false while it cannot.
  bool prepare();

  simdjson::dom::parser parser_;
  std::vector<PutItem> items_;
  std::vector<std::string_view> keys_;
  std::string error_;
  int error_status_ = 400;
  bool prepared_ = false;  // parser_ holds room for the largest body
};

}  // namespace kv

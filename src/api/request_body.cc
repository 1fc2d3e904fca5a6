#include "request_body.h"

#include "http_parser.h"
#include "validation.h"

#include <new>

#include <fmt/core.h>

namespace kv {

RequestBodyDecoder::RequestBodyDecoder() : parser_(http::kMaxBodyBytes) {
  // Allocate once up front so no request pays for it. Without the memory,
  // each parse tries again (and answers 503 while it cannot), and the
  // vectors grow as they fill.
  prepare();
  try {
    items_.reserve(kMaxBatchItems);
    keys_.reserve(kMaxBatchItems);
  } catch (const std::bad_alloc&) {
  }
}

bool RequestBodyDecoder::prepare() {
  if (prepared_) return true;
  if (parser_.allocate(http::kMaxBodyBytes) == simdjson::SUCCESS) return prepared_ = true;
  // A failed allocate() can leave the parser half built (buffers without
  // their depth stacks), which simdjson would then use: start again from none.
  parser_ = simdjson::dom::parser(http::kMaxBodyBytes);
  return false;
}

bool RequestBodyDecoder::fail(std::string message, int status) {
  error_ = std::move(message);
  error_status_ = status;
  return false;
}

bool RequestBodyDecoder::parse_object(std::string_view body, simdjson::dom::object& object) {
  // No bytes at all (or only whitespace) is a missing body, not bad JSON.
  if (body.find_first_not_of(" \t\r\n") == std::string_view::npos) return fail("request body is missing");
  constexpr std::string_view kNoMemory = "server out of memory: cannot parse the body, retry later";
  if (!prepare()) return fail(std::string(kNoMemory), 503);
  simdjson::dom::element root;
  simdjson::error_code error = parser_.parse(body.data(), body.size(), false).get(root);
  // simdjson rejects numbers it cannot represent (beyond 64 bits, 1e999) as it does bad ones.
  if (error == simdjson::NUMBER_ERROR) return fail("malformed or out-of-range number");
  if (error == simdjson::MEMALLOC) {
    prepared_ = false;
    parser_ = simdjson::dom::parser(http::kMaxBodyBytes);
    return fail(std::string(kNoMemory), 503);
  }
  if (error != simdjson::SUCCESS) return fail("malformed JSON");
  if (root.get_object().get(object) != simdjson::SUCCESS) return fail("body must be a JSON object");
  return true;
}

bool RequestBodyDecoder::read_string(simdjson::dom::object object, const char* field, std::string_view& out) {
  simdjson::dom::element element;
  if (object[field].get(element) != simdjson::SUCCESS) return fail(fmt::format("{} is required", field));
  if (element.get_string().get(out) != simdjson::SUCCESS) return fail(fmt::format("{} must be a string", field));
  return true;
}

bool RequestBodyDecoder::read_put_item(simdjson::dom::object object, PutItem& item) {
  if (!read_string(object, "key", item.key)) return false;
  if (const char* error = key_error(item.key)) return fail(error);
  if (!read_string(object, "value", item.value)) return false;
  if (const char* error = value_error(item.value)) return fail(error);
  item.ttl_seconds = 0;
  return read_ttl(object, item.ttl_seconds, false);
}

bool RequestBodyDecoder::read_ttl(simdjson::dom::object object, uint32_t& ttl_seconds, bool required) {
  simdjson::dom::element ttl;
  if (object["ttl"].get(ttl) != simdjson::SUCCESS) return !required || fail("ttl is required");
  int64_t seconds = 0;
  if (ttl.get_int64().get(seconds) != simdjson::SUCCESS || seconds < 0 || seconds > kMaxTtlSeconds) {
    return fail(fmt::format("ttl must be an integer between 0 and {}", kMaxTtlSeconds));
  }
  ttl_seconds = static_cast<uint32_t>(seconds);
  return true;
}

bool RequestBodyDecoder::decode_put(std::string_view body, PutItem& item) {
  simdjson::dom::object object;
  return parse_object(body, object) && read_put_item(object, item);
}

bool RequestBodyDecoder::decode_key(std::string_view body, std::string_view& key) {
  simdjson::dom::object object;
  if (!parse_object(body, object) || !read_string(object, "key", key)) return false;
  if (const char* error = key_error(key)) return fail(error);
  return true;
}

bool RequestBodyDecoder::decode_expire(std::string_view body, std::string_view& key, uint32_t& ttl_seconds) {
  simdjson::dom::object object;
  if (!parse_object(body, object) || !read_string(object, "key", key)) return false;
  if (const char* error = key_error(key)) return fail(error);
  return read_ttl(object, ttl_seconds, true);
}

bool RequestBodyDecoder::read_batch(std::string_view body, const char* field, simdjson::dom::array& array) {
  simdjson::dom::object object;
  if (!parse_object(body, object)) return false;
  simdjson::dom::element element;
  if (object[field].get(element) != simdjson::SUCCESS || element.get_array().get(array) != simdjson::SUCCESS) {
    return fail(fmt::format("{} must be an array", field));
  }
  if (array.size() > kMaxBatchItems) return fail(fmt::format("too many {} (max {})", field, kMaxBatchItems));
  return true;
}

bool RequestBodyDecoder::decode_mput(std::string_view body) {
  items_.clear();
  simdjson::dom::array array;
  if (!read_batch(body, "items", array)) return false;
  for (simdjson::dom::element element : array) {
    simdjson::dom::object object;
    PutItem item;
    if (element.get_object().get(object) != simdjson::SUCCESS) {
      return fail(fmt::format("item {} must be a JSON object", items_.size()));
    }
    if (!read_put_item(object, item)) return fail(fmt::format("items[{}]: {}", items_.size(), error_));
    items_.push_back(item);
  }
  return true;
}

bool RequestBodyDecoder::decode_mget(std::string_view body) {
  keys_.clear();
  simdjson::dom::array array;
  if (!read_batch(body, "keys", array)) return false;
  for (simdjson::dom::element element : array) {
    std::string_view key;
    if (element.get_string().get(key) != simdjson::SUCCESS) {
      return fail(fmt::format("keys[{}]: key must be a string", keys_.size()));
    }
    if (const char* error = key_error(key)) return fail(fmt::format("keys[{}]: {}", keys_.size(), error));
    keys_.push_back(key);
  }
  return true;
}

}  // namespace kv

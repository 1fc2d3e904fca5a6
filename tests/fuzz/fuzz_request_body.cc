// Fuzz target for JSON request bodies: RequestBodyDecoder's five entry points
// on arbitrary bytes, with the kPadding readable bytes simdjson requires after
// the body (and nothing more, so ASan sees any read beyond them).
//
// One decoder is reused across inputs, as each worker thread reuses its own.
// On success every decoded command must satisfy the API contract: keys 1..256
// bytes, values <= 256 bytes, both ASCII, ttl <= 2147483647, <= 1000 items.
#include "request_body.h"
#include "validation.h"

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string_view>

namespace {

void check(bool ok) {
  if (!ok) __builtin_trap();
}

bool ascii(std::string_view s) {
  for (unsigned char c : s) {
    if (c >= 0x80) return false;
  }
  return true;
}

void check_key(std::string_view key) {
  check(!key.empty() && key.size() <= kv::kMaxKeyBytes && ascii(key));
  check(kv::key_error(key) == nullptr);
}

void check_item(const kv::PutItem& item) {
  check_key(item.key);
  check(item.value.size() <= kv::kMaxValueBytes && ascii(item.value));
  check(kv::value_error(item.value) == nullptr);
  check(item.ttl_seconds <= kv::kMaxTtlSeconds);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // The server never hands the decoder more than a maximal body.
  if (size > 65536) return 0;
  static kv::RequestBodyDecoder decoder;
  std::unique_ptr<char[]> buffer(new char[size + kv::RequestBodyDecoder::kPadding]);
  if (size > 0) std::memcpy(buffer.get(), data, size);
  std::memset(buffer.get() + size, 0, kv::RequestBodyDecoder::kPadding);
  std::string_view body(buffer.get(), size);

  kv::PutItem item;
  if (decoder.decode_put(body, item)) {
    check_item(item);
  } else {
    check(!decoder.error().empty());
  }

  std::string_view key;
  if (decoder.decode_key(body, key)) {
    check_key(key);
  } else {
    check(!decoder.error().empty());
  }

  if (decoder.decode_mput(body)) {
    check(decoder.items().size() <= kv::kMaxBatchItems);
    for (const kv::PutItem& i : decoder.items()) check_item(i);
  } else {
    check(!decoder.error().empty());
  }

  uint32_t ttl = 0;
  if (decoder.decode_expire(body, key, ttl)) {
    check_key(key);
    check(ttl <= kv::kMaxTtlSeconds);
  } else {
    check(!decoder.error().empty());
  }

  if (decoder.decode_mget(body)) {
    check(decoder.keys().size() <= kv::kMaxBatchItems);
    for (std::string_view k : decoder.keys()) check_key(k);
  } else {
    check(!decoder.error().empty());
  }
  return 0;
}

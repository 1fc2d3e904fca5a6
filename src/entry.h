// One cached item, stored in a slab chunk: a 15-byte header followed by the
// key and value bytes (as memcached's items), so an entry costs one chunk.
//
//   0        4        8          12         14        15
//   | newer  | older  | expires  | val size | key-1   | key bytes | value bytes |
//
// LRU links are slab handles (32 bits), guarded by the owning shard's lock.
#pragma once

#include "slab.h"

#include <cstdint>
#include <cstring>
#include <string_view>

namespace kv {

struct Entry {
  Handle newer;
  Handle older;
  uint32_t expires_at;     // expiry tick (clock.h); 0 = never
  uint16_t value_size;     // 0..256
  uint8_t key_size_minus_one;  // keys are 1..256 bytes

  static constexpr size_t kHeaderSize = 15;
  static size_t size_for(size_t key_size, size_t value_size) { return kHeaderSize + key_size + value_size; }

  size_t key_size() const { return size_t{key_size_minus_one} + 1; }
  char* bytes() { return reinterpret_cast<char*>(this) + kHeaderSize; }
  const char* bytes() const { return reinterpret_cast<const char*>(this) + kHeaderSize; }
  std::string_view key() const { return {bytes(), key_size()}; }
  std::string_view value() const { return {bytes() + key_size(), value_size}; }
  size_t size() const { return size_for(key_size(), value_size); }

  // The one copy of key and value into the store.
  void fill(std::string_view key, std::string_view value, uint32_t expires) {
    expires_at = expires;
    key_size_minus_one = static_cast<uint8_t>(key.size() - 1);
    store_value(value);
    std::memcpy(bytes(), key.data(), key.size());
  }
  void store_value(std::string_view value) {
    value_size = static_cast<uint16_t>(value.size());
    std::memcpy(bytes() + key_size(), value.data(), value.size());
  }
};

static_assert(sizeof(Entry) <= 16 && offsetof(Entry, key_size_minus_one) == 14);

}  // namespace kv

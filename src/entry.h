// One cached item: a header followed by the key and value bytes, all in a
// single allocation (as memcached's items), so an entry costs one malloc.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string_view>

namespace kv {

struct Entry {
  Entry* newer;            // LRU links; guarded by the owning shard's lock
  Entry* older;
  uint32_t expires_at;     // expiry tick (clock.h); 0 = never
  uint16_t key_size;
  uint16_t value_size;

  char* bytes() { return reinterpret_cast<char*>(this + 1); }
  const char* bytes() const { return reinterpret_cast<const char*>(this + 1); }
  std::string_view key() const { return {bytes(), key_size}; }
  std::string_view value() const { return {bytes() + key_size, value_size}; }

  // The one copy of key and value into the store; returns nullptr when out of memory.
  static Entry* create(std::string_view key, std::string_view value, uint32_t expires_at) {
    void* memory = std::malloc(sizeof(Entry) + key.size() + value.size());
    if (memory == nullptr) return nullptr;
    Entry* entry = static_cast<Entry*>(memory);
    entry->newer = entry->older = nullptr;
    entry->expires_at = expires_at;
    entry->key_size = static_cast<uint16_t>(key.size());
    entry->value_size = static_cast<uint16_t>(value.size());
    std::memcpy(entry->bytes(), key.data(), key.size());
    std::memcpy(entry->bytes() + key.size(), value.data(), value.size());
    return entry;
  }

  // Frees a chain of entries linked through `older`.
  static void destroy_chain(Entry* entry) {
    while (entry != nullptr) {
      Entry* next = entry->older;
      std::free(entry);
      entry = next;
    }
  }
};

}  // namespace kv

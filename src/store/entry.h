// One cached item, stored in a slab chunk: an 11-byte header, a 4-byte
// expiry only for entries with a TTL, then the key and value bytes (as
// memcached's items), so an entry costs one chunk.
//
//   0        4        8          10       11                   11 or 15
//   | newer  | older  | val size | key-1  | [expiry tick: TTL]  | key bytes | value bytes |
//                       bit 15 of val size: the expiry is there
//                       bit 14: the snapshot walk's mark (shard.h)
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
  uint16_t value_size_and_flag;  // value size 0..256, kHasExpiry, kCopyMark
  uint8_t key_size_minus_one;    // keys are 1..256 bytes

  static constexpr size_t kHeaderSize = 11;
  static constexpr size_t kExpirySize = 4;
  static constexpr uint16_t kHasExpiry = 0x8000;
  // A chunk reserved for a batch item, not yet an entry, has this in
  // `newer` (never a valid handle) and the item's index in `older`.
  static constexpr Handle kBatchChunk = kNoHandle - 1;
  static constexpr uint16_t kCopyMark = 0x4000;
  static constexpr uint16_t kValueSizeMask = 0x01FF;
  static size_t size_for(size_t key_size, size_t value_size, bool has_expiry) {
    return kHeaderSize + (has_expiry ? kExpirySize : 0) + key_size + value_size;
  }
  // The entry (or batch chunk) in a slab chunk: the one place a chunk's
  // bytes are read as an Entry.
  static Entry& at(const Slab& slab, Handle handle) { return *reinterpret_cast<Entry*>(slab.at(handle)); }
  bool is_batch_chunk() const { return newer == kBatchChunk; }

  bool has_expiry() const { return (value_size_and_flag & kHasExpiry) != 0; }
  // The expiry tick (clock.h); 0 = never.
  uint32_t expires_at() const {
    uint32_t tick = 0;
    if (has_expiry()) std::memcpy(&tick, header_end(), sizeof tick);
    return tick;
  }
  size_t key_size() const { return size_t{key_size_minus_one} + 1; }
  size_t value_size() const { return value_size_and_flag & kValueSizeMask; }
  // The snapshot walk's mark: kept by fill(), set by the shard.
  bool copy_mark() const { return (value_size_and_flag & kCopyMark) != 0; }
  void set_copy_mark(bool mark) {
    value_size_and_flag = static_cast<uint16_t>((value_size_and_flag & ~kCopyMark) | (mark ? kCopyMark : 0));
  }
  std::string_view key() const { return {bytes(), key_size()}; }
  std::string_view value() const { return {bytes() + key_size(), value_size()}; }
  size_t size() const { return size_for(key_size(), value_size(), has_expiry()); }

  // A new expiry tick (not 0) for an entry that has one: its layout stays.
  void set_expiry(uint32_t expires) { std::memcpy(header_end(), &expires, sizeof expires); }

  // The one copy of key and value into the store (the LRU links and the copy mark are kept).
  void fill(std::string_view key, std::string_view value, uint32_t expires) {
    value_size_and_flag =
        static_cast<uint16_t>(value.size() | (expires != 0 ? kHasExpiry : 0) | (value_size_and_flag & kCopyMark));
    key_size_minus_one = static_cast<uint8_t>(key.size() - 1);
    if (expires != 0) std::memcpy(header_end(), &expires, sizeof expires);
    std::memcpy(bytes(), key.data(), key.size());
    // An empty value may have no bytes at all (a reservation writes only the key).
    if (!value.empty()) std::memcpy(bytes() + key.size(), value.data(), value.size());
  }

 private:
  char* header_end() { return reinterpret_cast<char*>(this) + kHeaderSize; }
  const char* header_end() const { return reinterpret_cast<const char*>(this) + kHeaderSize; }
  const char* bytes() const { return header_end() + (has_expiry() ? kExpirySize : 0); }
  char* bytes() { return header_end() + (has_expiry() ? kExpirySize : 0); }
};

static_assert(sizeof(Entry) <= 12 && offsetof(Entry, key_size_minus_one) == 10);

}  // namespace kv

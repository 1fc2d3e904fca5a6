// One independently locked part of the store: a hash index over entries plus
// an exact LRU list, with its own byte budget.
#pragma once

#include "clock.h"
#include "entry.h"

#include <absl/container/flat_hash_set.h>
#include <absl/functional/function_ref.h>
#include <absl/hash/hash.h>

#include <cstdint>
#include <mutex>
#include <string_view>

namespace kv {

// A key with its hash, computed once per request outside any lock.
struct KeyRef {
  std::string_view key;
  size_t hash;
};

inline KeyRef make_key(std::string_view key) { return {key, absl::Hash<std::string_view>{}(key)}; }

enum class PutStatus { ok, too_large };

struct ShardStats {
  uint64_t entries = 0;
  uint64_t bytes_used = 0;
  uint64_t hits = 0;
  uint64_t misses = 0;
  uint64_t evictions = 0;
  uint64_t expirations = 0;
};

class Shard {
 public:
  Shard(uint64_t byte_limit, const Clock& clock);
  ~Shard();
  Shard(const Shard&) = delete;
  Shard& operator=(const Shard&) = delete;

  // What an entry of these sizes is charged: its allocation as malloc rounds it.
  static uint64_t entry_cost(size_t key_size, size_t value_size);

  // Takes ownership of `entry` (made by Entry::create for `key`). Evicts least
  // recently used entries until the shard is within its limit again.
  PutStatus put(const KeyRef& key, Entry* entry);
  // Calls on_value with the value under the lock, so the caller copies it
  // straight into its response.
  bool get(const KeyRef& key, absl::FunctionRef<void(std::string_view)> on_value);
  bool erase(const KeyRef& key);
  // Removes expired entries among at most `budget` visited ones.
  void sweep_expired(size_t budget);
  ShardStats stats() const;

 private:
  struct EntryHash {
    using is_transparent = void;
    size_t operator()(const KeyRef& key) const { return key.hash; }
    size_t operator()(const Entry* entry) const { return absl::Hash<std::string_view>{}(entry->key()); }
  };
  struct EntryEq {
    using is_transparent = void;
    bool operator()(const Entry* a, const Entry* b) const { return a == b; }
    bool operator()(const KeyRef& a, const Entry* b) const { return a.key == b->key(); }
    bool operator()(const Entry* a, const KeyRef& b) const { return b.key == a->key(); }
  };
  using Index = absl::flat_hash_set<Entry*, EntryHash, EntryEq>;

  // The *_locked functions expect mutex_ to be held.
  void link_newest_locked(Entry* entry);
  void unlink_locked(Entry* entry);
  // Removes entry from index and list; chains it onto `garbage` to free after unlocking.
  void remove_locked(Entry* entry, Entry*& garbage);
  uint64_t bytes_used_locked() const;
  bool expired_locked(const Entry* entry) const;

  const uint64_t byte_limit_;
  const Clock& clock_;
  mutable std::mutex mutex_;
  // Rest are protected by mutex_.
  Index index_;
  Entry* newest_ = nullptr;
  Entry* oldest_ = nullptr;
  Entry* sweep_cursor_ = nullptr;  // next entry the TTL sweep visits, walking toward newer
  uint64_t entry_bytes_ = 0;
  uint64_t hits_ = 0, misses_ = 0, evictions_ = 0, expirations_ = 0;
};

}  // namespace kv

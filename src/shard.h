// One independently locked part of the store: a hash index of slab handles,
// an exact LRU list through the entries, and its own byte budget.
#pragma once

#include "clock.h"
#include "entry.h"
#include "slab.h"

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
  Shard(const Shard&) = delete;
  Shard& operator=(const Shard&) = delete;

  // Inserts or replaces. Evicts least recently used entries (after first
  // trying to compact) until the entry and the index fit the byte limit.
  PutStatus put(const KeyRef& key, std::string_view value, uint32_t expires_at);
  // Calls on_value with the value under the lock, so the caller copies it
  // straight into its response.
  bool get(const KeyRef& key, absl::FunctionRef<void(std::string_view)> on_value);
  bool erase(const KeyRef& key);
  // Removes expired entries among at most `budget` visited ones.
  void sweep_expired(size_t budget);
  ShardStats stats() const;

  // Snapshot walk over the LRU list, oldest to newest, a bounded batch per
  // call. The position is the shard's own (kept valid when entries are
  // touched, moved or removed between calls, as the sweep's is), so there
  // is one walk at a time.
  // Returns the entries the walk starts with.
  size_t copy_start();
  // Calls out(key, value, expires_at) under the lock for up to max_entries
  // live entries. Returns false once the walk is over: past the newest entry, or past its
  // visit budget of twice the entries it started with (an entry touched
  // after being copied moves ahead and is copied again; a busy shard must
  // not keep the walk going for ever).
  bool copy_batch(size_t max_entries,
                  absl::FunctionRef<void(std::string_view key, std::string_view value, uint32_t expires_at)> out);

 private:
  // Index functors resolve handles through the slab; lookups use a KeyRef.
  struct IndexHash {
    using is_transparent = void;
    const Slab* slab;
    size_t operator()(const KeyRef& key) const { return key.hash; }
    size_t operator()(Handle handle) const;
  };
  struct IndexEq {
    using is_transparent = void;
    const Slab* slab;
    bool operator()(Handle a, Handle b) const { return a == b; }
    bool operator()(const KeyRef& a, Handle b) const;
    bool operator()(Handle a, const KeyRef& b) const { return (*this)(b, a); }
  };
  using Index = absl::flat_hash_set<Handle, IndexHash, IndexEq>;

  // The *_locked functions expect mutex_ to be held.
  Entry& entry_locked(Handle handle) const { return *reinterpret_cast<Entry*>(slab_.at(handle)); }
  void link_newest_locked(Handle handle);
  void unlink_locked(Handle handle);
  void remove_locked(Handle handle);
  // The same, given the entry's key with its hash (saves hashing it again).
  void remove_locked(Handle handle, const KeyRef& key);
  void evict_oldest_locked();
  // A chunk of the size class: from a mapped page, a new page within the
  // limit, or reclaimed memory. kNoHandle when the shard cannot hold it.
  Handle allocate_locked(size_t size_class);
  // Makes room without mapping: compacts a sparse page if one can be
  // emptied, else evicts LRU entries until a chunk of wanted_class (or, for
  // Slab::kClassCount, a whole page) is free. False when nothing is left.
  bool reclaim_locked(size_t wanted_class);
  // Re-points the index and LRU neighbours after the slab moved an entry.
  void moved_locked(Handle from, Handle to);
  uint64_t index_bytes_locked() const;
  uint64_t bytes_used_locked() const { return slab_.mapped_bytes() + index_bytes_locked(); }
  bool expired_locked(const Entry& entry) const { return is_expired(entry.expires_at, clock_.now_ms()); }

  const uint64_t byte_limit_;
  const Clock& clock_;
  mutable std::mutex mutex_;
  // Rest are protected by mutex_.
  Slab slab_;
  Index index_;
  Handle newest_ = kNoHandle;
  Handle oldest_ = kNoHandle;
  Handle sweep_cursor_ = kNoHandle;  // next entry the TTL sweep visits, walking toward newer
  Handle pinned_ = kNoHandle;        // never evicted: the entry a put is completing
  Handle copy_cursor_ = kNoHandle;   // next entry the snapshot walk copies, walking toward newer
  uint64_t copy_budget_ = 0;         // entries the snapshot walk may still visit
  uint64_t ttl_entries_ = 0;  // entries with an expiry: the sweep has nothing to do without them
  uint64_t hits_ = 0, misses_ = 0, evictions_ = 0, expirations_ = 0;
};

}  // namespace kv

// The cache: keys routed by hash to independently locked shards. Knows
// nothing of HTTP.
#pragma once

#include "clock.h"
#include "shard.h"

#include <atomic>
#include <memory>
#include <optional>
#include <vector>

namespace kv {

struct StoreStats : ShardStats {
  uint64_t byte_budget = 0;  // what the store may fill: the process limit less its own needs
  uint64_t flushes = 0;      // flush() calls
};

class Store {
 public:
  Store(size_t shard_count, uint64_t byte_budget, const Clock& clock);

  // ttl_seconds 0 means the entry never expires.
  PutStatus put(const KeyRef& key, std::string_view value, uint32_t ttl_seconds);
  // All or nothing: every item is stored (a later item wins over an earlier
  // one with the same key), or none is and no stored value changes. Each
  // shard's part is stored under its lock, shard by shard, so a concurrent
  // reader may see some keys of a successful batch before others. Reorders
  // and overwrites the items.
  PutStatus put_batch(std::span<BatchPut> items);
  bool get(const KeyRef& key, absl::FunctionRef<void(std::string_view)> on_value);
  bool erase(const KeyRef& key);
  // The whole seconds the key has left, rounded up (at least 1 while it
  // lives), -1 when it has no expiry; nullopt for a miss (Shard::expiry).
  std::optional<int64_t> ttl(const KeyRef& key);
  // Sets the key's TTL (ttl_seconds 0: none), the value kept (Shard::expire).
  ExpireStatus expire(const KeyRef& key, uint32_t ttl_seconds);
  // Empties every shard, one after the other (Shard::flush: each lock held
  // for a bounded step). Entries put meanwhile into a shard already flushed
  // stay. Returns the entries removed.
  size_t flush();
  // Bounded work: removes the expired entries of at most pages_per_shard
  // slab pages of each shard (see Shard::sweep_expired). Returns whether
  // expired entries remain for another call.
  bool sweep_expired(size_t pages_per_shard);
  // The sweep's cadence (main.cc runs it between signal waits): every
  // kSweepIntervalMs, or every kSweepBacklogIntervalMs while it says
  // expired entries remain, kSweepPagesPerShard pages a shard a call.
  static constexpr size_t kSweepPagesPerShard = 4;
  static constexpr uint64_t kSweepIntervalMs = 100;
  static constexpr uint64_t kSweepBacklogIntervalMs = 1;
  StoreStats stats() const;
  uint64_t byte_budget() const { return byte_budget_; }

  // Snapshots: restore() inserts with an absolute expiry tick (clock.h) and
  // evicts like put(); the copy walk is per shard (see Shard::copy_batch).
  PutStatus restore(const KeyRef& key, std::string_view value, uint32_t expires_at) {
    return shard_for(key).put(key, value, expires_at);
  }
  size_t shard_count() const { return shards_.size(); }
  size_t shard_index(const KeyRef& key) const {
    // The high half of the hash picks the shard; the index uses the low bits.
    return ((key.hash >> 32) * shards_.size()) >> 32;
  }
  Shard& shard(size_t index) { return *shards_[index]; }
  const Clock& clock() const { return clock_; }

 private:
  Shard& shard_for(const KeyRef& key) { return *shards_[shard_index(key)]; }
  // Locks the first shard of `items` (sorted by shard), reserves its part,
  // recurses into the rest, then commits or cancels its part.
  PutStatus put_sorted_batch(std::span<BatchPut> items);

  const uint64_t byte_budget_;
  const Clock& clock_;
  std::vector<std::unique_ptr<Shard>> shards_;
  std::atomic<uint64_t> flushes_{0};
};

}  // namespace kv

#include "store.h"

#include <algorithm>

namespace kv {

Store::Store(size_t shard_count, uint64_t byte_budget, const Clock& clock)
    : byte_budget_(byte_budget), clock_(clock) {
  // Every shard can hold a couple of pages however small the limit, so a
  // tiny limit split many ways still stores something (overshooting it by at
  // most those pages).
  uint64_t per_shard = std::max<uint64_t>(byte_budget / shard_count, 2 * Slab::kPageSize);
  shards_.reserve(shard_count);
  for (size_t i = 0; i < shard_count; ++i) shards_.push_back(std::make_unique<Shard>(per_shard, clock));
}

PutStatus Store::put(const KeyRef& key, std::string_view value, uint32_t ttl_seconds) {
  uint32_t expires_at = ttl_seconds == 0 ? 0 : expiry_tick(clock_.now_ms(), ttl_seconds);
  return shard_for(key).put(key, value, expires_at);
}

bool Store::get(const KeyRef& key, absl::FunctionRef<void(std::string_view)> on_value) {
  return shard_for(key).get(key, on_value);
}

bool Store::erase(const KeyRef& key) { return shard_for(key).erase(key); }

void Store::sweep_expired(size_t budget_per_shard) {
  for (auto& shard : shards_) shard->sweep_expired(budget_per_shard);
}

StoreStats Store::stats() const {
  StoreStats total;
  total.byte_budget = byte_budget_;
  for (const auto& shard : shards_) {
    ShardStats s = shard->stats();
    total.entries += s.entries;
    total.bytes_used += s.bytes_used;
    total.hits += s.hits;
    total.misses += s.misses;
    total.evictions += s.evictions;
    total.expirations += s.expirations;
  }
  return total;
}

}  // namespace kv

#include "store.h"

#include <algorithm>
#include <tuple>

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

PutStatus Store::put_batch(std::span<BatchPut> items) {
  uint64_t now_ms = clock_.now_ms();
  for (uint32_t i = 0; i < items.size(); ++i) {
    BatchPut& item = items[i];
    item.order = i;
    item.shard = static_cast<uint32_t>(shard_index(item.key));
    item.expires_at = expiry_tick(now_ms, item.ttl_seconds);
  }
  // Sorted by shard (the lock order, which rules out deadlock), with equal
  // keys adjacent and in request order.
  auto rank = [](const BatchPut& item) { return std::tie(item.shard, item.key.hash, item.key.key, item.order); };
  std::sort(items.begin(), items.end(), [&](const BatchPut& a, const BatchPut& b) { return rank(a) < rank(b); });
  // Only the last item of each key matters.
  size_t kept = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    bool superseded = i + 1 < items.size() && items[i + 1].key.hash == items[i].key.hash &&
                      items[i + 1].key.key == items[i].key.key;
    if (!superseded) items[kept++] = items[i];
  }
  return put_sorted_batch(items.first(kept));
}

PutStatus Store::put_sorted_batch(std::span<BatchPut> items) {
  if (items.empty()) return PutStatus::ok;
  size_t end = 1;
  while (end < items.size() && items[end].shard == items[0].shard) ++end;
  Shard& shard = *shards_[items[0].shard];
  std::span<BatchPut> part = items.first(end);
  std::lock_guard lock(shard);
  if (!shard.reserve_locked(part)) return PutStatus::too_large;
  PutStatus rest = put_sorted_batch(items.subspan(end));
  if (rest == PutStatus::ok) {
    shard.commit_locked(part);
  } else {
    shard.cancel_locked(part);
  }
  return rest;
}

bool Store::get(const KeyRef& key, absl::FunctionRef<void(std::string_view)> on_value) {
  return shard_for(key).get(key, on_value);
}

bool Store::erase(const KeyRef& key) { return shard_for(key).erase(key); }

std::optional<int64_t> Store::ttl(const KeyRef& key) {
  uint32_t expires_at = 0;
  if (!shard_for(key).expiry(key, expires_at)) return std::nullopt;
  if (expires_at == 0) return -1;
  // A put rounds its expiry up to a tick (clock.h), by less than one: count
  // from the tick's start, so a fresh ttl N reads N, not N + 1.
  uint64_t end_ms = uint64_t{expires_at} * kExpiryTickMs - (kExpiryTickMs - 1);
  uint64_t now_ms = clock_.now_ms();
  if (end_ms <= now_ms) return 1;
  return std::max<int64_t>(1, static_cast<int64_t>((end_ms - now_ms + 999) / 1000));
}

ExpireStatus Store::expire(const KeyRef& key, uint32_t ttl_seconds) {
  return shard_for(key).expire(key, expiry_tick(clock_.now_ms(), ttl_seconds));
}

size_t Store::flush() {
  size_t removed = 0;
  for (auto& shard : shards_) removed += shard->flush();
  flushes_.fetch_add(1, std::memory_order_relaxed);
  return removed;
}

bool Store::sweep_expired(size_t pages_per_shard) {
  bool more = false;
  for (auto& shard : shards_) more |= shard->sweep_expired(pages_per_shard);
  return more;
}

StoreStats Store::stats() const {
  StoreStats total;
  total.byte_budget = byte_budget_;
  total.flushes = flushes_.load(std::memory_order_relaxed);
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

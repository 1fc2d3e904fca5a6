#include "store_metrics.h"

#include <algorithm>
#include <iterator>

namespace kv {
namespace {

constexpr MetricDecl kStoreMetricDecls[] = {
    {"kvcache_hits_total", MetricType::counter, "Lookups that found a live key."},
    {"kvcache_misses_total", MetricType::counter, "Lookups that found no live key."},
    {"kvcache_evictions_total", MetricType::counter, "Entries evicted to stay within the memory limit."},
    {"kvcache_expirations_total", MetricType::counter, "Entries removed because their TTL passed."},
    {"kvcache_flushes_total", MetricType::counter, "POST /flush calls: the cache emptied."},
    {"kvcache_entries", MetricType::gauge, "Entries currently stored."},
    {"kvcache_memory_used_bytes", MetricType::gauge, "Bytes charged to stored entries and their index."},
    {"kvcache_store_budget_bytes", MetricType::gauge,
     "The part of the memory limit the store may fill (the limit less the process's own needs)."},
};

}  // namespace

const MetricTable kStoreMetrics(kStoreMetricDecls);

void StoreMetrics::collect(std::span<uint64_t> values) const {
  StoreStats stats = store_.stats();
  // In kStoreMetricDecls' order.
  const uint64_t row[] = {stats.hits,    stats.misses,     stats.evictions,  stats.expirations,
                          stats.flushes, stats.entries,    stats.bytes_used, stats.byte_budget};
  static_assert(std::size(row) == std::size(kStoreMetricDecls));
  std::copy(std::begin(row), std::end(row), values.begin());
}

}  // namespace kv

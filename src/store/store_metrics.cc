#include "store_metrics.h"

namespace kv {

void StoreMetrics::render(std::string& out) const {
  using namespace exposition;
  StoreStats stats = store_.stats();
  single(out, "kvcache_hits_total", "counter", "Lookups that found a live key.", stats.hits);
  single(out, "kvcache_misses_total", "counter", "Lookups that found no live key.", stats.misses);
  single(out, "kvcache_evictions_total", "counter", "Entries evicted to stay within the memory limit.", stats.evictions);
  single(out, "kvcache_expirations_total", "counter", "Entries removed because their TTL passed.", stats.expirations);
  single(out, "kvcache_entries", "gauge", "Entries currently stored.", stats.entries);
  single(out, "kvcache_memory_used_bytes", "gauge", "Bytes charged to stored entries and their index.", stats.bytes_used);
  single(out, "kvcache_store_budget_bytes", "gauge",
         "The part of the memory limit the store may fill (the limit less the process's own needs).",
         stats.byte_budget);
}

}  // namespace kv

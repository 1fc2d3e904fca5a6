// The store's part of /metrics: hits, misses, evictions, expirations,
// entries and the bytes they are charged, read from Store::stats() at
// scrape time.
#pragma once

#include "metrics.h"
#include "store.h"

namespace kv {

extern const MetricTable kStoreMetrics;

class StoreMetrics final : public MetricSource {
 public:
  explicit StoreMetrics(const Store& store) : MetricSource(kStoreMetrics), store_(store) {}
  void collect(std::span<uint64_t> values) const override;

 private:
  const Store& store_;
};

}  // namespace kv

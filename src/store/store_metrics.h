// The store's part of /metrics: hits, misses, evictions, expirations,
// entries and the bytes they are charged (Store::stats()).
#pragma once

#include "metrics.h"
#include "store.h"

namespace kv {

class StoreMetrics final : public MetricsSource {
 public:
  explicit StoreMetrics(const Store& store) : store_(store) {}
  void render(std::string& out) const override;

 private:
  const Store& store_;
};

}  // namespace kv

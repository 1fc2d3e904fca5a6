// Counters kept per worker thread (one writer each, no contention on the hot
// path) and summed into the Prometheus text format on scrape.
#pragma once

#include "buffer_budget.h"
#include "store.h"

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace kv {

struct SnapshotMetrics;
struct TlsMetrics;

enum class Endpoint : uint8_t { put, get, del, mput, mget, health, metrics, snapshot, other };
constexpr size_t kEndpointCount = 9;
std::string_view endpoint_name(Endpoint endpoint);

// Upper bounds (seconds) of the request latency histogram buckets.
constexpr std::array<double, 12> kLatencyBuckets = {0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                                                    0.005,   0.01,   0.025,   0.05,   0.1,   0.25};

constexpr std::array<int, 17> kStatusCodes = {200, 400, 401, 404, 405, 408, 409, 413, 414,
                                              415, 431, 500, 501, 503, 505, 507, 0};

// Written by one thread, read by the scraper: relaxed load+store, no lock prefix.
class Counter {
 public:
  void add(uint64_t n = 1) { value_.store(value_.load(std::memory_order_relaxed) + n, std::memory_order_relaxed); }
  uint64_t get() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> value_{0};
};

struct WorkerMetrics {
  Counter requests[kEndpointCount][kStatusCodes.size()];
  Counter connections_accepted;
  Counter connections_closed;
  Counter connections_rejected;
  Counter latency_buckets[kLatencyBuckets.size() + 1];  // the last one is +Inf
  Counter latency_sum_ns;
  Counter auth_failures[2];  // by reason: missing, wrong
  Counter gzip_responses;

  void count_request(Endpoint endpoint, int code);
  void observe_latency(uint64_t nanoseconds);
};

class Metrics {
 public:
  Metrics(const Store& store, const BufferBudget& buffers, unsigned workers, uint64_t memory_limit,
          unsigned max_connections);
  WorkerMetrics& worker(unsigned index) { return *workers_[index]; }
  // With snapshots on, their metrics join the exposition.
  void set_snapshot_metrics(const SnapshotMetrics* snapshot) { snapshot_ = snapshot; }
  // With --tls-cert, the TLS families join it.
  void set_tls_metrics(const TlsMetrics* tls) { tls_ = tls; }
  // Appends the whole exposition (text format 0.0.4) to out.
  void render(std::string& out) const;

 private:
  const Store& store_;
  const BufferBudget& buffers_;
  const uint64_t memory_limit_;  // for the whole process; the store gets what is left of it
  const unsigned max_connections_;  // exported so that an alert can compare the open connections with it
  std::vector<std::unique_ptr<WorkerMetrics>> workers_;
  const SnapshotMetrics* snapshot_ = nullptr;
  const TlsMetrics* tls_ = nullptr;
};

}  // namespace kv

// /metrics in the Prometheus text format (0.0.4). Each subsystem owns its
// counters and writes its own families as a MetricsSource (the API layer its
// requests by endpoint and status, the connection layer its connections,
// latency and buffers, the store its entries, snapshots theirs); Metrics
// only strings the sources together and adds the process's own gauges.
// Counters kept per worker thread have one writer each: no contention on
// the hot path; a scrape sums them.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kv {

// Written by one thread, read by the scraper: relaxed load+store, no lock prefix.
class Counter {
 public:
  void add(uint64_t n = 1) { value_.store(value_.load(std::memory_order_relaxed) + n, std::memory_order_relaxed); }
  uint64_t get() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> value_{0};
};

// A subsystem's part of the exposition.
class MetricsSource {
 public:
  virtual ~MetricsSource() = default;
  // Appends this source's families to out.
  virtual void render(std::string& out) const = 0;
};

// Writing the text format.
namespace exposition {
void family(std::string& out, std::string_view name, std::string_view type, std::string_view help);
void sample(std::string& out, std::string_view name, uint64_t value);
void sample(std::string& out, std::string_view name, double value);
// A family with one unlabelled sample.
void single(std::string& out, std::string_view name, std::string_view type, std::string_view help, uint64_t value);
}  // namespace exposition

class Metrics {
 public:
  explicit Metrics(uint64_t memory_limit) : memory_limit_(memory_limit) {}
  // Sources render in the order they were added; each must outlive this.
  void add(const MetricsSource& source) { sources_.push_back(&source); }
  // Appends the whole exposition to out.
  void render(std::string& out) const;

 private:
  const uint64_t memory_limit_;  // for the whole process
  std::vector<const MetricsSource*> sources_;
};

}  // namespace kv

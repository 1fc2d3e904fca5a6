// The process's part of /metrics: the memory limit, the build, and the
// process_* families every Prometheus client library exports (resident and
// virtual memory, start time, open and allowed file descriptors, CPU time),
// read from /proc/self at scrape time as those libraries do.
#pragma once

#include "metrics.h"

namespace kv {

extern const MetricDecl kProcessMetricDecls[];
extern const MetricTable kProcessMetrics;

class ProcessMetrics final : public MetricSource {
 public:
  explicit ProcessMetrics(uint64_t memory_limit);
  void collect(std::span<uint64_t> values) const override;

 private:
  const uint64_t memory_limit_;  // for the whole process
};

// /proc/self/stat and /proc/stat as the process_* families want them.
struct ProcessStats {
  uint64_t resident_bytes = 0;
  uint64_t virtual_bytes = 0;
  uint64_t start_time_ms = 0;  // Unix time
  uint64_t cpu_us = 0;         // user + system
  uint64_t open_fds = 0;
  uint64_t max_fds = 0;
};
ProcessStats read_process_stats();

// The btime line of a file in /proc/stat's format (0 if it has none).
uint64_t read_boot_time_seconds(const char* proc_stat);

}  // namespace kv

#include "metrics.h"

#include <fmt/format.h>

#include <iterator>

#include "snapshot.h"
#include "tls.h"
#include "version.h"

namespace kv {
namespace {

size_t status_index(int code) {
  for (size_t i = 0; i + 1 < kStatusCodes.size(); ++i) {
    if (kStatusCodes[i] == code) return i;
  }
  return kStatusCodes.size() - 1;  // any other code
}

void family(std::string& out, std::string_view name, std::string_view type, std::string_view help) {
  fmt::format_to(std::back_inserter(out), "# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

void sample(std::string& out, std::string_view name, uint64_t value) {
  fmt::format_to(std::back_inserter(out), "{} {}\n", name, value);
}

// A family with one unlabelled sample.
void single(std::string& out, std::string_view name, std::string_view type, std::string_view help, uint64_t value) {
  family(out, name, type, help);
  sample(out, name, value);
}

}  // namespace

std::string_view endpoint_name(Endpoint endpoint) {
  static constexpr std::string_view kNames[kEndpointCount] = {"put",    "get",     "delete",   "mput", "mget",
                                                              "health", "metrics", "snapshot", "other"};
  return kNames[static_cast<size_t>(endpoint)];
}

void WorkerMetrics::count_request(Endpoint endpoint, int code) {
  requests[static_cast<size_t>(endpoint)][status_index(code)].add();
}

void WorkerMetrics::observe_latency(uint64_t nanoseconds) {
  size_t bucket = 0;
  while (bucket < kLatencyBuckets.size() && nanoseconds > kLatencyBuckets[bucket] * 1e9) ++bucket;
  latency_buckets[bucket].add();
  latency_sum_ns.add(nanoseconds);
}

Metrics::Metrics(const Store& store, const BufferBudget& buffers, unsigned workers, uint64_t memory_limit,
                 unsigned max_connections)
    : store_(store), buffers_(buffers), memory_limit_(memory_limit), max_connections_(max_connections) {
  for (unsigned i = 0; i < workers; ++i) workers_.push_back(std::make_unique<WorkerMetrics>());
}

void Metrics::render(std::string& out) const {
  auto sum = [&](auto member) {
    uint64_t total = 0;
    for (const auto& worker : workers_) total += ((*worker).*member).get();
    return total;
  };

  family(out, "kvcache_requests_total", "counter", "HTTP requests answered, by endpoint and status code.");
  for (size_t e = 0; e < kEndpointCount; ++e) {
    for (size_t s = 0; s < kStatusCodes.size(); ++s) {
      uint64_t total = 0;
      for (const auto& worker : workers_) total += worker->requests[e][s].get();
      if (total == 0) continue;
      std::string code = kStatusCodes[s] == 0 ? "other" : std::to_string(kStatusCodes[s]);
      fmt::format_to(std::back_inserter(out), "kvcache_requests_total{{endpoint=\"{}\",code=\"{}\"}} {}\n",
                     endpoint_name(static_cast<Endpoint>(e)), code, total);
    }
  }

  family(out, "kvcache_request_duration_seconds", "histogram",
         "Time from reading a request to its response being ready, in the server.");
  uint64_t cumulative = 0;
  for (size_t b = 0; b <= kLatencyBuckets.size(); ++b) {
    for (const auto& worker : workers_) cumulative += worker->latency_buckets[b].get();
    if (b < kLatencyBuckets.size()) {
      fmt::format_to(std::back_inserter(out), "kvcache_request_duration_seconds_bucket{{le=\"{}\"}} {}\n",
                     kLatencyBuckets[b], cumulative);
    } else {
      fmt::format_to(std::back_inserter(out), "kvcache_request_duration_seconds_bucket{{le=\"+Inf\"}} {}\n",
                     cumulative);
    }
  }
  fmt::format_to(std::back_inserter(out), "kvcache_request_duration_seconds_sum {}\n",
                 static_cast<double>(sum(&WorkerMetrics::latency_sum_ns)) / 1e9);
  sample(out, "kvcache_request_duration_seconds_count", cumulative);

  StoreStats stats = store_.stats();
  single(out, "kvcache_hits_total", "counter", "Lookups that found a live key.", stats.hits);
  single(out, "kvcache_misses_total", "counter", "Lookups that found no live key.", stats.misses);
  single(out, "kvcache_evictions_total", "counter", "Entries evicted to stay within the memory limit.",
         stats.evictions);
  single(out, "kvcache_expirations_total", "counter", "Entries removed because their TTL passed.", stats.expirations);
  single(out, "kvcache_entries", "gauge", "Entries currently stored.", stats.entries);
  single(out, "kvcache_memory_used_bytes", "gauge", "Bytes charged to stored entries and their index.",
         stats.bytes_used);
  single(out, "kvcache_memory_limit_bytes", "gauge", "The memory limit of the whole process.", memory_limit_);
  single(out, "kvcache_store_budget_bytes", "gauge",
         "The part of the memory limit the store may fill (the limit less the process's own needs).",
         stats.byte_budget);
  single(out, "kvcache_connection_buffer_budget_bytes", "gauge",
         "The part of the memory limit for connection input and output buffers.", buffers_.limit());
  single(out, "kvcache_connection_buffer_bytes", "gauge",
         "Bytes held in connection buffers (input carried over, output not yet sent).", buffers_.used());

  uint64_t accepted = sum(&WorkerMetrics::connections_accepted);
  uint64_t closed = sum(&WorkerMetrics::connections_closed);
  single(out, "kvcache_connections_open", "gauge", "Client connections currently open.",
         accepted >= closed ? accepted - closed : 0);
  single(out, "kvcache_connections_max", "gauge", "--max-connections: open connections allowed.", max_connections_);
  single(out, "kvcache_connections_total", "counter", "Client connections accepted.", accepted);
  single(out, "kvcache_connections_rejected_total", "counter", "Connections refused over --max-connections.",
         sum(&WorkerMetrics::connections_rejected));
  family(out, "kvcache_auth_failures_total", "counter", "Requests refused with 401, by reason.");
  constexpr std::string_view kReasons[] = {"missing", "wrong"};
  for (size_t r = 0; r < std::size(kReasons); ++r) {
    uint64_t total = 0;
    for (const auto& worker : workers_) total += worker->auth_failures[r].get();
    fmt::format_to(std::back_inserter(out), "kvcache_auth_failures_total{{reason=\"{}\"}} {}\n", kReasons[r], total);
  }
  single(out, "kvcache_gzip_responses_total", "counter", "Responses sent gzip-compressed.",
         sum(&WorkerMetrics::gzip_responses));
  if (tls_ != nullptr) tls_->render(out);
  if (snapshot_ != nullptr) {
    const SnapshotMetrics& snap = *snapshot_;
    family(out, "kvcache_snapshot_last_success_timestamp_seconds", "gauge",
           "When the last snapshot was written (Unix time; 0: none yet).");
    fmt::format_to(std::back_inserter(out), "kvcache_snapshot_last_success_timestamp_seconds {}\n",
                   static_cast<double>(snap.last_success_unix_ms.load()) / 1e3);
    family(out, "kvcache_snapshot_last_duration_seconds", "gauge", "How long the last snapshot took to write.");
    fmt::format_to(std::back_inserter(out), "kvcache_snapshot_last_duration_seconds {}\n",
                   static_cast<double>(snap.last_duration_us.load()) / 1e6);
    single(out, "kvcache_snapshot_last_bytes", "gauge", "Size of the last snapshot file.", snap.last_bytes.load());
    single(out, "kvcache_snapshot_last_entries", "gauge", "Entries in the last snapshot.", snap.last_entries.load());
    single(out, "kvcache_snapshot_failures_total", "counter", "Snapshots that failed (write errors; the previous file stays).",
           snap.failures.load());
    single(out, "kvcache_snapshot_restored_entries", "gauge", "Entries loaded from the snapshot at start.",
           snap.restored_entries.load());
    single(out, "kvcache_snapshot_in_progress", "gauge", "1 while a snapshot is being written.", snap.running.load());
  }

  family(out, "kvcache_build_info", "gauge", "Build information.");
  fmt::format_to(std::back_inserter(out), "kvcache_build_info{{version=\"{}\"}} 1\n", KVCACHE_VERSION);
}

}  // namespace kv

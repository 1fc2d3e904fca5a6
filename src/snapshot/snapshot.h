// Snapshots of the store (--snapshot-path): loaded at start, written on a
// thread of their own on request, every --snapshot-interval, and at
// shutdown. Knows the store and the file format, nothing of HTTP.
//
// Writing never stops service: the thread copies a bounded batch of entries
// from one shard at a time under that shard's lock (Shard::copy_batch), and
// writes the block out after letting go of it. No fork(): copy-on-write
// could double the memory. So a snapshot is consistent per key, not a
// single point in time.
#pragma once

#include "metrics.h"
#include "snapshot_format.h"
#include "store.h"
#include "validation.h"

#include <absl/functional/function_ref.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

namespace kv {

// Entries copied per shard lock hold: a few microseconds of memcpy, far
// under the 1 ms a hold may take.
constexpr size_t kBatchEntries = 256;
// The writer's buffer: a block may overrun its target by one batch of the
// largest records.
constexpr size_t kSnapshotBufferBytes =
    snapshot::kBlockTarget + kBatchEntries * (snapshot::kRecordHeaderSize + kMaxKeyBytes + kMaxValueBytes);

struct SnapshotResult {
  bool ok = false;
  uint64_t entries = 0;
  uint64_t bytes = 0;
  double seconds = 0;
  bool abandoned = false;  // stopped on purpose (shutdown, timeout), not failed
  bool replaced = false;   // when !ok: the new file is in place all the same (only its directory's fsync failed)
  std::string error;       // when !ok
};

// The snapshots' part of /metrics: written by the snapshot thread, read by
// the scraper (SharedCounters over this table, slots below).
inline constexpr MetricDecl kSnapshotMetricDecls[] = {
    {"kvcache_snapshot_last_success_timestamp_seconds", MetricType::gauge,
     "When the last snapshot was written (Unix time; 0: none yet).", {}, {}, 1000},
    {"kvcache_snapshot_last_duration_seconds", MetricType::gauge, "How long the last snapshot took to write.", {}, {},
     1000000},
    {"kvcache_snapshot_last_bytes", MetricType::gauge, "Size of the last snapshot file."},
    {"kvcache_snapshot_last_entries", MetricType::gauge, "Entries in the last snapshot."},
    {"kvcache_snapshot_failures_total", MetricType::counter,
     "Snapshots that failed (write errors; the previous file stays)."},
    {"kvcache_snapshot_restored_entries", MetricType::gauge, "Entries loaded from the snapshot at start."},
    {"kvcache_snapshot_restore_damaged", MetricType::gauge,
     "1 when the snapshot loaded at start was damaged: every intact block was loaded, the file kept as PATH.bad-*."},
    {"kvcache_snapshot_restore_lost_records", MetricType::gauge,
     "Records of the snapshot loaded at start that its damage cost."},
    {"kvcache_snapshot_in_progress", MetricType::gauge, "1 while a snapshot is being written."},
};
inline constexpr MetricTable kSnapshotMetrics(kSnapshotMetricDecls);
namespace snapshot_slot {
inline constexpr size_t kLastSuccessMs = slot_of(kSnapshotMetrics, "kvcache_snapshot_last_success_timestamp_seconds");
inline constexpr size_t kLastDurationUs = slot_of(kSnapshotMetrics, "kvcache_snapshot_last_duration_seconds");
inline constexpr size_t kLastBytes = slot_of(kSnapshotMetrics, "kvcache_snapshot_last_bytes");
inline constexpr size_t kLastEntries = slot_of(kSnapshotMetrics, "kvcache_snapshot_last_entries");
inline constexpr size_t kFailures = slot_of(kSnapshotMetrics, "kvcache_snapshot_failures_total");
inline constexpr size_t kRestoredEntries = slot_of(kSnapshotMetrics, "kvcache_snapshot_restored_entries");
inline constexpr size_t kRestoreDamaged = slot_of(kSnapshotMetrics, "kvcache_snapshot_restore_damaged");
inline constexpr size_t kRestoreLostRecords = slot_of(kSnapshotMetrics, "kvcache_snapshot_restore_lost_records");
inline constexpr size_t kInProgress = slot_of(kSnapshotMetrics, "kvcache_snapshot_in_progress");
}  // namespace snapshot_slot

// Wall-clock and monotonic time read together: entries keep monotonic
// expiry ticks (clock.h), the file keeps epoch milliseconds, so time spent
// down counts against a TTL.
struct TimeBase {
  uint64_t mono_ms;
  int64_t wall_ms;
  static TimeBase now(const Clock& clock);
  int64_t wall_from_tick(uint32_t tick) const;
  // 0 when the expiry has passed.
  uint32_t tick_from_wall(int64_t wall_ms) const;
};

struct RestoreSummary {
  snapshot::ReadResult read;
  uint64_t loaded = 0;     // records stored (a later record of the same key may replace one)
  uint64_t expired = 0;    // records whose TTL ran out while the server was down
  uint64_t too_large = 0;  // records that could not be stored under the current memory limit
};

// Puts every record the source holds into the store in file order, so the
// newest entries end up the most recently used (and win under a smaller
// limit). The last record of a key decides: one that is expired or cannot
// be stored removes what an earlier record of that key put. With parts > 1,
// only the records of the shards whose index is part modulo parts: that
// many threads, each reading the file, restore it in parallel with no shard
// touched by two of them.
RestoreSummary restore_snapshot(snapshot::Source& source, Store& store, const TimeBase& base, size_t part = 0,
                                size_t parts = 1);

// Writes the whole store to path (via path.tmp); gives up, leaving the
// previous file, when should_stop() turns true between two batches, or
// when memory runs out (error "out of memory": it fails like a write error,
// and the next snapshot's walk closes this one's). duty < 1
// paces the work: it rests between slices so that it works that fraction of
// the time (a core's worth of copying and writing would otherwise come out
// of the request loops' share of the CPUs).
SnapshotResult write_snapshot(Store& store, const std::string& path, absl::FunctionRef<bool()> should_stop,
                              double duty = 1.0);

// Snapshots written while serving (interval, POST /snapshot) work an eighth
// of the time (a quarter cost the mixed load 0.83x on 2 cores, the goal is
// 0.9x); the final one, after the drain, at full speed.
constexpr double kBackgroundDuty = 0.125;

// --snapshot-path, --snapshot-interval, --snapshot-timeout (filled by app/).
struct SnapshotOptions {
  std::string path;
  double interval = 300.0;  // seconds; 0: only at shutdown and on request
  double timeout = 30.0;    // seconds the final snapshot may take
};

class Snapshotter {
 public:
  // threads: how many threads load() may use.
  Snapshotter(Store& store, const SnapshotOptions& options, unsigned threads);
  ~Snapshotter();
  Snapshotter(const Snapshotter&) = delete;
  Snapshotter& operator=(const Snapshotter&) = delete;

  // Before serving: checks that snapshots can be written next to
  // --snapshot-path, then loads it if it exists, and logs one line. False
  // (the reason logged) when the server must not start: the directory is
  // missing or not writable, or the file exists but cannot be opened or
  // read, which only a person can fix (serving empty would replace it with
  // an empty snapshot), or memory runs out while loading. A damaged file
  // loads every block that verifies and gets a second name,
  // PATH.bad-TIMESTAMP, before anything can replace it.
  bool load();
  // Starts the snapshot thread.
  void start();
  enum class Request { accepted, busy, stopping };
  // Thread-safe. Starts a snapshot now for one requester; done() runs on the
  // snapshot thread once it is over, and the requester then takes its
  // result with collect(). Until it has, every other request is `busy`, as
  // while any snapshot is written; `stopping` once stop() has begun. done is
  // kept only when accepted.
  Request request(std::function<void()> done);
  // The result of the accepted request's snapshot (after its done()); frees the slot.
  SnapshotResult collect();
  // Stops the thread; a snapshot it was writing is abandoned (the previous
  // file stays), and an accepted request gets that result.
  void stop();
  // At shutdown, after the workers have drained: a last snapshot on the
  // calling thread, abandoned past --snapshot-timeout. False when it was
  // not written (failed or abandoned).
  bool write_final();
  const SharedCounters& metrics() const { return metrics_; }

 private:
  void run();
  // Hands the accepted request its result and runs its done() (unlocked meanwhile).
  void answer(std::unique_lock<std::mutex>& lock, SnapshotResult result);
  SnapshotResult write(absl::FunctionRef<bool()> should_stop, double duty);
  bool load_file();

  Store& store_;
  const std::string path_;
  const std::chrono::milliseconds interval_;  // 0: only on request and at shutdown
  const double timeout_;
  const unsigned load_threads_;
  SharedCounters metrics_{kSnapshotMetrics};
  std::atomic<bool> stopping_{false};
  std::thread thread_;
  mutable std::mutex mutex_;
  // Rest are protected by mutex_.
  std::condition_variable wake_;
  bool requested_ = false;  // accepted, not started yet
  bool writing_ = false;
  bool answer_pending_ = false;  // accepted, and its result not collected yet
  std::function<void()> done_;
  SnapshotResult answer_;  // for the accepted request
};

}  // namespace kv

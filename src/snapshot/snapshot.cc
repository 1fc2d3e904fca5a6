#include "snapshot.h"

#include "log.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <algorithm>
#include <memory>
#include <new>
#include <system_error>
#include <utility>
#include <vector>

namespace kv {
namespace {


// Background snapshots work in slices of about this long.
constexpr std::chrono::microseconds kPaceSlice{500};

int64_t wall_now_ms() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return int64_t{ts.tv_sec} * 1000 + ts.tv_nsec / 1000000;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// PATH.bad-20261125T195600Z: a file we cannot load is kept for a human, never overwritten.
std::string bad_name(const std::string& path) {
  time_t now = time(nullptr);
  tm utc;
  gmtime_r(&now, &utc);
  char stamp[32];
  strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%SZ", &utc);
  return path + ".bad-" + stamp;
}

// Logging allocates: on the snapshot thread, a line that cannot be written
// for want of memory is dropped (the failure is counted and answered all the same).
template <typename... Args>
void log_unless_out_of_memory(LogLevel level, fmt::format_string<Args...> format, Args&&... args) noexcept {
  try {
    log(level, format, std::forward<Args>(args)...);
  } catch (const std::bad_alloc&) {
  }
}

// Keeps the damaged snapshot at path for a person, before the next snapshot
// can replace it: a second name, PATH.bad-TIMESTAMP (a hard link, so PATH
// itself still loads the same way if the server stops before that next
// snapshot; the next one renames over PATH, never over the kept name).
// Where the file system has no hard links, the file is renamed instead.
// Once kept (a restart before the next snapshot), it is not kept again.
// Returns how it was kept, for the log; empty, with error set, when it could not be.
std::string keep_damaged(const std::string& path, std::string& error) {
  struct stat file {};
  if (stat(path.c_str(), &file) != 0) {
    error = fmt::format("stat {}: {}", path, std::strerror(errno));
    return {};
  }
  size_t slash = path.rfind('/');
  std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  std::string prefix = (slash == std::string::npos ? path : path.substr(slash + 1)) + ".bad-";
  // Closed on every way out, a std::bad_alloc's too.
  std::unique_ptr<DIR, int (*)(DIR*)> listing(opendir(dir.c_str()), closedir);
  if (listing) {
    std::string kept;
    while (dirent* entry = readdir(listing.get())) {
      std::string_view name(entry->d_name);
      struct stat other {};
      if (name.starts_with(prefix) && fstatat(dirfd(listing.get()), entry->d_name, &other, AT_SYMLINK_NOFOLLOW) == 0 &&
          other.st_dev == file.st_dev && other.st_ino == file.st_ino) {
        kept = (dir == "." && slash == std::string::npos) ? std::string(name) : path.substr(0, slash + 1) + std::string(name);
        break;
      }
    }
    listing.reset();
    if (!kept.empty()) return fmt::format("the damaged file was already kept as {}", kept);
  }
  std::string stamped = bad_name(path);
  for (int attempt = 1; attempt <= 10; ++attempt) {
    std::string name = attempt == 1 ? stamped : fmt::format("{}-{}", stamped, attempt);
    if (link(path.c_str(), name.c_str()) == 0) return fmt::format("the damaged file is kept as {}", name);
    if (errno == EEXIST) continue;
    int link_errno = errno;
    if (rename(path.c_str(), name.c_str()) == 0) {
      return fmt::format("the damaged file is moved to {} (no hard link: {})", name, std::strerror(link_errno));
    }
    error = fmt::format("link or rename {} to {}: {}", path, name, std::strerror(errno));
    return {};
  }
  error = fmt::format("{} and 9 more names like it exist", stamped);
  return {};
}

// "36-65620 (block checksum mismatch), 131000-140000 (block cut short (truncated))", and how many more.
std::string describe_damage(const snapshot::ReadResult& read) {
  std::string out;
  for (const snapshot::Damage& damage : read.damage) {
    if (!out.empty()) out += ", ";
    out += fmt::format("{}-{} ({})", damage.begin, damage.end, damage.reason);
  }
  if (read.damaged_ranges > read.damage.size()) out += fmt::format(" and {} more", read.damaged_ranges - read.damage.size());
  return out;
}

}  // namespace

TimeBase TimeBase::now(const Clock& clock) { return {clock.now_ms(), wall_now_ms()}; }

int64_t TimeBase::wall_from_tick(uint32_t tick) const {
  int64_t wall = wall_ms + (static_cast<int64_t>(tick) * static_cast<int64_t>(kExpiryTickMs) - static_cast<int64_t>(mono_ms));
  return wall > 0 ? wall : 1;  // 0 would read as "never"
}

uint32_t TimeBase::tick_from_wall(int64_t wall) const {
  if (wall <= wall_ms) return 0;
  return tick_at_or_after(mono_ms + static_cast<uint64_t>(wall - wall_ms));
}

RestoreSummary restore_snapshot(snapshot::Source& source, Store& store, const TimeBase& base, size_t part,
                                size_t parts) {
  RestoreSummary summary;
  summary.read = snapshot::read(source, [&](const snapshot::Record& record) {
    KeyRef key = make_key(record.key);
    if (parts > 1 && store.shard_index(key) % parts != part) return;
    uint32_t tick = 0;
    if (record.expires_unix_ms != 0) {
      tick = base.tick_from_wall(record.expires_unix_ms);
      if (tick == 0) {
        // The key's last value had run out: an earlier one must not come back.
        ++summary.expired;
        store.erase(key);
        return;
      }
    }
    if (store.restore(key, record.value, tick) == PutStatus::ok) {
      ++summary.loaded;
    } else {
      ++summary.too_large;
      store.erase(key);
    }
  });
  return summary;
}

namespace {

SnapshotResult write_snapshot_unguarded(Store& store, const std::string& path, absl::FunctionRef<bool()> should_stop,
                                        double duty, std::chrono::steady_clock::time_point start) {
  auto slice_start = start;
  SnapshotResult result;
  TimeBase base = TimeBase::now(store.clock());
  // The whole block buffer now: nothing is allocated under a shard lock.
  snapshot::Writer writer(snapshot::kBlockTarget, snapshot::system_file_calls(), kSnapshotBufferBytes);
  auto fail = [&](std::string error) {
    writer.abandon();
    result.error = std::move(error);
    result.seconds = seconds_since(start);
    return result;
  };
  if (!writer.open(path, base.wall_ms)) return fail(writer.error());
  // Round robin over the shards, each turn copying the same fraction of
  // every shard (at most kBatchEntries from the largest): each shard's
  // entries stay in its LRU order, and the shards' walks advance together
  // through time, so the file is close to one global recency order too.
  // A restore needs that: the shards it fills are not the ones written
  // (the key hash is seeded per process), and under a smaller limit the
  // newest must win in every one of them.
  size_t shards = store.shard_count();
  std::vector<size_t> batch(shards);
  size_t largest = 0;
  for (size_t i = 0; i < shards; ++i) {
    batch[i] = store.shard(i).copy_start();
    largest = std::max(largest, batch[i]);
  }
  size_t rounds = std::max<size_t>(1, (largest + kBatchEntries - 1) / kBatchEntries);
  for (size_t& size : batch) size = std::max<size_t>(1, (size + rounds - 1) / rounds);
  std::vector<bool> walking(shards, true);
  for (size_t left = shards; left > 0;) {
    for (size_t i = 0; i < shards; ++i) {
      if (!walking[i]) continue;
      walking[i] = store.shard(i).copy_batch(batch[i], [&](std::string_view key, std::string_view value,
                                                           uint32_t expires_at) {
        writer.add({key, value, expires_at == 0 ? 0 : base.wall_from_tick(expires_at)});
      });
      if (!walking[i]) --left;
      // The file I/O, outside any lock.
      if (writer.block_full() && !writer.flush()) return fail(writer.error());
      if (should_stop()) {
        result.abandoned = true;
        return fail("abandoned");
      }
      // Pacing: after each slice of work, rest so that work is `duty` of the time.
      auto now = std::chrono::steady_clock::now();
      if (duty < 1 && now - slice_start >= kPaceSlice) {
        std::this_thread::sleep_for((now - slice_start) * (1 / duty - 1));
        slice_start = std::chrono::steady_clock::now();
      }
    }
  }
  if (!writer.commit()) {
    result.replaced = writer.replaced();
    return fail(writer.error());
  }
  result.ok = true;
  result.entries = writer.records();
  result.bytes = writer.bytes();
  result.seconds = seconds_since(start);
  return result;
}

}  // namespace

SnapshotResult write_snapshot(Store& store, const std::string& path, absl::FunctionRef<bool()> should_stop,
                              double duty) {
  auto start = std::chrono::steady_clock::now();
  try {
    return write_snapshot_unguarded(store, path, should_stop, duty, start);
  } catch (const std::bad_alloc&) {
    // The writer's destructor has removed PATH.tmp: the previous file stays.
    // The walk left behind is closed by the next snapshot's copy_start.
    SnapshotResult result;
    result.error = "out of memory";  // within std::string's inline buffer: nothing to allocate
    result.seconds = seconds_since(start);
    return result;
  }
}

// ---------------------------------------------------------------- Snapshotter

Snapshotter::Snapshotter(Store& store, const SnapshotOptions& options, unsigned threads)
    : store_(store),
      path_(options.path),
      interval_(static_cast<int64_t>(options.interval * 1000)),
      timeout_(options.timeout),
      load_threads_(std::clamp<unsigned>(threads, 1, static_cast<unsigned>(store.shard_count()))) {}

Snapshotter::~Snapshotter() { stop(); }

bool Snapshotter::load() {
  try {
    return load_file();
  } catch (const std::bad_alloc&) {
    // Not starting: serving a part of the file would replace it with a smaller snapshot.
    try {
      log(LogLevel::error,
          "cannot load snapshot {}: out of memory; not starting, the file is left as it is: give the server more "
          "memory and start again",
          path_);
    } catch (const std::bad_alloc&) {
      std::fputs("cannot load the snapshot: out of memory; not starting, the file is left as it is\n", stderr);
    }
    return false;
  }
}

bool Snapshotter::load_file() {
  // A PATH.tmp is what a crash or kill -9 left mid-write: never a snapshot.
  std::string tmp = path_ + ".tmp";
  if (unlink(tmp.c_str()) == 0) log(LogLevel::info, "removed {} left by an interrupted snapshot", tmp);
  // Every snapshot creates PATH.tmp: find out now, not when the data is at stake.
  int probe = open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (probe < 0) {
    log(LogLevel::error,
        "cannot write snapshots: create {}: {}; create the directory and make it writable for the server's user, "
        "or change --snapshot-path",
        tmp, std::strerror(errno));
    return false;
  }
  close(probe);
  unlink(tmp.c_str());

  // Only "no such file" means there is nothing to lose. Any other failure to
  // open or read is fatal, as Redis does with an RDB it cannot read: serving
  // empty would replace the file with an empty snapshot.
  auto unreadable = [&](std::string_view what, const std::string& error) {
    log(LogLevel::error,
        "cannot {} snapshot {}: {}; not starting, so that it is not replaced by an empty one: fix the file's "
        "permissions (or the disk) and start again, or move it aside (mv {} {}.aside) to start empty",
        what, path_, error, path_, path_);
    return false;
  };
  int fd = open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno != ENOENT) return unreadable("open", std::strerror(errno));
    log(LogLevel::info, "no snapshot at {}: starting empty", path_);
    return true;
  }
  close(fd);
  // Nothing is served yet, so every core may help: one thread per group of
  // shards, each reading the whole file (the parsing is cheap next to the
  // inserts). They all meet the same damage, if any, at the same offset.
  auto start = std::chrono::steady_clock::now();
  TimeBase base = TimeBase::now(store_.clock());
  StoreStats before = store_.stats();
  std::vector<RestoreSummary> parts(load_threads_);
  std::vector<char> out_of_memory(load_threads_, 0);
  // Runs on its own thread: nothing may escape it.
  auto load_part = [&](size_t part) {
    int part_fd = open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    try {
      if (part_fd < 0) {
        parts[part].read.status = snapshot::ReadStatus::io_error;
        parts[part].read.reason = std::strerror(errno);
      } else {
        posix_fadvise(part_fd, 0, 0, POSIX_FADV_SEQUENTIAL);
        snapshot::FdSource source(part_fd);
        parts[part] = restore_snapshot(source, store_, base, part, load_threads_);
      }
    } catch (const std::bad_alloc&) {
      out_of_memory[part] = 1;
    }
    if (part_fd >= 0) close(part_fd);
  };
  std::vector<std::thread> threads;
  threads.reserve(load_threads_);
  for (size_t part = 0; part < load_threads_; ++part) {
    try {
      threads.emplace_back(load_part, part);
    } catch (const std::system_error&) {
      load_part(part);  // no thread to be had: this one loads its part
    } catch (const std::bad_alloc&) {
      out_of_memory[part] = 1;  // the threads started are joined first
    }
  }
  for (auto& thread : threads) thread.join();
  if (std::find(out_of_memory.begin(), out_of_memory.end(), 1) != out_of_memory.end()) throw std::bad_alloc();
  RestoreSummary summary = parts[0];
  for (size_t part = 1; part < parts.size(); ++part) {
    summary.loaded += parts[part].loaded;
    summary.expired += parts[part].expired;
    summary.too_large += parts[part].too_large;
    if (parts[part].read.status != snapshot::ReadStatus::complete && summary.read.status == snapshot::ReadStatus::complete) {
      summary.read = parts[part].read;  // an I/O error one thread alone met
    }
  }
  double seconds = seconds_since(start);
  const snapshot::ReadResult& read = summary.read;
  switch (read.status) {
    case snapshot::ReadStatus::complete:
      break;
    case snapshot::ReadStatus::io_error:
      // Some shards would be loaded short, and the next snapshot would drop the rest.
      return unreadable("read", fmt::format("{} at offset {}", read.reason, read.offset));
    case snapshot::ReadStatus::damaged: {
      // Kept before anything can replace it: the first snapshot renames over PATH.
      std::string error;
      std::string kept = keep_damaged(path_, error);
      if (kept.empty()) {
        log(LogLevel::error,
            "snapshot {} is damaged and cannot be kept aside ({}); not starting, so that it is not replaced: move it "
            "aside by hand (mv {} {}.aside) to start empty, or fix the directory and start again",
            path_, error, path_, path_);
        return false;
      }
      metrics_[snapshot_slot::kRestoreDamaged].set(1);
      metrics_[snapshot_slot::kRestoreLostRecords].set(read.lost_records());
      log(LogLevel::error,
          "snapshot {} is damaged at offset {}: {}; {} damaged range{} skipped ({}); {} of its {} records lost, the "
          "{} records of every intact block loaded; {}",
          path_, read.offset, read.reason, read.damaged_ranges, read.damaged_ranges == 1 ? "" : "s",
          describe_damage(read), read.lost_records(), read.header_records, read.records, kept);
      break;
    }
    case snapshot::ReadStatus::not_snapshot:
    case snapshot::ReadStatus::unknown_version: {
      std::string aside = bad_name(path_);
      bool moved = rename(path_.c_str(), aside.c_str()) == 0;
      log(LogLevel::error, "{} cannot be loaded ({}: {}); {}; starting empty", path_, snapshot::status_name(read.status),
          read.reason, moved ? fmt::format("moved aside to {}", aside) : fmt::format("cannot move it aside: {}", std::strerror(errno)));
      return true;
    }
  }
  // What the store holds now, not what went in: under a smaller limit the
  // load itself evicts the oldest.
  StoreStats after = store_.stats();
  uint64_t kept = after.entries - before.entries;
  uint64_t evicted = after.evictions - before.evictions;
  metrics_[snapshot_slot::kRestoredEntries].set(kept);
  log(LogLevel::info,
      "snapshot {} loaded: {} entries, {} skipped as expired, {} not kept (over the memory limit), {} records, {} "
      "bytes in {:.3f}s",
      path_, kept, summary.expired, summary.too_large + evicted, read.records, read.bytes, seconds);
  return true;
}

void Snapshotter::start() { thread_ = std::thread([this] { run(); }); }

Snapshotter::Request Snapshotter::request(std::function<void()> done) {
  std::lock_guard lock(mutex_);
  if (stopping_) return Request::stopping;
  // One requester at a time, until it has its result: a second accepted
  // before the first collected would be answered with the first's result.
  if (answer_pending_ || writing_) return Request::busy;
  answer_pending_ = true;
  requested_ = true;
  done_ = std::move(done);
  wake_.notify_one();
  return Request::accepted;
}

SnapshotResult Snapshotter::collect() {
  std::lock_guard lock(mutex_);
  answer_pending_ = false;
  return std::move(answer_);
}

SnapshotResult Snapshotter::write(absl::FunctionRef<bool()> should_stop, double duty) {
  metrics_[snapshot_slot::kInProgress].set(1);
  SnapshotResult result = write_snapshot(store_, path_, should_stop, duty);
  metrics_[snapshot_slot::kInProgress].set(0);
  if (result.ok) {
    metrics_[snapshot_slot::kLastSuccessMs].set(static_cast<uint64_t>(wall_now_ms()));
    metrics_[snapshot_slot::kLastDurationUs].set(static_cast<uint64_t>(result.seconds * 1e6));
    metrics_[snapshot_slot::kLastBytes].set(result.bytes);
    metrics_[snapshot_slot::kLastEntries].set(result.entries);
    log_unless_out_of_memory(LogLevel::info, "snapshot written to {}: {} entries, {} bytes in {:.3f}s", path_, result.entries, result.bytes,
        result.seconds);
  } else if (result.replaced) {
    metrics_[snapshot_slot::kFailures].add();
    log_unless_out_of_memory(LogLevel::error, "snapshot written but not made durable: {}", result.error);
  } else if (!result.abandoned) {
    metrics_[snapshot_slot::kFailures].add();
    log_unless_out_of_memory(LogLevel::error, "snapshot to {} failed: {}; the previous snapshot stays", path_, result.error);
  }
  return result;
}

void Snapshotter::run() {
  auto next = std::chrono::steady_clock::now() + interval_;
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    bool due = interval_.count() > 0 && std::chrono::steady_clock::now() >= next;
    if (!requested_ && !due) {
      if (interval_.count() > 0) {
        wake_.wait_until(lock, next);
      } else {
        wake_.wait(lock);
      }
      continue;
    }
    bool answering = std::exchange(requested_, false);
    writing_ = true;
    lock.unlock();
    SnapshotResult result;
    try {
      result = write([this] { return stopping_.load(); }, kBackgroundDuty);
    } catch (const std::bad_alloc&) {
      // write() itself catches it; this keeps the thread (and the process) alive whatever changes there.
      metrics_[snapshot_slot::kInProgress].set(0);
      metrics_[snapshot_slot::kFailures].add();
      result = SnapshotResult{};
      result.error = "out of memory";
    }
    lock.lock();
    writing_ = false;
    next = std::chrono::steady_clock::now() + interval_;
    if (answering) answer(lock, std::move(result));
  }
  // Accepted but never started: its requester still gets an answer.
  if (requested_) {
    requested_ = false;
    SnapshotResult abandoned;
    abandoned.abandoned = true;
    abandoned.error = "abandoned";
    answer(lock, std::move(abandoned));
  }
}

void Snapshotter::answer(std::unique_lock<std::mutex>& lock, SnapshotResult result) {
  answer_ = std::move(result);
  std::function<void()> done = std::move(done_);
  done_ = nullptr;
  // The slot stays taken (answer_pending_) until the requester collects.
  lock.unlock();
  done();
  lock.lock();
}

void Snapshotter::stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
    wake_.notify_one();
  }
  if (thread_.joinable()) thread_.join();
}

bool Snapshotter::write_final() {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_);
  SnapshotResult result = write([&] { return std::chrono::steady_clock::now() > deadline; }, 1.0);
  if (result.abandoned) {
    log_unless_out_of_memory(LogLevel::error, "final snapshot took longer than --snapshot-timeout {}s: abandoned; {} keeps the previous one",
        timeout_, path_);
  }
  return result.ok;
}

}  // namespace kv

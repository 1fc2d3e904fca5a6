// kvcache: starts the worker loops, sweeps expired entries, reloads bearer tokens on
// SIGHUP and waits for SIGTERM/SIGINT.
#include "auth.h"
#include "config.h"
#include "handlers.h"
#include "health_check.h"
#include "log.h"
#include "memory_limit.h"
#include "metrics.h"
#include "process_metrics.h"
#include "service_notify.h"
#include "snapshot.h"
#include "store.h"
#include "store_metrics.h"
#include "tls.h"
#include "version.h"
#include "worker.h"

#include <malloc.h>
#include <sched.h>
#include <signal.h>
#include <sys/resource.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <memory>
#include <thread>
#include <vector>

namespace {

// Exit codes: 2 is a bad flag or a state only a person can fix (an
// unreadable snapshot), so the systemd unit does not restart on it; 3 is a
// stop whose final snapshot was not written (it restarts, loading the previous one).
constexpr int kExitFinalSnapshotFailed = 3;

unsigned available_cpus() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
  unsigned hardware = std::thread::hardware_concurrency();
  return hardware > 0 ? hardware : 1;
}

// Every connection is a file descriptor: take all the kernel allows us. Under
// the systemd unit's SystemCallFilter=~@resources this still works: glibc's
// setrlimit() is the prlimit64 call, which @system-service allows; a sandbox
// that refuses it gets a warning, and the start-up line shows the limit in force.
rlim_t raise_open_files_limit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return 0;
  if (limit.rlim_cur < limit.rlim_max) {
    rlim_t soft = limit.rlim_cur;
    limit.rlim_cur = limit.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &limit) != 0) {
      kv::log(kv::LogLevel::warn, "cannot raise the open files limit from {} to {}: {}", soft, limit.rlim_max,
              std::strerror(errno));
    }
    getrlimit(RLIMIT_NOFILE, &limit);
  }
  return limit.rlim_cur;
}

// SIGHUP: re-read the token file; a file that no longer parses keeps the old tokens.
void reload_tokens(const kv::Config& config, kv::TokenStore* tokens) {
  using namespace kv;
  if (config.auth_token_file.empty()) {
    if (tokens || !config.tls()) {
      log(LogLevel::warn, "SIGHUP: no --auth-token-file to reload{}",
          tokens ? " (KVCACHE_AUTH_TOKEN is read at start only)" : "");
    }
    return;
  }
  TokenParse loaded = load_token_file(config.auth_token_file);
  if (!loaded.tokens) {
    log(LogLevel::error, "SIGHUP: keeping the {} current token(s): {}", tokens->current()->tokens.size(), loaded.error);
    return;
  }
  log(LogLevel::info, "SIGHUP: {} token(s) loaded from {}", loaded.tokens->tokens.size(), config.auth_token_file);
  tokens->replace(std::move(loaded.tokens));
}

// SIGHUP: re-read the certificate, key and client CA; bad files keep the current ones.
void reload_tls(const kv::Config& config, kv::TlsContext& tls) {
  using namespace kv;
  std::string error = tls.reload();
  if (!error.empty()) {
    log(LogLevel::error, "SIGHUP: keeping the current TLS certificate: {}", error);
    return;
  }
  log(LogLevel::info, "SIGHUP: TLS certificate {} and key {} loaded for new connections", config.tls_cert, config.tls_key);
}

kv::WorkerOptions worker_options(const kv::Config& config) {
  kv::WorkerOptions options;
  options.bind = config.bind;
  options.port = config.port;
  options.max_connections = config.max_connections;
  options.drain_timeout = config.drain_timeout;
  options.connection.read_timeout = config.read_timeout;
  options.connection.idle_timeout = config.idle_timeout;
  options.connection.send_timeout = config.send_timeout;
  return options;
}

kv::SnapshotOptions snapshot_options(const kv::Config& config) {
  return {config.snapshot_path, config.snapshot_interval, config.snapshot_timeout};
}

// One worker loop and what answers its requests (used by its thread alone).
struct Loop {
  kv::http::DateHeader date;
  std::unique_ptr<kv::RequestHandler> handler;
  std::unique_ptr<kv::Worker> worker;
};

}  // namespace

int main(int argc, char** argv) {
  using namespace kv;
  // Block the stop signals (and SIGHUP, the token reload) first, so one
  // arriving during start-up waits for sigwait below instead of killing the
  // process; workers inherit the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  Config config;
  std::vector<std::string_view> args(argv + 1, argv + argc);
  ConfigResult parsed = parse_config(args, [](const char* name) { return std::getenv(name); }, config);
  if (!parsed.ok) {
    std::fprintf(stderr, "kvcache: %s\n", parsed.error.c_str());
    return 2;
  }
  if (config.help) {
    std::fputs(usage_text().c_str(), stdout);
    return 0;
  }
  set_log_level(config.log_level);
  if (config.health_check) return run_health_check(config);

  TokenParse tokens = load_configured_tokens(config.auth_token_file, std::getenv("KVCACHE_AUTH_TOKEN"));
  if (!tokens.error.empty()) {
    std::fprintf(stderr, "kvcache: %s\n", tokens.error.c_str());
    return 2;
  }
  std::unique_ptr<TokenStore> token_store;
  if (tokens.tokens) token_store = std::make_unique<TokenStore>(tokens.tokens);
  std::unique_ptr<TlsContext> tls;
  if (config.tls()) {
    std::string error;
    tls = TlsContext::load({config.tls_cert, config.tls_key, config.tls_client_ca}, error);
    if (!tls) {
      std::fprintf(stderr, "kvcache: %s\n", error.c_str());
      return 2;
    }
  }

  if (config.threads == 0) config.threads = available_cpus();
  AvailableMemory available = detect_available_memory();
  uint64_t memory_limit = config.memory_limit.value_or(default_memory_limit(available));
  rlim_t open_files = raise_open_files_limit();

  // Buffers above this come from mmap and go back to the kernel when freed.
  // glibc's default threshold rises to the largest block freed, after which
  // an outsized response's buffers, trimmed on the loop's tick
  // (LoopContext::trim), would stay resident in the heap.
  constexpr int kMmapThreshold = 256 << 10;
  mallopt(M_MMAP_THRESHOLD, kMmapThreshold);
  // Each loop thread's buffers (read buffer, output, JSON parser) come on top
  // of what the process holds now; measured, they stay under 1 MiB a thread
  // (an outsized response grows them until the next tick).
  constexpr uint64_t kPerThreadBuffers = 1 << 20;
  // Once gzip is used: the inflate buffer, the compressor and its output
  // buffer (measured +410 KiB a thread after 1,000-key /mget responses).
  constexpr uint64_t kPerThreadGzip = 512 << 10;
  uint64_t overhead = resident_bytes() + config.threads * (kPerThreadBuffers + kPerThreadGzip);
  // The snapshot writer's one block buffer (the loader's is freed before serving).
  if (!config.snapshot_path.empty()) overhead += kSnapshotBufferBytes;
  if (tls) overhead += TlsContext::kSessionCacheBytes;
  MonotonicClock clock;
  // Connection buffers get their own share of the limit, the store the rest.
  BufferBudget buffers(memory_limit / kBufferBudgetDivisor);
  Store store(config.shards, store_budget(memory_limit - buffers.limit(), overhead), clock);
  // Each module's declared metrics, strung together for /metrics.
  WorkerCounters api_metrics(kApiMetrics, config.threads);
  WorkerCounters connection_metrics(kConnectionMetrics, config.threads);
  ComputedMetrics connection_gauge_metrics = connection_gauges(buffers, config.max_connections);
  StoreMetrics store_metrics(store);
  ProcessMetrics process_metrics(memory_limit);
  Metrics metrics;
  metrics.add(api_metrics);
  metrics.add(connection_metrics);
  metrics.add(connection_gauge_metrics);
  metrics.add(store_metrics);
  if (tls) metrics.add(tls->metrics());
  std::unique_ptr<Snapshotter> snapshots;
  if (!config.snapshot_path.empty()) {
    snapshots = std::make_unique<Snapshotter>(store, snapshot_options(config), config.threads);
    metrics.add(snapshots->metrics());
    // Before listening: clients see the restored cache, or connection refused.
    if (!snapshots->load()) return 2;
  }
  metrics.add(process_metrics);
  std::atomic<unsigned> open_connections{0};
  const WorkerOptions options = worker_options(config);
  std::vector<std::unique_ptr<Loop>> loops;
  for (unsigned i = 0; i < config.threads; ++i) {
    auto& loop = *loops.emplace_back(std::make_unique<Loop>());
    loop.handler = std::make_unique<RequestHandler>(store, metrics, ApiCounters(api_metrics.worker(i)), loop.date, token_store.get());
    loop.worker = std::make_unique<Worker>(i, options, *loop.handler, loop.date, ConnectionCounters(connection_metrics.worker(i)),
                                           open_connections, buffers, tls.get());
    if (snapshots) loop.handler->enable_snapshots(snapshots.get(), [w = loop.worker.get()] { w->wake_deferred(); });
    if (Result<void> listening = loop.worker->listen(); !listening) {
      log(LogLevel::error, "cannot listen: {}", listening.error());
      return 1;
    }
  }
  log(LogLevel::info,
      "kvcache {} listening on {}:{} threads={} shards={} memory_limit={} ({}{}) store_budget={} "
      "connection_buffer_budget={} max_connections={} open_files={} read_timeout={}s idle_timeout={}s "
      "send_timeout={}s drain_timeout={}s snapshot_path={:?} snapshot_interval={}s snapshot_timeout={}s log_level={} auth={} tls={}",
      KVCACHE_VERSION, config.bind, config.port, config.threads, config.shards, memory_limit,
      config.memory_limit ? "flag" : "auto: 70% of ", config.memory_limit ? "" : available.source,
      store.byte_budget(), buffers.limit(), config.max_connections, open_files, config.read_timeout,
      config.idle_timeout, config.send_timeout, config.drain_timeout, config.snapshot_path, config.snapshot_interval,
      config.snapshot_timeout, log_level_name(config.log_level),
      !token_store                     ? "off"
      : config.auth_token_file.empty() ? "KVCACHE_AUTH_TOKEN"
                                       : "--auth-token-file " + config.auth_token_file,
      !tls ? std::string("off")
           : fmt::format("TLSv1.2+1.3 cert={} client_certificates={} kernel_tls={}", config.tls_cert,
                         config.tls_client_ca.empty() ? "off" : "required by " + config.tls_client_ca,
                         TlsContext::kernel_tls_available() ? "available" : "off (no tls module in this kernel)"));

  std::vector<std::thread> threads;
  for (auto& loop : loops) threads.emplace_back([worker = loop->worker.get()] { worker->run(); });
  if (snapshots) snapshots->start();
  // Every loop listens (connections queue in the kernel until it runs): ready.
  notify_service_manager("READY=1");

  // The store's owner runs its bounded TTL sweep while it waits for the
  // stop signal, more often while expired entries remain. Each call holds a
  // shard's lock for a few pages of chunks (about 100 entries a page), then
  // lets go, so requests wait for one slice at most; 1M entries expiring at
  // once are gone within about a second.
  constexpr timespec kSweepInterval = {0, Store::kSweepIntervalMs * 1000 * 1000};
  constexpr timespec kSweepBacklogInterval = {0, Store::kSweepBacklogIntervalMs * 1000 * 1000};
  bool sweep_backlog = false;
  int signal_number = 0;
  for (;;) {
    signal_number = sigtimedwait(&signals, nullptr, sweep_backlog ? &kSweepBacklogInterval : &kSweepInterval);
    if (signal_number < 0) {
      sweep_backlog = store.sweep_expired(Store::kSweepPagesPerShard);  // a timeout (EAGAIN) or EINTR
    } else if (signal_number == SIGHUP) {
      reload_tokens(config, token_store.get());
      if (tls) reload_tls(config, *tls);
    } else {
      break;
    }
  }
  log(LogLevel::info, "received {}: draining connections (up to {}s)", signal_number == SIGTERM ? "SIGTERM" : "SIGINT",
      config.drain_timeout);
  notify_service_manager("STOPPING=1");
  // A background snapshot still running is abandoned for the final one,
  // which sees every write the drained requests made; stopped first, so a
  // POST /snapshot waiting on it is answered and does not hold up the drain.
  if (snapshots) snapshots->stop();
  for (auto& loop : loops) loop->worker->stop();
  for (auto& thread : threads) thread.join();
  if (snapshots) {
    log(LogLevel::info, "writing the final snapshot (up to {}s)", config.snapshot_timeout);
    if (!snapshots->write_final()) {
      // Not a clean stop: what changed since the previous snapshot is lost.
      log(LogLevel::error, "stopped without the final snapshot: exit code {}", kExitFinalSnapshotFailed);
      return kExitFinalSnapshotFailed;
    }
  }
  log(LogLevel::info, "stopped");
  return 0;
}

// kvcache: start-up in the steps main() lists (configure, plan memory, build
// the server, restore the snapshot, listen, run the loops), then the TTL
// sweep and SIGHUP reloads until SIGTERM/SIGINT, then the drain and the final
// snapshot.
#include "auth.h"
#include "check_config.h"
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

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <memory>
#include <optional>
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
  Result<Tokens> loaded = load_token_file(config.auth_token_file);
  if (!loaded) {
    log(LogLevel::error, "SIGHUP: keeping the {} current token(s): {}", tokens->current()->tokens.size(), loaded.error());
    return;
  }
  log(LogLevel::info, "SIGHUP: {} token(s) loaded from {}", loaded.value()->tokens.size(), config.auth_token_file);
  tokens->replace(std::move(loaded.value()));
}

// SIGHUP: re-read the certificate, key and client CA; bad files keep the current ones.
void reload_tls(const kv::Config& config, kv::TlsContext& tls) {
  using namespace kv;
  if (Result<void> reloaded = tls.reload(); !reloaded) {
    log(LogLevel::error, "SIGHUP: keeping the current TLS certificate: {}", reloaded.error());
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

// Blocks the stop signals (and SIGHUP, the reload) before any thread starts,
// so one arriving during start-up waits for sigtimedwait in serve() instead
// of killing the process; workers inherit the mask.
sigset_t block_signals() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);
  return signals;
}

// What the flags and files ask for, checked before anything is allocated.
struct Setup {
  kv::Config config;
  std::unique_ptr<kv::TokenStore> tokens;  // null: access needs no token
  std::unique_ptr<kv::TlsContext> tls;     // null: plain HTTP
};

// Flags, environment, token file and TLS files. Returns the exit code when
// the process is done already (a bad flag or file: 2; --help, --version, a
// good --check-config: 0; --health-check).
std::optional<int> configure(int argc, char** argv, Setup& setup) {
  using namespace kv;
  Config& config = setup.config;
  std::vector<std::string_view> args(argv + 1, argv + argc);
  Result<void> parsed = parse_config(args, [](const char* name) { return std::getenv(name); }, config);
  if (!parsed) {
    std::fprintf(stderr, "kvcache: %s\n", parsed.error().c_str());
    return 2;
  }
  if (config.help) {
    std::fputs(usage_text().c_str(), stdout);
    return 0;
  }
  if (config.version) {
    std::printf("kvcache %s\n", KVCACHE_VERSION);
    return 0;
  }
  set_log_level(config.log_level);
  if (config.health_check) return run_health_check(config);
  if (config.check_config) {
    Result<std::vector<std::string>> checked =
        check_config(config, std::getenv("KVCACHE_AUTH_TOKEN"), std::getenv("CREDENTIALS_DIRECTORY"));
    if (!checked) {
      std::fprintf(stderr, "kvcache: %s\n", checked.error().c_str());
      return 2;
    }
    for (const std::string& path : checked.value()) {
      std::printf("kvcache: not checked: %s (a copy of a systemd credential this process cannot read; the server "
                  "checks it when it reads it)\n",
                  path.c_str());
    }
    std::puts("kvcache: configuration OK");
    return 0;
  }

  Result<Tokens> tokens = load_configured_tokens(config.auth_token_file, std::getenv("KVCACHE_AUTH_TOKEN"));
  if (!tokens) {
    std::fprintf(stderr, "kvcache: %s\n", tokens.error().c_str());
    return 2;
  }
  if (tokens.value()) setup.tokens = std::make_unique<TokenStore>(tokens.value());
  if (config.tls()) {
    auto loaded = TlsContext::load({config.tls_cert, config.tls_key, config.tls_client_ca});
    if (!loaded) {
      std::fprintf(stderr, "kvcache: %s\n", loaded.error().c_str());
      return 2;
    }
    setup.tls = std::move(loaded.value());
  }
  if (config.threads == 0) config.threads = available_cpus();
  return std::nullopt;
}

// How --memory-limit is shared: the connection buffer budget, the process's
// own overhead (measured now, plus each thread's buffers), the store the rest.
struct MemoryPlan {
  kv::AvailableMemory available;
  uint64_t limit = 0;
  uint64_t overhead = 0;
};

MemoryPlan plan_memory(const Setup& setup) {
  using namespace kv;
  const Config& config = setup.config;
  MemoryPlan plan;
  plan.available = detect_available_memory();
  plan.limit = config.memory_limit.value_or(default_memory_limit(plan.available));
  // Buffers above this come from mmap and go back to the kernel when freed.
  // glibc's default threshold rises to the largest block freed, after which
  // an outsized response's buffers, trimmed on the loop's tick
  // (LoopContext::trim), would stay resident in the heap.
  constexpr int kMmapThreshold = 256 << 10;
  mallopt(M_MMAP_THRESHOLD, kMmapThreshold);
  // Each loop thread's buffers (read buffer, output, JSON parser) and, once
  // gzip is used, its inflate buffer, compressor and output buffer come on
  // top of what the process holds now (docs/architecture.md, "Memory accounting").
  constexpr uint64_t kPerThreadBuffers = 1 << 20;
  constexpr uint64_t kPerThreadGzip = 512 << 10;
  plan.overhead = resident_bytes() + config.threads * (kPerThreadBuffers + kPerThreadGzip);
  // The snapshot writer's one block buffer (the loader's is freed before serving).
  if (!config.snapshot_path.empty()) plan.overhead += kSnapshotBufferBytes;
  if (setup.tls) plan.overhead += TlsContext::kSessionCacheBytes;
  return plan;
}

// Everything that serves: the store, the budgets, /metrics, snapshots, the loops.
struct Server {
  Server(const Setup& setup, const MemoryPlan& plan)
      : buffers(plan.limit / kv::kBufferBudgetDivisor),
        store(setup.config.shards, kv::store_budget(plan.limit - buffers.limit(), plan.overhead), clock),
        api_metrics(kv::kApiMetrics, setup.config.threads),
        connection_metrics(kv::kConnectionMetrics, setup.config.threads),
        connection_gauge_metrics(kv::connection_gauges(buffers, setup.config.max_connections)),
        store_metrics(store),
        process_metrics(plan.limit),
        options(worker_options(setup.config)) {
    // Each module's declared metrics, strung together for /metrics (snapshots'
    // join in restore(), the process's own last).
    metrics.add(api_metrics);
    metrics.add(connection_metrics);
    metrics.add(connection_gauge_metrics);
    metrics.add(store_metrics);
    if (setup.tls) metrics.add(setup.tls->metrics());
  }

  kv::MonotonicClock clock;
  // Connection buffers get their own share of the limit, the store the rest.
  kv::BufferBudget buffers;
  kv::Store store;
  kv::WorkerCounters api_metrics;
  kv::WorkerCounters connection_metrics;
  kv::ComputedMetrics connection_gauge_metrics;
  kv::StoreMetrics store_metrics;
  kv::ProcessMetrics process_metrics;
  kv::Metrics metrics;
  std::unique_ptr<kv::Snapshotter> snapshots;
  const kv::WorkerOptions options;
  std::atomic<unsigned> open_connections{0};
  std::vector<std::unique_ptr<Loop>> loops;
  std::vector<std::thread> threads;
};

// Before listening: clients see the restored cache, or connection refused.
bool restore(const Setup& setup, Server& server) {
  const kv::Config& config = setup.config;
  if (!config.snapshot_path.empty()) {
    server.snapshots = std::make_unique<kv::Snapshotter>(server.store, snapshot_options(config), config.threads);
    server.metrics.add(server.snapshots->metrics());
    if (!server.snapshots->load()) return false;
  }
  server.metrics.add(server.process_metrics);
  return true;
}

// One loop per thread, each with its own listener and request handler.
kv::Result<void> listen(const Setup& setup, Server& server) {
  using namespace kv;
  for (unsigned i = 0; i < setup.config.threads; ++i) {
    auto& loop = *server.loops.emplace_back(std::make_unique<Loop>());
    loop.handler = std::make_unique<RequestHandler>(server.store, server.metrics,
                                                    ApiCounters(server.api_metrics.worker(i)), loop.date,
                                                    setup.tokens.get());
    loop.worker = std::make_unique<Worker>(i, server.options, *loop.handler, loop.date,
                                           ConnectionCounters(server.connection_metrics.worker(i)),
                                           server.open_connections, server.buffers, setup.tls.get());
    if (server.snapshots) {
      loop.handler->enable_snapshots(server.snapshots.get(), [w = loop.worker.get()] { w->wake_deferred(); });
    }
    if (Result<void> listening = loop.worker->listen(); !listening) return listening;
  }
  return {};
}

void log_start(const Setup& setup, const MemoryPlan& plan, const Server& server, rlim_t open_files) {
  using namespace kv;
  const Config& config = setup.config;
  log(LogLevel::info,
      "kvcache {} listening on {}:{} threads={} shards={} memory_limit={} ({}{}) store_budget={} "
      "connection_buffer_budget={} max_connections={} open_files={} read_timeout={}s idle_timeout={}s "
      "send_timeout={}s drain_timeout={}s snapshot_path={:?} snapshot_interval={}s snapshot_timeout={}s log_level={} auth={} tls={}",
      KVCACHE_VERSION, config.bind, config.port, config.threads, config.shards, plan.limit,
      config.memory_limit ? "flag" : "auto: 70% of ", config.memory_limit ? "" : plan.available.source,
      server.store.byte_budget(), server.buffers.limit(), config.max_connections, open_files, config.read_timeout,
      config.idle_timeout, config.send_timeout, config.drain_timeout, config.snapshot_path, config.snapshot_interval,
      config.snapshot_timeout, log_level_name(config.log_level),
      !setup.tokens                    ? "off"
      : config.auth_token_file.empty() ? "KVCACHE_AUTH_TOKEN"
                                       : "--auth-token-file " + config.auth_token_file,
      !setup.tls ? std::string("off")
                 : fmt::format("TLSv1.2+1.3 cert={} client_certificates={} kernel_tls={}", config.tls_cert,
                               config.tls_client_ca.empty() ? "off" : "required by " + config.tls_client_ca,
                               TlsContext::kernel_tls_available() ? "available" : "off (no tls module in this kernel)"));
}

// Until SIGTERM/SIGINT: the store's owner runs its bounded TTL sweep while it
// waits, more often while expired entries remain (each call holds a shard's
// lock for a few pages of chunks, about 100 entries a page, then lets go, so
// requests wait for one slice at most), and reloads on SIGHUP. Returns the
// stop signal.
int serve(const sigset_t& signals, const Setup& setup, Server& server) {
  using namespace kv;
  constexpr timespec kSweepInterval = {0, Store::kSweepIntervalMs * 1000 * 1000};
  constexpr timespec kSweepBacklogInterval = {0, Store::kSweepBacklogIntervalMs * 1000 * 1000};
  bool sweep_backlog = false;
  for (;;) {
    int signal_number = sigtimedwait(&signals, nullptr, sweep_backlog ? &kSweepBacklogInterval : &kSweepInterval);
    if (signal_number < 0) {
      sweep_backlog = server.store.sweep_expired(Store::kSweepPagesPerShard);  // a timeout (EAGAIN) or EINTR
    } else if (signal_number == SIGHUP) {
      reload_tokens(setup.config, setup.tokens.get());
      if (setup.tls) reload_tls(setup.config, *setup.tls);
    } else {
      return signal_number;
    }
  }
}

// Drains the loops, then writes the final snapshot. Returns the exit code.
int stop(int signal_number, const Setup& setup, Server& server) {
  using namespace kv;
  const Config& config = setup.config;
  log(LogLevel::info, "received {}: draining connections (up to {}s)", signal_number == SIGTERM ? "SIGTERM" : "SIGINT",
      config.drain_timeout);
  notify_service_manager("STOPPING=1");
  // A background snapshot still running is abandoned for the final one,
  // which sees every write the drained requests made; stopped first, so a
  // POST /snapshot waiting on it is answered and does not hold up the drain.
  if (server.snapshots) server.snapshots->stop();
  for (auto& loop : server.loops) loop->worker->stop();
  for (auto& thread : server.threads) thread.join();
  if (server.snapshots) {
    log(LogLevel::info, "writing the final snapshot (up to {}s)", config.snapshot_timeout);
    if (!server.snapshots->write_final()) {
      // Not a clean stop: what changed since the previous snapshot is lost.
      log(LogLevel::error, "stopped without the final snapshot: exit code {}", kExitFinalSnapshotFailed);
      return kExitFinalSnapshotFailed;
    }
  }
  log(LogLevel::info, "stopped");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const sigset_t signals = block_signals();
  Setup setup;
  if (std::optional<int> done = configure(argc, argv, setup)) return *done;
  const rlim_t open_files = raise_open_files_limit();
  const MemoryPlan plan = plan_memory(setup);
  Server server(setup, plan);
  if (!restore(setup, server)) return 2;
  if (kv::Result<void> listening = listen(setup, server); !listening) {
    kv::log(kv::LogLevel::error, "cannot listen: {}", listening.error());
    return 1;
  }
  log_start(setup, plan, server, open_files);
  for (auto& loop : server.loops) server.threads.emplace_back([worker = loop->worker.get()] { worker->run(); });
  if (server.snapshots) server.snapshots->start();
  // Every loop listens (connections queue in the kernel until it runs): ready.
  kv::notify_service_manager("READY=1");
  int signal_number = serve(signals, setup, server);
  return stop(signal_number, setup, server);
}

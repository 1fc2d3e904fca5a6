// One event loop thread: its own SO_REUSEPORT listener (listener.h), the
// connections it accepted, and the libevent glue that turns socket events
// into calls on each Connection (connection.h), whose state machine lives there.
#pragma once

#include "buffer_budget.h"
#include "config.h"
#include "connection.h"
#include "handlers.h"
#include "http_response.h"
#include "metrics.h"
#include "snapshot.h"
#include "store.h"

#include <atomic>
#include <string>

struct event_base;
struct event;

namespace kv {

class TlsContext;

// Monotonic time from the coarse clock (vDSO, no syscall): deadlines need no finer.
class CoarseClock final : public Clock {
 public:
  uint64_t now_ms() const override;
  double now() const override;
};

// What the workers count into, and the whole exposition (for GET /metrics).
struct WorkerMetrics {
  const Metrics& all;
  ApiMetrics& api;
  ConnectionMetrics& connections;
};

class Worker {
 public:
  // snapshots: null when --snapshot-path is not set; `tokens`: null when access
  // needs no token; `tls`: null when the listener speaks plain HTTP.
  Worker(unsigned index, const Config& config, Store& store, const WorkerMetrics& metrics,
         std::atomic<unsigned>& open_connections, BufferBudget& buffers, Snapshotter* snapshots,
         const TokenStore* tokens, TlsContext* tls);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Opens the listening socket; returns an error message on failure.
  std::string listen();
  // Runs the loop until stop() and the drain that follows are done.
  void run();
  // Thread-safe: stop accepting, finish in-flight requests, then return from run().
  void stop();

 private:
  class SocketIo;
  class TlsIo;
  friend class SocketIo;
  friend class TlsIo;
  static void on_accept(int fd, short events, void* arg);
  static void on_accept_pause_end(int fd, short events, void* arg);
  static void on_tick(int fd, short events, void* arg);
  static void on_stop(int fd, short events, void* arg);
  static void on_wake(int fd, short events, void* arg);

  void accept_pending();
  // Takes a closed connection off the open list; reap() frees it once the event that closed it is handled.
  void retire(SocketIo& io);
  void reap();

  const unsigned index_;
  const Config& config_;
  ConnectionCounters& counters_;
  std::atomic<unsigned>& open_connections_;
  TlsContext* const tls_;

  event_base* base_ = nullptr;
  int listen_fd_ = -1;
  int stop_fd_ = -1;  // eventfd written by stop()
  int wake_fd_ = -1;  // eventfd written by the snapshot thread when a POST /snapshot is done
  event* accept_event_ = nullptr;
  event* stop_event_ = nullptr;
  event* wake_event_ = nullptr;
  event* tick_event_ = nullptr;
  event* accept_pause_event_ = nullptr;  // re-enables accepting after EMFILE

  CoarseClock clock_;
  http::DateHeader date_;
  RequestHandler handler_;
  LoopContext loop_;
  SocketIo* open_ = nullptr;     // intrusive list of open connections
  SocketIo* retired_ = nullptr;  // closed, to be freed by reap()
  size_t open_count_ = 0;
};

}  // namespace kv

// One event loop thread: its own SO_REUSEPORT listener (listener.h), accept
// and admission, the connections it accepted (each a Transport: socket_io.h
// or tls_io.h, over the Connection whose state machine lives in
// connection.h), and freeing them once closed.
#pragma once

#include "buffer_budget.h"
#include "clock.h"
#include "connection.h"
#include "http_handler.h"
#include "http_response.h"
#include "result.h"
#include "transport.h"

#include <atomic>
#include <cstdint>
#include <string>

struct event_base;
struct event;

namespace kv {

class TlsContext;

// What a worker needs of the command line (filled by app/).
struct WorkerOptions {
  std::string bind = "0.0.0.0";
  uint16_t port = 7171;
  unsigned max_connections = 10000;  // over it, a new connection gets a 503
  double drain_timeout = 5.0;        // seconds a stop waits for in-flight requests
  ConnectionOptions connection;
};

class Worker final : private TransportOwner {
 public:
  // `handler` answers the requests (one per worker: it is used by this
  // loop's thread alone); `date` is the Date header it writes, refreshed by
  // the loop's tick; `counters`: this worker's; `tls`: null when the
  // listener speaks plain HTTP.
  Worker(unsigned index, const WorkerOptions& options, http::Handler& handler, http::DateHeader& date,
         ConnectionCounters counters, std::atomic<unsigned>& open_connections, BufferBudget& buffers,
         TlsContext* tls);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Opens the listening socket.
  Result<void> listen();
  // Runs the loop until stop() and the drain that follows are done.
  void run();
  // Thread-safe: stop accepting, finish in-flight requests, then return from run().
  void stop();
  // Thread-safe: the handler's deferred response is ready (http::Handler);
  // the loop hands it to the connection waiting for it.
  void wake_deferred();

 private:
  static void on_accept(int fd, short events, void* arg);
  static void on_accept_pause_end(int fd, short events, void* arg);
  static void on_tick(int fd, short events, void* arg);
  static void on_stop(int fd, short events, void* arg);
  static void on_wake(int fd, short events, void* arg);

  void accept_pending();
  // TransportOwner: takes a closed connection off the open list; reap()
  // frees it once the event that closed it is handled.
  void retire(Transport& io) override;
  void reap() override;
  // Delivers a deferred response that is ready and begins a requested stop
  // (from the eventfds' events and from the tick).
  void take_wake_ups();

  const unsigned index_;
  const WorkerOptions& options_;
  ConnectionCounters counters_;
  std::atomic<unsigned>& open_connections_;
  TlsContext* const tls_;

  event_base* base_ = nullptr;
  int listen_fd_ = -1;
  int stop_fd_ = -1;  // eventfd written by stop()
  int wake_fd_ = -1;  // eventfd written by wake_deferred()
  // Set before each eventfd is written, and looked at by the tick as well:
  // a failed eventfd write delays a wake-up by one tick, never loses it.
  std::atomic<bool> stop_requested_{false};
  std::atomic<bool> deferred_ready_{false};
  event* accept_event_ = nullptr;
  event* stop_event_ = nullptr;
  event* wake_event_ = nullptr;
  event* tick_event_ = nullptr;
  event* accept_pause_event_ = nullptr;  // re-enables accepting after EMFILE

  MonotonicClock clock_;
  http::DateHeader& date_;
  LoopContext loop_;
  Transport* open_ = nullptr;     // intrusive list of open connections
  Transport* retired_ = nullptr;  // closed, to be freed by reap()
  size_t open_count_ = 0;
};

}  // namespace kv

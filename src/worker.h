// One event loop thread: its own SO_REUSEPORT listener, the connections it
// accepted, and the HTTP/1.1 connection handling that feeds the parser.
#pragma once

#include "buffer_budget.h"
#include "config.h"
#include "handlers.h"
#include "http_response.h"
#include "metrics.h"
#include "snapshot.h"
#include "store.h"

#include <atomic>
#include <memory>
#include <string>

struct event_base;
struct event;

namespace kv {

struct Connection;

class Worker {
 public:
  // snapshots: null when --snapshot-path is not set; `tokens`: null when access needs no token.
  Worker(unsigned index, const Config& config, Store& store, Metrics& metrics,
         std::atomic<unsigned>& open_connections, BufferBudget& buffers, Snapshotter* snapshots,
         const TokenStore* tokens);
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
  friend struct Connection;
  static void on_accept(int fd, short events, void* arg);
  static void on_accept_pause_end(int fd, short events, void* arg);
  static void on_readable(int fd, short events, void* arg);
  static void on_writable(int fd, short events, void* arg);
  static void on_timer(int fd, short events, void* arg);
  static void on_tick(int fd, short events, void* arg);
  static void on_stop(int fd, short events, void* arg);
  static void on_wake(int fd, short events, void* arg);

  void accept_pending();
  // These return false when the connection was closed (and freed).
  bool read_from(Connection& c);
  // Answers the complete requests among the n bytes at the front of the read
  // buffer and keeps the rest for later.
  bool consume(Connection& c, size_t n);
  bool flush(Connection& c);
  // Parses and answers requests; returns the bytes they took.
  size_t process(Connection& c, size_t n);
  // While stopping: answers what the client has sent, or closes it if it has
  // nothing half-read and nothing left to send.
  void drain(Connection& c);
  // After the last response: lingering close (or close at once after the client's FIN).
  void finish(Connection& c);
  // Reads and drops what a lingering connection still sends; closes at its end or limit.
  void discard(Connection& c);
  // Brings the connection's charge to the buffer budget up to date.
  void recharge(Connection& c);
  // How much output a connection may hold before its requests wait.
  size_t output_allowance() const;
  // The earliest of the connection's deadlines (read, send, idle, linger).
  double next_deadline(const Connection& c) const;
  void schedule(Connection& c);
  void check_deadlines(Connection& c);
  void set_reading(Connection& c, bool on);
  void set_writing(Connection& c, bool on);
  void arm_timer(Connection& c, double seconds);
  void close(Connection& c);
  // Copies a connection's carried-over input to the front of the read buffer.
  size_t load_input(Connection& c);

  const unsigned index_;
  const Config& config_;
  WorkerMetrics& counters_;
  std::atomic<unsigned>& open_connections_;
  BufferBudget& buffers_;

  event_base* base_ = nullptr;
  int listen_fd_ = -1;
  int stop_fd_ = -1;  // eventfd written by stop()
  int wake_fd_ = -1;  // eventfd written by the snapshot thread when a POST /snapshot is done
  event* accept_event_ = nullptr;
  event* stop_event_ = nullptr;
  event* wake_event_ = nullptr;
  event* tick_event_ = nullptr;
  event* accept_pause_event_ = nullptr;  // re-enables accepting after EMFILE
  bool draining_ = false;

  http::DateHeader date_;
  RequestHandler handler_;
  std::unique_ptr<char[]> input_;       // read buffer shared by this loop's connections
  std::unique_ptr<char[]> chunked_body_;  // decoded chunked bodies
  std::string output_;                  // responses of the connection being served
  Connection* connections_ = nullptr;   // intrusive list of open connections
  Connection* deferred_ = nullptr;      // waiting for its POST /snapshot response
  size_t connection_count_ = 0;
  uint64_t batch_started_ns_ = 0;       // when the batch being answered was read
};

}  // namespace kv

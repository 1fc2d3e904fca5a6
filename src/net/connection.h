// One HTTP/1.1 connection's whole life, written once against ConnectionIo
// (connection_io.h) and an injected clock: read, frame and answer requests,
// decide when to flush, pause for a client that does not read (backpressure),
// answer what was sent before a client's FIN (half-close), close without
// losing a response (lingering close), the read, send and idle deadlines,
// drain on SIGTERM, the buffer budget, and waiting on a deferred response
// (POST /snapshot). It answers requests through http::Handler
// (http_handler.h) and knows nothing of the store or the endpoints. The worker (worker.cc) owns the event loop and turns its
// events into on_readable(), on_writable() and on_timer(); the unit tests do
// the same with a fake I/O and clock (tests/unit/connection_test.cc).
#pragma once

#include "buffer_budget.h"
#include "connection_io.h"
#include "http_framing.h"
#include "http_handler.h"
#include "metrics.h"

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace kv {

class Connection;

// Every request within the parser's limits fits in the read buffer, with room
// to spare for the bytes that show it is over them.
constexpr size_t kInputCapacity = http::kMaxRequestBytes + 16 * 1024;
// Stop reading a connection whose unsent responses exceed this; resume once drained.
constexpr size_t kOutputHighWater = 256 * 1024;
// While the connection buffer budget is spent, a connection may still hold
// this much: a response that fits is sent (a larger one gets a 503), and a
// read takes only the whole requests among the first this-many bytes. A
// connection whose input would grow (a partial request, in its buffer or
// still in the socket) is not read until its read timeout answers 408, so
// partial requests cannot grow past the budget; resuming them all when it has
// room again would only refill it at once.
constexpr size_t kBufferFloor = 16 * 1024;
// Lingering close, bounded by time only (as nginx's lingering_time and
// lingering_timeout): after the last response our side is shut down and what
// the client still sends is read and discarded, for at most kLingerTime in
// all and kLingerQuiet without anything arriving. Discarding costs CPU, not
// memory; a byte cap would close on a client that is still sending, and the
// kernel would then reset the connection and drop its unread responses.
constexpr double kLingerTime = 30.0;
constexpr double kLingerQuiet = 3.0;
// Carried-over input shrinks back to nothing once it has grown past this.
constexpr size_t kInputKeepCapacity = 4096;
// The loop's own output buffer is kept at this capacity: a batch stops past
// the high-water mark, so room for it and one more response. An outsized
// response (a large /mget) grows it; trim() shrinks it back.
constexpr size_t kOutputKeepCapacity = 2 * kOutputHighWater;
// Admission (LoopContext::make_room): a new connection whose transport holds
// memory (TLS) may close at most this many idle ones to make room for itself,
// as nginx closes up to 32 reusable connections when it runs short.
constexpr size_t kMaxIdleClosesPerAdmission = 32;
// New connections are admitted only into the budget's first 7/8: the rest
// stays for the buffers of connections in use (a response being sent, a
// request being read), so that a crowd of idle TLS connections does not
// leave every active one served under the spent budget's floor.
constexpr uint64_t kAdmissionHeadroomDivisor = 8;

// Upper bounds (seconds) of the request latency histogram buckets.
constexpr std::array<double, 12> kLatencyBuckets = {0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                                                    0.005,   0.01,   0.025,   0.05,   0.1,   0.25};

// The connection layer's metrics (declared in connection.cc): request
// latency, connections open, accepted, rejected, closed for room and refused,
// kept in WorkerCounters; and the buffer budget and --max-connections, read
// at scrape time (connection_gauges()).
extern const MetricTable kConnectionMetrics;
extern const MetricTable kConnectionGauges;

// One worker thread's row of the connection layer's WorkerCounters (written by it alone).
class ConnectionCounters {
 public:
  explicit ConnectionCounters(Counter* row) : row_(row) {}
  void observe_latency(uint64_t nanoseconds);
  // A connection opened (within --max-connections) and closed.
  void opened();
  void closed();
  void rejected();     // over --max-connections
  void idle_closed();  // an idle keep-alive connection closed to make room for a new one
  void refused();      // a new connection closed at accept: no room in the buffer budget
  // std::bad_alloc caught (kvcache_allocation_failures_total), by what gave way.
  enum class Memory : uint8_t {
    accept,      // a new connection could not be set up: closed at accept
    request,     // a request could not be served: answered 503
    connection,  // a connection's own buffers could not grow: closed
  };
  void allocation_failed(Memory stage);
  // A deadline that ended a wait (kvcache_timeouts_total), by kind.
  enum class Timeout : uint8_t {
    read,       // a request not complete within --read-timeout: 408
    idle,       // a keep-alive connection idle for --idle-timeout: closed
    send,       // a client that took nothing for --send-timeout: closed
    handshake,  // a TLS handshake not done within its deadline: closed
  };
  void timed_out(Timeout kind);

 private:
  Counter* row_;
};

// kConnectionGauges' values, read when scraped.
ComputedMetrics connection_gauges(const BufferBudget& buffers, unsigned max_connections);

// A connection's deadlines (--read-timeout, --idle-timeout, --send-timeout),
// in seconds; filled by app/.
struct ConnectionOptions {
  double read_timeout = 2.0;    // a request begun must be complete within this
  double idle_timeout = 120.0;  // a keep-alive connection with nothing to do
  double send_timeout = 30.0;   // without send progress while output is pending
};

// What a loop's connections share: the read buffer, the responses of the
// batch being answered, the chunked-body buffer, the request handler, the
// deferred-response slot. One per worker thread (or per unit test).
struct LoopContext {
  LoopContext(const ConnectionOptions& options, const Clock& clock, BufferBudget& buffers,
              ConnectionCounters counters, http::Handler& handler);

  // The response of the deferred request is ready: it goes to the connection
  // waiting for it (`deferred`), if that is still open; else it is dropped.
  void deliver_deferred();
  // Admission of a new connection whose transport will hold `bytes` (TLS
  // state, handshake included) charged to the buffer budget: while the
  // budget's admission share cannot pay for it, closes the loop's longest-idle keep-alive
  // connections that hold budget memory (at most kMaxIdleClosesPerAdmission).
  // Returns whether it can pay now; if not, the caller refuses the connection.
  bool make_room(size_t bytes);
  // Gives back what an outsized response grew (here and in the handler): the
  // memory limit sets aside only the usual sizes a thread. Called now and
  // then (the worker's tick), so a burst of them does not reallocate each time.
  void trim();

  const ConnectionOptions& options;
  const Clock& clock;
  BufferBudget& buffers;
  ConnectionCounters counters;
  http::Handler& handler;
  std::unique_ptr<char[]> input;         // read buffer (kInputCapacity and the JSON parser's padding)
  std::unique_ptr<char[]> chunked_body;  // decoded chunked bodies
  std::string output;                    // responses of the connection being served
  Connection* deferred = nullptr;        // waiting for its deferred response
  bool draining = false;                 // stopping: answer what was sent, then close
  // Idle keep-alive connections holding budget memory, longest idle first
  // (intrusive, through Connection::idle_older_/idle_newer_): make_room's victims.
  Connection* idle_oldest = nullptr;
  Connection* idle_newest = nullptr;
  uint64_t batch_started_ns = 0;         // when the batch being answered was read (clock.now_ns())
};

class Connection {
 public:
  // Where a connection is in its life. Every change goes through enter(),
  // which holds the table of allowed transitions (kTransitions, connection.cc):
  //   reading   -> starved, waiting, closing, closed
  //   starved   -> closing, closed              (not read again: its read timeout answers 408)
  //   waiting   -> reading, closing, closed     (the deferred response came, or it left)
  //   closing   -> lingering, closed            (the last response is sent)
  //   lingering -> closed
  enum class Phase : uint8_t {
    reading,    // reads requests and answers them
    starved,    // its input would grow while the buffer budget is spent: not read until its read timeout
    waiting,    // for a deferred response: nothing more is answered until it comes
    closing,    // the last response is queued: close once it is sent
    lingering,  // our side is shut down; discarding what still arrives, for a bounded time
    closed,
  };

  // Whether enter() allows going from one phase to the other.
  static bool transition_allowed(Phase from, Phase to);

  Connection(LoopContext& loop, ConnectionIo& io);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // A new connection: read requests (and start the idle timer).
  void start();
  // A connection over --max-connections: a 503, then closed like any final response.
  void start_rejected();

  // Events from the loop. After any of them the connection may be closed().
  // None throws: a request that fails to allocate is answered 503 (with
  // Retry-After), a connection whose own buffers cannot grow is closed, and
  // either is counted; the loop and the other connections go on.
  void on_readable();
  void on_writable();
  void on_timer();
  // Stopping (SIGTERM): answer what the client has sent with
  // "Connection: close", or close at once if it has nothing half-read and
  // nothing left to send.
  void drain();
  // Closes now (the server is going away).
  void close();
  // Closes an idle keep-alive connection to make room for a new one (RFC
  // 9112 9.6 allows it at any time; clients retry on a new connection):
  // close_notify and FIN first, so the client sees a clean close, not a reset.
  void close_idle();
  // The response it waited for (waiting()) is in the loop's output: send it,
  // then answer what came in behind it.
  void complete_deferred();
  // std::bad_alloc escaped an event (or the deferred response could not be
  // written): close, count, give the buffers back.
  void out_of_memory();

  Phase phase() const { return phase_; }
  bool closed() const { return phase_ == Phase::closed; }
  // For tests and the worker's bookkeeping.
  bool lingering() const { return phase_ == Phase::lingering; }
  bool waiting() const { return phase_ == Phase::waiting; }
  // The client has shut down its sending side (its FIN): no more requests.
  bool peer_closed() const { return peer_closed_; }
  bool reading() const { return reading_; }
  bool writing() const { return writing_; }
  size_t carried_input() const { return input_.size(); }
  size_t pending_output() const { return output_.size(); }
  size_t charged() const { return charged_; }
  // Waiting for its next request with nothing read, unsent or in progress in
  // its transport, and holding budget memory: make_room may close it.
  bool idle() const { return idle_listed_; }

 private:
  // The one place the phase changes (a debug build checks the transition).
  void enter(Phase next);
  // No request is answered after the ones already answered: closing, or,
  // while waiting, once the deferred response is sent.
  void close_after();
  // The last response is queued (closing, or waiting for it).
  bool last_queued() const { return phase_ == Phase::closing || (phase_ == Phase::waiting && close_after_wait_); }
  // What a step leaves: the connection goes on serving, or it is done with
  // (closed, or lingering after its last response): the caller stops.
  enum class Next : bool { serve, done };
  Next read();
  // Of the `size` bytes at the front of the read buffer, how many whole
  // requests take (all of them if they end in an error, which closes).
  size_t whole_requests(size_t size) const;
  // Stops reading while the budget is spent.
  Next starve();
  // Answers the complete requests among the n bytes at the front of the read
  // buffer and keeps the rest for later.
  Next consume(size_t n);
  // Parses and answers requests; returns the bytes they took.
  size_t process(size_t n);
  Next flush();
  // After the last response: lingering close (or close at once after the client's FIN).
  void finish();
  // Reads and drops what a lingering connection still sends.
  void discard();
  // After a deferred response or a drained backlog: answer what came in behind it.
  void resume();
  // Brings the connection's charge to the buffer budget up to date.
  void recharge();
  // At the end of every event: the charge, and the connection's place among
  // the loop's idle ones (the newest end each time it was active).
  void settle();
  bool reapable() const;
  void unlist_idle();
  size_t output_allowance() const;
  // The earliest of the connection's deadlines (read, send, idle, linger).
  double next_deadline() const;
  void schedule();
  // on_timer: acts on the deadline that has passed, if any.
  void check_deadlines();
  void set_reading(bool on);
  void set_writing(bool on);
  // The target of the partial request carried over, once its request line is
  // whole (the 408 is then counted under its endpoint); empty before that.
  std::string_view partial_target() const;
  // Copies the carried-over input to the front of the read buffer; returns its size.
  size_t load_input();

  LoopContext& loop_;
  ConnectionIo& io_;
  std::string input_;         // unparsed bytes of a request still arriving
  std::string output_;        // response bytes the socket has not taken yet
  http::FrameState framing_;  // of the request at the front of input_
  double request_started_ = 0;  // 0: no partial request
  double last_active_ = 0;
  double last_sent_ = 0;        // last send progress while output is pending (--send-timeout)
  double linger_until_ = 0;     // lingering: close by then at the latest
  double linger_quiet_until_ = 0;  // lingering: close by then unless something arrives
  double idle_since_ = 0;       // last_active_ when it was listed idle
  Connection* idle_older_ = nullptr;  // LoopContext's idle list, while idle_listed_
  Connection* idle_newer_ = nullptr;
  size_t charged_ = 0;          // bytes of input + output + I/O state charged to the buffer budget
  Phase phase_ = Phase::reading;
  // The facts orthogonal to the phase:
  bool peer_closed_ = false;       // the client shut down its sending side
  bool close_after_wait_ = false;  // waiting: the deferred response is the last one
  bool reading_ = false;           // read interest, as last given to the I/O
  bool writing_ = false;           // write interest, as last given to the I/O
  bool idle_listed_ = false;       // in the loop's idle list
};

}  // namespace kv

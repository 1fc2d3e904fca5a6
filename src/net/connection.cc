#include "connection.h"

#include <fmt/format.h>

#include <algorithm>
#include <cassert>
#include <new>
#include <cstring>
#include <iterator>
#include <utility>

namespace kv {
namespace {

using Phase = Connection::Phase;
constexpr size_t kPhases = 6;
// kTransitions[from][to]: the changes of phase Connection::enter allows.
constexpr bool kTransitions[kPhases][kPhases] = {
    //             reading starved waiting closing lingering closed
    /* reading   */ {false, true, true, true, false, true},
    /* starved   */ {false, false, false, true, false, true},
    /* waiting   */ {true, false, false, true, false, true},
    /* closing   */ {false, false, false, false, true, true},
    /* lingering */ {false, false, false, false, false, true},
    /* closed    */ {false, false, false, false, false, false},
};

// An empty std::string holds no heap memory (its inline capacity is not charged).
size_t held(const std::string& s) {
  static const size_t inline_capacity = std::string().capacity();
  return s.capacity() > inline_capacity ? s.capacity() : 0;
}

}  // namespace

namespace {

constexpr uint64_t kNanosPerSecond = 1000000000;

// In ConnectionCounters::Memory's order.
constexpr std::string_view kAllocationStages[] = {"accept", "request", "connection"};
constexpr MetricLabel kAllocationLabels[] = {label<kAllocationStages>("stage")};
// In ConnectionCounters::Timeout's order.
constexpr std::string_view kTimeoutKinds[] = {"read", "idle", "send", "handshake"};
constexpr MetricLabel kTimeoutLabels[] = {label<kTimeoutKinds>("kind")};

constexpr MetricDecl kConnectionMetricDecls[] = {
    {"kvcache_request_duration_seconds", MetricType::histogram,
     "Time from reading a request to its response being ready, in the server.", {}, kLatencyBuckets, kNanosPerSecond},
    {"kvcache_connections_open", MetricType::gauge, "Client connections currently open."},
    {"kvcache_connections_total", MetricType::counter, "Client connections accepted."},
    {"kvcache_connections_rejected_total", MetricType::counter, "Connections refused over --max-connections."},
    {"kvcache_connections_idle_closed_total", MetricType::counter,
     "Idle keep-alive connections closed to make room in the connection buffer budget for a new one."},
    {"kvcache_connections_refused_total", MetricType::counter,
     "New connections closed at accept: the connection buffer budget could not pay for their TLS state."},
    {"kvcache_allocation_failures_total", MetricType::counter,
     "Allocations that failed (std::bad_alloc) in the loops, by what gave way: a new connection (closed at accept), "
     "a request (answered 503), a connection's buffers (closed).",
     kAllocationLabels},
    {"kvcache_timeouts_total", MetricType::counter,
     "Deadlines that ended a wait, by kind: read (a request not complete within --read-timeout: 408), idle "
     "(--idle-timeout), send (a client that took nothing for --send-timeout), handshake (a TLS handshake).",
     kTimeoutLabels},
};
constexpr MetricTable kConnectionDecls(kConnectionMetricDecls);
constexpr size_t kLatencySlot = slot_of(kConnectionDecls, "kvcache_request_duration_seconds");
constexpr size_t kLatencySumSlot = kLatencySlot + kLatencyBuckets.size() + 1;
constexpr size_t kOpenSlot = slot_of(kConnectionDecls, "kvcache_connections_open");
constexpr size_t kAcceptedSlot = slot_of(kConnectionDecls, "kvcache_connections_total");
constexpr size_t kRejectedSlot = slot_of(kConnectionDecls, "kvcache_connections_rejected_total");
constexpr size_t kIdleClosedSlot = slot_of(kConnectionDecls, "kvcache_connections_idle_closed_total");
constexpr size_t kRefusedSlot = slot_of(kConnectionDecls, "kvcache_connections_refused_total");
constexpr size_t kAllocationSlot = slot_of(kConnectionDecls, "kvcache_allocation_failures_total");
constexpr size_t kTimeoutSlot = slot_of(kConnectionDecls, "kvcache_timeouts_total");

constexpr MetricDecl kConnectionGaugeDecls[] = {
    {"kvcache_connection_buffer_budget_bytes", MetricType::gauge,
     "The part of the memory limit for connection input and output buffers."},
    {"kvcache_connection_buffer_bytes", MetricType::gauge,
     "Bytes held in connection buffers (input carried over, output not yet sent)."},
    {"kvcache_connections_max", MetricType::gauge, "--max-connections: open connections allowed."},
};

}  // namespace

const MetricTable kConnectionMetrics = kConnectionDecls;
const MetricTable kConnectionGauges(kConnectionGaugeDecls);

void ConnectionCounters::observe_latency(uint64_t nanoseconds) {
  size_t bucket = 0;
  while (bucket < kLatencyBuckets.size() && nanoseconds > kLatencyBuckets[bucket] * 1e9) ++bucket;
  row_[kLatencySlot + bucket].add();
  row_[kLatencySumSlot].add(nanoseconds);
}

void ConnectionCounters::opened() {
  row_[kAcceptedSlot].add();
  row_[kOpenSlot].add();
}

void ConnectionCounters::closed() { row_[kOpenSlot].sub(); }
void ConnectionCounters::rejected() { row_[kRejectedSlot].add(); }
void ConnectionCounters::idle_closed() { row_[kIdleClosedSlot].add(); }
void ConnectionCounters::refused() { row_[kRefusedSlot].add(); }
void ConnectionCounters::allocation_failed(Memory stage) { row_[kAllocationSlot + static_cast<size_t>(stage)].add(); }
void ConnectionCounters::timed_out(Timeout kind) { row_[kTimeoutSlot + static_cast<size_t>(kind)].add(); }

ComputedMetrics connection_gauges(const BufferBudget& buffers, unsigned max_connections) {
  return ComputedMetrics(kConnectionGauges, [&buffers, max_connections](std::span<uint64_t> values) {
    values[0] = buffers.limit();
    values[1] = buffers.used();
    values[2] = max_connections;
  });
}

LoopContext::LoopContext(const ConnectionOptions& options, const Clock& clock, BufferBudget& buffers,
                         ConnectionCounters counters, http::Handler& handler)
    : options(options),
      clock(clock),
      buffers(buffers),
      counters(counters),
      handler(handler),
      // The padding lets a JSON parser read past a body in place.
      input(new char[kInputCapacity + http::kBodyPadding]),
      chunked_body(new char[http::kMaxBodyBytes + http::kBodyPadding]) {
  output.reserve(kOutputKeepCapacity);
}

void LoopContext::deliver_deferred() {
  Connection* c = std::exchange(deferred, nullptr);
  try {
    handler.complete_deferred(output);
  } catch (const std::bad_alloc&) {
    // The answer could not be written: its client is closed, as any whose buffers cannot grow.
    output.clear();
    if (c != nullptr) c->out_of_memory();
    return;
  }
  if (c == nullptr) {
    output.clear();  // the client left before its answer
    return;
  }
  c->complete_deferred();
}

bool LoopContext::make_room(size_t bytes) {
  const uint64_t share = buffers.limit() - buffers.limit() / kAdmissionHeadroomDivisor;
  auto fits = [&] { return buffers.used() + bytes <= share; };
  for (size_t closes = 0; !fits() && idle_oldest != nullptr && closes < kMaxIdleClosesPerAdmission; ++closes) {
    idle_oldest->close_idle();
    counters.idle_closed();
  }
  return fits();
}

void LoopContext::trim() {
  try {
    if (output.capacity() > kOutputKeepCapacity && output.empty()) {
      std::string usual;
      usual.reserve(kOutputKeepCapacity);
      output.swap(usual);
    }
    handler.trim();
  } catch (const std::bad_alloc&) {
    // The smaller buffer could not be had: keep the larger one until the next try.
  }
}

Connection::Connection(LoopContext& loop, ConnectionIo& io) : loop_(loop), io_(io) {}

bool Connection::transition_allowed(Phase from, Phase to) {
  return kTransitions[static_cast<size_t>(from)][static_cast<size_t>(to)];
}

void Connection::enter(Phase next) {
  assert(transition_allowed(phase_, next));
  phase_ = next;
}

void Connection::close_after() {
  if (phase_ == Phase::waiting) {
    close_after_wait_ = true;
  } else if (phase_ != Phase::closing) {
    enter(Phase::closing);
  }
}

Connection::~Connection() { close(); }

void Connection::start() {
  last_active_ = loop_.clock.now();
  set_reading(true);
  io_.arm_timer(loop_.options.idle_timeout);
  settle();  // a TLS connection's handshake state is charged from the start
}

void Connection::start_rejected() {
  last_active_ = loop_.clock.now();
  loop_.handler.reject(503, "too many connections", loop_.output, http::Method::other, http::kRetryAfter);
  enter(Phase::closing);
  flush();  // arms the send timeout if the client does not take it at once
  settle();
}

void Connection::close() {
  if (phase_ == Phase::closed) return;
  enter(Phase::closed);
  unlist_idle();
  io_.close();
  if (loop_.deferred == this) loop_.deferred = nullptr;
  loop_.buffers.recharge(charged_, 0);
  charged_ = 0;
}

void Connection::close_idle() {
  io_.shutdown_write();
  close();
}

void Connection::complete_deferred() {
  if (phase_ != Phase::waiting) return;
  enter(close_after_wait_ ? Phase::closing : Phase::reading);
  close_after_wait_ = false;
  try {
    resume();
  } catch (const std::bad_alloc&) {
    return out_of_memory();
  }
  settle();
}

void Connection::set_reading(bool on) {
  if (reading_ == on) return;
  reading_ = on;
  io_.want_read(on);
}

void Connection::set_writing(bool on) {
  if (writing_ == on) return;
  writing_ = on;
  io_.want_write(on);
}

size_t Connection::load_input() {
  size_t n = input_.size();
  std::memcpy(loop_.input.get(), input_.data(), n);
  return n;
}

void Connection::recharge() {
  size_t now = held(input_) + held(output_) + io_.held_bytes();
  if (now == charged_) return;
  loop_.buffers.recharge(charged_, now);
  charged_ = now;
}

bool Connection::reapable() const {
  return charged_ > 0 && phase_ == Phase::reading && reading_ && !peer_closed_ && input_.empty() &&
         output_.empty() && request_started_ == 0 && !io_.busy();
}

void Connection::settle() {
  if (phase_ == Phase::closed) return;
  recharge();
  if (!reapable()) return unlist_idle();
  if (idle_listed_ && idle_since_ == last_active_) return;
  // Active since it was listed (or newly idle): it goes to the newest end,
  // so the list stays in order of last activity.
  unlist_idle();
  idle_since_ = last_active_;
  idle_older_ = loop_.idle_newest;
  (loop_.idle_newest != nullptr ? loop_.idle_newest->idle_newer_ : loop_.idle_oldest) = this;
  loop_.idle_newest = this;
  idle_listed_ = true;
}

void Connection::unlist_idle() {
  if (!idle_listed_) return;
  (idle_older_ != nullptr ? idle_older_->idle_newer_ : loop_.idle_oldest) = idle_newer_;
  (idle_newer_ != nullptr ? idle_newer_->idle_older_ : loop_.idle_newest) = idle_older_;
  idle_older_ = idle_newer_ = nullptr;
  idle_listed_ = false;
}

size_t Connection::output_allowance() const { return loop_.buffers.spent() ? kBufferFloor : kOutputHighWater; }

void Connection::on_readable() {
  if (phase_ == Phase::closed) return;
  try {
    phase_ == Phase::lingering ? discard() : (void)read();
  } catch (const std::bad_alloc&) {
    return out_of_memory();
  }
  settle();
}

void Connection::out_of_memory() {
  loop_.output.clear();  // this connection's unsent part, if any: the loop's buffer keeps its capacity
  loop_.counters.allocation_failed(ConnectionCounters::Memory::connection);
  close();
}

Connection::Next Connection::read() {
  size_t n = load_input();
  if (n == kInputCapacity) {
    // Unreachable while the parser enforces its limits; never read zero bytes and call it EOF.
    loop_.handler.reject(413, "request too large", loop_.output);
    close_after();
    input_.clear();
    return flush();
  }
  size_t room = kInputCapacity - n;
  if (loop_.buffers.spent()) {
    // The budget is spent: no connection's input may grow. Take only whole
    // requests (a look first, at most kBufferFloor); a partial one waits in
    // the socket, unread, until its read timeout answers 408.
    if (n > 0) return starve();
    IoResult seen = io_.peek(loop_.input.get(), kBufferFloor);
    if (seen.kind == IoResult::would_block) return Next::serve;
    if (seen.kind == IoResult::ok) {
      room = whole_requests(seen.bytes);
      if (room == 0) return starve();
    }
  }
  IoResult got = io_.recv(loop_.input.get() + n, room);
  size_t bytes = 0;
  switch (got.kind) {
    case IoResult::would_block: return Next::serve;
    case IoResult::error: close(); return Next::done;
    case IoResult::eof:
      // The client will send no more: answer what it sent, then close.
      peer_closed_ = true;
      set_reading(false);
      break;
    case IoResult::ok: bytes = got.bytes; break;
  }
  last_active_ = loop_.clock.now();
  return consume(n + bytes);
}

size_t Connection::whole_requests(size_t size) const {
  http::FrameState scan;
  size_t whole = 0;
  while (whole < size) {
    http::Request request;
    http::Frame frame = http::frame_request(loop_.input.get() + whole, size - whole, scan, request,
                                            loop_.chunked_body.get());
    if (frame.status == http::Status::incomplete) break;
    if (frame.status == http::Status::error) return size;  // answered, then closed: nothing is carried
    whole += frame.consumed;
  }
  return whole;
}

Connection::Next Connection::starve() {
  if (phase_ == Phase::reading) enter(Phase::starved);
  set_reading(false);
  // The request has begun, if only in the socket: its read timeout runs.
  if (request_started_ == 0) request_started_ = loop_.clock.now();
  schedule();
  return Next::serve;
}

Connection::Next Connection::consume(size_t n) {
  loop_.batch_started_ns = loop_.clock.now_ns();
  for (;;) {
    size_t used = process(n);
    bool held_back = !last_queued() && used < n &&
                     (phase_ == Phase::waiting || output_.size() + loop_.output.size() >= output_allowance());
    // A FIN means no more requests, not "forget the ones you have": close once
    // every complete request is answered (a partial one can never complete).
    if (peer_closed_ && !held_back) close_after();
    if (last_queued() || used == n) {
      input_.clear();
      if (input_.capacity() > kInputKeepCapacity) std::string().swap(input_);  // idle connections hold no big buffers
      request_started_ = 0;
    } else if (held_back) {
      // Whole requests waiting for the client to read (or for the deferred
      // response): the idle and send timeouts cover a client that never
      // reads, not the read timeout.
      input_.assign(loop_.input.get() + used, n - used);
      request_started_ = 0;
    } else {
      input_.assign(loop_.input.get() + used, n - used);
      if (used > 0 || request_started_ == 0) {
        // A request has begun: it must be complete within the read timeout.
        request_started_ = loop_.clock.now();
        schedule();
      }
    }
    if (flush() == Next::done) return Next::done;
    // Requests held back by a backlog the socket has now taken: answer them too.
    if (!held_back || !output_.empty() || phase_ == Phase::waiting) return Next::serve;
    n = load_input();
  }
}

size_t Connection::process(size_t n) {
  const char* in = loop_.input.get();
  size_t pos = 0;
  const size_t allowance = output_allowance();
  // While the budget is spent, a body larger than the floor gets a 503 instead.
  const size_t body_limit = allowance == kBufferFloor ? kBufferFloor : SIZE_MAX;
  std::string& out = loop_.output;
  while (phase_ == Phase::reading && pos < n && output_.size() + out.size() < allowance) {
    http::Request request;
    http::Frame frame = http::frame_request(in + pos, n - pos, framing_, request, loop_.chunked_body.get());
    if (frame.status == http::Status::incomplete) {
      if (frame.send_continue) out += http::kContinueResponse;
      break;
    }
    if (frame.status == http::Status::error) {
      loop_.handler.reject(frame.error.code, frame.error.message, out, request.method);
      enter(Phase::closing);
      break;
    }
    bool keep_alive = request.keep_alive && !loop_.draining;
    http::ConnectionMode mode = !keep_alive    ? http::ConnectionMode::close
                                : request.http10 ? http::ConnectionMode::keep_alive_explicit
                                                 : http::ConnectionMode::keep_alive;
    size_t response_start = out.size();
    http::Handled handled = http::Handled::answered;
    try {
      handled = loop_.handler.handle(request, frame.body, mode, out, body_limit);
    } catch (const std::bad_alloc&) {
      // This request failed, not the server: a 503 in its place, and on to the next.
      loop_.counters.allocation_failed(ConnectionCounters::Memory::request);
      loop_.handler.out_of_memory(out, response_start, mode, request.method);
    }
    pos += frame.consumed;
    if (handled == http::Handled::deferred) {
      // Answered by LoopContext::deliver_deferred when it is ready; the
      // requests behind it wait, as responses go out in order.
      enter(Phase::waiting);
      close_after_wait_ = !keep_alive;
      loop_.deferred = this;
      break;
    }
    if (!keep_alive) enter(Phase::closing);
    loop_.counters.observe_latency(loop_.clock.now_ns() - loop_.batch_started_ns);
  }
  return pos;
}

Connection::Next Connection::flush() {
  std::string& out = loop_.output;
  bool was_pending = !output_.empty();
  if (!out.empty() || was_pending) {
    std::string& pending = was_pending ? output_.append(out) : out;
    IoResult sent = io_.send(pending.data(), pending.size());
    if (sent.kind == IoResult::error) {
      out.clear();
      close();
      return Next::done;
    }
    size_t done = sent.kind == IoResult::ok ? sent.bytes : 0;
    if (done > 0) last_active_ = last_sent_ = loop_.clock.now();
    if (&pending == &out) {
      if (done < out.size()) output_.assign(out, done);
    } else {
      output_.erase(0, done);
      // A drained backlog gives its memory back: idle connections hold no buffers.
      if (output_.empty()) std::string().swap(output_);
    }
    out.clear();
  }
  bool backlog = !output_.empty();
  recharge();
  set_writing(backlog);
  if (!backlog && phase_ == Phase::closing) {
    finish();
    return Next::done;
  }
  if (backlog && !was_pending) {
    last_sent_ = loop_.clock.now();  // --send-timeout counts from here
    schedule();
  }
  // Pause reading while the client is not taking its responses.
  set_reading(phase_ == Phase::reading && !peer_closed_ && output_.size() < output_allowance());
  return Next::serve;
}

void Connection::finish() {
  // After the client's FIN nothing is left unread that could make the kernel reset.
  if (peer_closed_) return close();
  // Closing with unread input makes Linux send RST and drop what it has not
  // sent yet, the last responses included. Send FIN instead, then read and
  // discard for a bounded time before closing.
  io_.shutdown_write();
  enter(Phase::lingering);
  double now = loop_.clock.now();
  linger_until_ = now + kLingerTime;
  linger_quiet_until_ = now + kLingerQuiet;
  std::string().swap(input_);
  recharge();
  set_writing(false);
  set_reading(true);
  schedule();
}

void Connection::discard() {
  IoResult got = io_.recv(loop_.input.get(), kInputCapacity);
  if (got.kind == IoResult::would_block) return;
  if (got.kind == IoResult::ok) {
    // The timer, when it fires, finds the later deadline and waits on.
    linger_quiet_until_ = std::min(loop_.clock.now() + kLingerQuiet, linger_until_);
    return;
  }
  close();  // the client closed, or the connection failed
}

void Connection::on_writable() {
  if (phase_ == Phase::closed) return;
  try {
    resume();
  } catch (const std::bad_alloc&) {
    return out_of_memory();
  }
  settle();
}

void Connection::resume() {
  if (flush() == Next::done || !output_.empty()) return;
  // Once drained, answer requests that were already read but held back.
  if (!last_queued() && !input_.empty() && consume(load_input()) == Next::done) return;
  if (loop_.draining) drain();
}

void Connection::drain() {
  // Output still queued: resume() calls this again once it is sent.
  if ((phase_ != Phase::reading && phase_ != Phase::starved) || !output_.empty()) return;
  // One look at what the client has sent: a request is answered with "Connection: close".
  try {
    if (input_.empty() && read() == Next::done) return;
  } catch (const std::bad_alloc&) {
    return out_of_memory();
  }
  if (input_.empty() && output_.empty() && !last_queued()) close();
  settle();
}

double Connection::next_deadline() const {
  if (phase_ == Phase::lingering) return std::min(linger_until_, linger_quiet_until_);
  double next = last_active_ + loop_.options.idle_timeout;
  if (!output_.empty()) next = std::min(next, last_sent_ + loop_.options.send_timeout);
  if (request_started_ != 0) next = std::min(next, request_started_ + loop_.options.read_timeout);
  return next;
}

void Connection::schedule() {
  io_.arm_timer(next_deadline() - loop_.clock.now());
}

void Connection::on_timer() {
  if (phase_ == Phase::closed) return;
  try {
    check_deadlines();
  } catch (const std::bad_alloc&) {
    return out_of_memory();
  }
  settle();
}

void Connection::check_deadlines() {
  double now = loop_.clock.now();
  // A connection waiting on a deferred response obeys these deadlines too:
  // its client may stop reading (send), or the wait may outlast the idle timeout.
  if (now < next_deadline()) return schedule();
  if (phase_ == Phase::lingering || (!output_.empty() && now >= last_sent_ + loop_.options.send_timeout)) {
    // Lingered long enough, or the client took nothing for --send-timeout:
    // what it holds goes back to the buffer budget.
    if (phase_ != Phase::lingering) loop_.counters.timed_out(ConnectionCounters::Timeout::send);
    return close();
  }
  if (request_started_ != 0 && now >= request_started_ + loop_.options.read_timeout) {
    loop_.counters.timed_out(ConnectionCounters::Timeout::read);
    loop_.handler.reject(408, "request timeout", loop_.output, http::Method::other, {}, partial_target());
    close_after();
    input_.clear();
    request_started_ = 0;
    // A client that does not read even this is dropped at the send timeout.
    if (flush() == Next::serve) schedule();
    return;
  }
  loop_.counters.timed_out(ConnectionCounters::Timeout::idle);
  close();  // idle
}

std::string_view Connection::partial_target() const {
  std::string_view in = input_;
  std::string_view line = in.substr(0, in.find('\n'));
  if (line.size() == in.size()) return {};  // no whole request line yet
  size_t start = line.find(' ');
  if (start == std::string_view::npos) return {};
  size_t end = line.find(' ', start + 1);
  if (end == std::string_view::npos) return {};
  return line.substr(start + 1, end - start - 1);
}

}  // namespace kv

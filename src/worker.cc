#include "worker.h"

#include "http_framing.h"
#include "log.h"
#include "request_body.h"

#include <arpa/inet.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cmath>
#include <cstring>
#include <ctime>

namespace kv {
namespace {

// Every request within the parser's limits fits, with room to spare for the
// bytes that show it is over them; the padding lets simdjson read past a body in place.
constexpr size_t kInputCapacity = http::kMaxRequestBytes + 16 * 1024;
constexpr size_t kInputAllocation = kInputCapacity + RequestBodyDecoder::kPadding;
constexpr timeval kTickInterval = {0, 100 * 1000};  // the cached Date: header is refreshed this often
constexpr timeval kAcceptPause = {0, 100 * 1000};   // after EMFILE/ENFILE
constexpr double kMinTimer = 0.001;                 // libevent timers below a millisecond fire at once
constexpr uint64_t kNanosPerSecond = 1000000000;
// Stop reading a connection whose unsent responses exceed this; resume once drained.
constexpr size_t kOutputHighWater = 256 * 1024;
// While the connection buffer budget is spent, a connection may still hold
// this much: a response that fits is sent (a larger one gets a 503), input is
// read this much at a time. A well-behaved client is served meanwhile.
constexpr size_t kBufferFloor = 16 * 1024;
// Lingering close (as nginx's): after the last response, read and discard
// what the client still sends for at most this long and this many bytes.
constexpr double kLingerSeconds = 3.0;
constexpr size_t kLingerBytes = 256 * 1024;
// Carried-over input shrinks back to nothing once it has grown past this.
constexpr size_t kInputKeepCapacity = 4096;
constexpr int kAcceptsPerEvent = 64;

uint64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);  // vDSO
  return static_cast<uint64_t>(ts.tv_sec) * kNanosPerSecond + static_cast<uint64_t>(ts.tv_nsec);
}

double now_seconds() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return static_cast<double>(ts.tv_sec) + ts.tv_nsec * 1e-9;
}

timeval to_timeval(double seconds) {
  if (seconds < kMinTimer) seconds = kMinTimer;
  double whole = std::floor(seconds);
  return {static_cast<time_t>(whole), static_cast<suseconds_t>((seconds - whole) * 1e6)};
}

}  // namespace

struct Connection {
  Worker* worker;
  int fd;
  event read_event;
  event write_event;
  event timer;
  std::string input;   // unparsed bytes of a request still arriving
  std::string output;  // response bytes the socket has not taken yet
  http::FrameState framing;  // of the request at the front of `input`
  double request_started = 0;  // 0: no partial request
  double last_active = 0;
  double last_sent = 0;      // last send progress while output is pending (--send-timeout)
  double linger_until = 0;   // lingering: close by then at the latest
  size_t lingered = 0;       // lingering: bytes read and discarded
  size_t charged = 0;        // bytes of input + output charged to the buffer budget
  bool closing = false;      // close as soon as output is flushed
  bool lingering = false;    // our side is shut down; discarding what still arrives
  bool peer_closed = false;  // the client shut down its sending side
  bool rejected = false;     // over --max-connections: 503, then close
  bool reading = false;
  bool writing = false;
  bool waiting = false;      // for a deferred response: nothing more is read or answered until it comes
  Connection* prev = nullptr;
  Connection* next = nullptr;
};

Worker::Worker(unsigned index, const Config& config, Store& store, Metrics& metrics,
               std::atomic<unsigned>& open_connections, BufferBudget& buffers, Snapshotter* snapshots,
               const TokenStore* tokens)
    : index_(index),
      config_(config),
      counters_(metrics.worker(index)),
      open_connections_(open_connections),
      buffers_(buffers),
      handler_(store, metrics, metrics.worker(index), date_, tokens),
      input_(new char[kInputAllocation]),
      chunked_body_(new char[http::kMaxBodyBytes + RequestBodyDecoder::kPadding]) {
  output_.reserve(kOutputHighWater * 2);  // a batch stops past the high-water mark: room for it and one more
  base_ = event_base_new();
  if (snapshots != nullptr) {
    handler_.enable_snapshots(snapshots, [this] {
      uint64_t one = 1;
      if (write(wake_fd_, &one, sizeof one) < 0) log(LogLevel::error, "worker {}: cannot signal a finished snapshot", index_);
    });
  }
}

Worker::~Worker() {
  while (connections_ != nullptr) close(*connections_);
  for (event* ev : {accept_event_, stop_event_, wake_event_, tick_event_, accept_pause_event_}) {
    if (ev != nullptr) event_free(ev);
  }
  if (listen_fd_ >= 0) ::close(listen_fd_);
  if (stop_fd_ >= 0) ::close(stop_fd_);
  if (wake_fd_ >= 0) ::close(wake_fd_);
  if (base_ != nullptr) event_base_free(base_);
}

namespace {

// Parses --bind/--port into a socket address; returns false if bind is not an IP address.
bool make_address(const Config& config, sockaddr_storage& address, socklen_t& size) {
  address = {};
  auto* v4 = reinterpret_cast<sockaddr_in*>(&address);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&address);
  if (inet_pton(AF_INET, config.bind.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(config.port);
    size = sizeof *v4;
    return true;
  }
  if (inet_pton(AF_INET6, config.bind.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(config.port);
    size = sizeof *v6;
    return true;
  }
  return false;
}

// SO_REUSEPORT would let a second kvcache share the port and split the
// clients between two caches: binding once without it fails if anyone listens.
std::string check_port_free(const sockaddr_storage& address, socklen_t size) {
  int probe = socket(address.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (probe < 0) return fmt::format("socket: {}", std::strerror(errno));
  int on = 1;
  setsockopt(probe, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
  int result = bind(probe, reinterpret_cast<const sockaddr*>(&address), size);
  int error = errno;
  ::close(probe);
  return result == 0 ? std::string() : std::string(std::strerror(error));
}

}  // namespace

std::string Worker::listen() {
  if (base_ == nullptr) return "cannot create event loop";
  sockaddr_storage address;
  socklen_t address_size = 0;
  if (!make_address(config_, address, address_size)) {
    return fmt::format("--bind {:?} is not an IPv4 or IPv6 address", config_.bind);
  }
  if (index_ == 0) {
    if (std::string busy = check_port_free(address, address_size); !busy.empty()) {
      return fmt::format("bind {}:{}: {}", config_.bind, config_.port, busy);
    }
  }
  listen_fd_ = socket(address.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (listen_fd_ < 0) return fmt::format("socket: {}", std::strerror(errno));
  int on = 1;
  setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
  // Each loop has its own listener on the same port; the kernel spreads connections.
  if (setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) != 0) {
    return fmt::format("SO_REUSEPORT: {}", std::strerror(errno));
  }
  if (bind(listen_fd_, reinterpret_cast<sockaddr*>(&address), address_size) != 0) {
    return fmt::format("bind {}:{}: {}", config_.bind, config_.port, std::strerror(errno));
  }
  if (::listen(listen_fd_, SOMAXCONN) != 0) return fmt::format("listen: {}", std::strerror(errno));

  stop_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (stop_fd_ < 0 || wake_fd_ < 0) return fmt::format("eventfd: {}", std::strerror(errno));
  accept_event_ = event_new(base_, listen_fd_, EV_READ | EV_PERSIST, on_accept, this);
  stop_event_ = event_new(base_, stop_fd_, EV_READ, on_stop, this);
  wake_event_ = event_new(base_, wake_fd_, EV_READ | EV_PERSIST, on_wake, this);
  tick_event_ = event_new(base_, -1, EV_PERSIST, on_tick, this);
  accept_pause_event_ = event_new(base_, -1, 0, on_accept_pause_end, this);
  event_add(accept_event_, nullptr);
  event_add(stop_event_, nullptr);
  event_add(wake_event_, nullptr);
  event_add(tick_event_, &kTickInterval);
  return {};
}

void Worker::run() { event_base_dispatch(base_); }

void Worker::stop() {
  uint64_t one = 1;
  if (write(stop_fd_, &one, sizeof one) < 0) log(LogLevel::error, "worker {}: cannot signal stop", index_);
}

void Worker::on_stop(int, short, void* arg) {
  auto& self = *static_cast<Worker*>(arg);
  self.draining_ = true;
  // Take what is already queued on the listener, then stop accepting.
  self.accept_pending();
  event_del(self.accept_event_);
  event_del(self.accept_pause_event_);
  ::close(self.listen_fd_);
  self.listen_fd_ = -1;
  // Answer what each connection has sent (with "Connection: close"); close the idle ones.
  for (Connection* c = self.connections_; c != nullptr;) {
    Connection* next = c->next;
    self.drain(*c);
    c = next;
  }
  timeval drain = to_timeval(self.config_.drain_timeout);
  event_base_loopexit(self.base_, &drain);
  if (self.connection_count_ == 0) event_base_loopexit(self.base_, nullptr);
}

void Worker::drain(Connection& c) {
  // Output still queued: on_writable calls this again once it is sent.
  if (c.lingering || c.closing || c.waiting || !c.output.empty()) return;
  // One look at what the client has sent: a request is answered with "Connection: close".
  if (c.input.empty() && !read_from(c)) return;
  if (c.input.empty() && c.output.empty() && !c.closing) close(c);
}

void Worker::on_wake(int fd, short, void* arg) {
  auto& self = *static_cast<Worker*>(arg);
  uint64_t count;
  (void)read(fd, &count, sizeof count);
  Connection* c = self.deferred_;
  self.deferred_ = nullptr;
  self.handler_.finish_snapshot(self.output_);
  if (c == nullptr) {
    self.output_.clear();  // the client left before its answer
    return;
  }
  c->waiting = false;
  if (!self.flush(*c)) return;
  // Then the requests that came in behind it.
  if (c->output.empty() && !c->closing && !c->input.empty() && !self.consume(*c, self.load_input(*c))) return;
  if (self.draining_) self.drain(*c);
}

void Worker::on_tick(int, short, void* arg) { static_cast<Worker*>(arg)->date_.refresh(); }

void Worker::on_accept(int, short, void* arg) { static_cast<Worker*>(arg)->accept_pending(); }

void Worker::on_accept_pause_end(int, short, void* arg) {
  auto& self = *static_cast<Worker*>(arg);
  if (!self.draining_) event_add(self.accept_event_, nullptr);
}

void Worker::accept_pending() {
  for (int i = 0; i < kAcceptsPerEvent; ++i) {
    int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EMFILE || errno == ENFILE) {
        // The pending connection stays queued and would wake us at once: pause accepting a while.
        log(LogLevel::warn, "accept: {}; pausing accepts for 100 ms (raise the open files limit)", std::strerror(errno));
        event_del(accept_event_);
        event_add(accept_pause_event_, &kAcceptPause);
      }
      return;
    }
    // A rejected connection is held (and counted) until its lingering close ends.
    bool over_limit = open_connections_.fetch_add(1, std::memory_order_relaxed) >= config_.max_connections;
    int on = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    auto* c = new Connection{};
    c->worker = this;
    c->fd = fd;
    c->last_active = now_seconds();
    event_assign(&c->read_event, base_, fd, EV_READ | EV_PERSIST, on_readable, c);
    event_assign(&c->write_event, base_, fd, EV_WRITE | EV_PERSIST, on_writable, c);
    evtimer_assign(&c->timer, base_, on_timer, c);
    c->next = connections_;
    if (connections_ != nullptr) connections_->prev = c;
    connections_ = c;
    ++connection_count_;
    if (over_limit) {
      // Answered and closed like any final response, so the client reads the 503.
      c->rejected = true;
      counters_.connections_rejected.add();
      handler_.reject(503, "too many connections", output_);
      c->closing = true;
      flush(*c);
      continue;
    }
    counters_.connections_accepted.add();
    set_reading(*c, true);
    arm_timer(*c, config_.idle_timeout);
  }
}

void Worker::set_reading(Connection& c, bool on) {
  if (c.reading == on) return;
  c.reading = on;
  on ? event_add(&c.read_event, nullptr) : event_del(&c.read_event);
}

void Worker::set_writing(Connection& c, bool on) {
  if (c.writing == on) return;
  c.writing = on;
  on ? event_add(&c.write_event, nullptr) : event_del(&c.write_event);
}

void Worker::arm_timer(Connection& c, double seconds) {
  timeval tv = to_timeval(seconds);
  evtimer_add(&c.timer, &tv);
}

void Worker::close(Connection& c) {
  event_del(&c.read_event);
  event_del(&c.write_event);
  evtimer_del(&c.timer);
  ::close(c.fd);
  c.fd = -1;
  if (deferred_ == &c) deferred_ = nullptr;
  (c.prev ? c.prev->next : connections_) = c.next;
  if (c.next != nullptr) c.next->prev = c.prev;
  --connection_count_;
  open_connections_.fetch_sub(1, std::memory_order_relaxed);
  if (!c.rejected) counters_.connections_closed.add();
  buffers_.recharge(c.charged, 0);
  delete &c;
  if (draining_ && connection_count_ == 0) event_base_loopexit(base_, nullptr);
}

size_t Worker::load_input(Connection& c) {
  size_t n = c.input.size();
  std::memcpy(input_.get(), c.input.data(), n);
  return n;
}

void Worker::on_readable(int, short, void* arg) {
  auto& c = *static_cast<Connection*>(arg);
  c.lingering ? c.worker->discard(c) : (void)c.worker->read_from(c);
}

void Worker::finish(Connection& c) {
  // After the client's FIN nothing is left unread that could make the kernel reset.
  if (c.peer_closed) return close(c);
  // Closing with unread input makes Linux send RST and drop what it has not
  // sent yet, the last responses included. Send FIN instead, then read and
  // discard for a bounded time and byte count before closing.
  shutdown(c.fd, SHUT_WR);
  c.lingering = true;
  c.linger_until = now_seconds() + kLingerSeconds;
  std::string().swap(c.input);
  recharge(c);
  set_writing(c, false);
  set_reading(c, true);
  arm_timer(c, kLingerSeconds);
}

void Worker::discard(Connection& c) {
  ssize_t got = recv(c.fd, input_.get(), kInputCapacity, 0);
  if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
  if (got > 0 && (c.lingered += static_cast<size_t>(got)) <= kLingerBytes) return;
  close(c);  // the client closed, failed, or sent too much
}

void Worker::recharge(Connection& c) {
  // An empty std::string holds no heap memory (its inline capacity is not charged).
  static const size_t inline_capacity = std::string().capacity();
  auto held = [](const std::string& s) { return s.capacity() > inline_capacity ? s.capacity() : 0; };
  size_t now = held(c.input) + held(c.output);
  if (now == c.charged) return;
  buffers_.recharge(c.charged, now);
  c.charged = now;
}

size_t Worker::output_allowance() const { return buffers_.spent() ? kBufferFloor : kOutputHighWater; }

bool Worker::read_from(Connection& c) {
  size_t n = load_input(c);
  if (n == kInputCapacity) {
    // Unreachable while the parser enforces its limits; never read zero bytes and call it EOF.
    handler_.reject(413, "request too large", output_);
    c.closing = true;
    c.input.clear();
    return flush(c);
  }
  // While the buffer budget is spent, read a little at a time: what a connection holds stays small.
  size_t room = kInputCapacity - n;
  if (buffers_.spent()) room = std::min(room, kBufferFloor);
  ssize_t got = recv(c.fd, input_.get() + n, room, 0);
  if (got < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return true;
    close(c);
    return false;
  }
  if (got == 0) {
    // The client will send no more: answer what it sent, then close.
    c.peer_closed = true;
    set_reading(c, false);
  }
  c.last_active = now_seconds();
  return consume(c, n + got);
}

bool Worker::consume(Connection& c, size_t n) {
  batch_started_ns_ = now_ns();
  for (;;) {
    size_t used = process(c, n);
    bool held_back = !c.closing && used < n && (c.waiting || c.output.size() + output_.size() >= output_allowance());
    // A FIN means no more requests, not "forget the ones you have": close once
    // every complete request is answered (a partial one can never complete).
    if (c.peer_closed && !held_back) c.closing = true;
    if (c.closing || used == n) {
      c.input.clear();
      if (c.input.capacity() > kInputKeepCapacity) std::string().swap(c.input);  // idle connections hold no big buffers
      c.request_started = 0;
    } else if (held_back) {
      // Whole requests waiting for the client to read: the idle timeout
      // (last_active) covers a client that never does, not the read timeout.
      c.input.assign(input_.get() + used, n - used);
      c.request_started = 0;
    } else {
      c.input.assign(input_.get() + used, n - used);
      if (used > 0 || c.request_started == 0) {
        // A request has begun: it must be complete within the read timeout.
        c.request_started = now_seconds();
        schedule(c);
      }
    }
    if (!flush(c)) return false;
    // Requests held back by a backlog the socket has now taken: answer them too.
    if (!held_back || !c.output.empty() || c.waiting) return true;
    n = load_input(c);
  }
}

size_t Worker::process(Connection& c, size_t n) {
  const char* in = input_.get();
  size_t pos = 0;
  const bool spent = buffers_.spent();
  const size_t allowance = spent ? kBufferFloor : kOutputHighWater;
  // While the budget is spent, a body larger than the floor gets a 503 instead.
  const size_t body_limit = spent ? kBufferFloor : SIZE_MAX;
  while (!c.closing && !c.waiting && pos < n && c.output.size() + output_.size() < allowance) {
    http::Request request;
    http::Frame frame = http::frame_request(in + pos, n - pos, c.framing, request, chunked_body_.get());
    if (frame.status == http::Status::incomplete) {
      if (frame.send_continue) output_ += http::kContinueResponse;
      break;
    }
    if (frame.status == http::Status::error) {
      handler_.reject(frame.error.code, frame.error.message, output_, request.method);
      c.closing = true;
      break;
    }
    bool keep_alive = request.keep_alive && !draining_;
    http::ConnectionMode mode = !keep_alive    ? http::ConnectionMode::close
                                : request.http10 ? http::ConnectionMode::keep_alive_explicit
                                                 : http::ConnectionMode::keep_alive;
    handler_.handle(request, frame.body, mode, output_, body_limit);
    c.closing = !keep_alive;
    pos += frame.consumed;
    if (handler_.take_deferred()) {
      // Answered from on_wake when the snapshot is written; the requests
      // behind it wait, as responses go out in order.
      c.waiting = true;
      deferred_ = &c;
      break;
    }
    counters_.observe_latency(now_ns() - batch_started_ns_);
  }
  return pos;
}

bool Worker::flush(Connection& c) {
  bool was_pending = !c.output.empty();
  if (!output_.empty() || was_pending) {
    std::string& pending = was_pending ? c.output.append(output_) : output_;
    ssize_t sent = send(c.fd, pending.data(), pending.size(), MSG_NOSIGNAL);
    if (sent < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      output_.clear();
      close(c);
      return false;
    }
    size_t done = sent > 0 ? static_cast<size_t>(sent) : 0;
    if (done > 0) c.last_active = c.last_sent = now_seconds();
    if (&pending == &output_) {
      if (done < output_.size()) c.output.assign(output_, done);
    } else {
      c.output.erase(0, done);
      // A drained backlog gives its memory back: idle connections hold no buffers.
      if (c.output.empty()) std::string().swap(c.output);
    }
    output_.clear();
  }
  bool backlog = !c.output.empty();
  recharge(c);
  set_writing(c, backlog);
  if (!backlog && c.closing && !c.waiting) {
    finish(c);
    return false;
  }
  if (backlog && !was_pending) {
    c.last_sent = now_seconds();  // --send-timeout counts from here
    schedule(c);
  }
  // Pause reading while the client is not taking its responses.
  set_reading(c, !c.closing && !c.peer_closed && !c.waiting && c.output.size() < output_allowance());
  return true;
}

void Worker::on_writable(int, short, void* arg) {
  auto& c = *static_cast<Connection*>(arg);
  Worker& self = *c.worker;
  if (!self.flush(c) || !c.output.empty()) return;
  // Once drained, answer requests that were already read but held back.
  if (!c.closing && !c.input.empty() && !self.consume(c, self.load_input(c))) return;
  if (self.draining_) self.drain(c);
}

void Worker::on_timer(int, short, void* arg) {
  auto& c = *static_cast<Connection*>(arg);
  c.worker->check_deadlines(c);
}

double Worker::next_deadline(const Connection& c) const {
  if (c.lingering) return c.linger_until;
  double next = c.last_active + config_.idle_timeout;
  if (!c.output.empty()) next = std::min(next, c.last_sent + config_.send_timeout);
  if (c.request_started != 0) next = std::min(next, c.request_started + config_.read_timeout);
  return next;
}

void Worker::schedule(Connection& c) { arm_timer(c, next_deadline(c) - now_seconds()); }

void Worker::check_deadlines(Connection& c) {
  if (c.waiting) return arm_timer(c, config_.idle_timeout);  // it is the server that is busy
  double now = now_seconds();
  if (now < next_deadline(c)) return schedule(c);
  if (c.lingering || (!c.output.empty() && now >= c.last_sent + config_.send_timeout)) {
    // Lingered long enough, or the client took nothing for --send-timeout:
    // what it holds goes back to the buffer budget.
    output_.clear();
    return close(c);
  }
  if (c.request_started != 0 && now >= c.request_started + config_.read_timeout) {
    handler_.reject(408, "request timeout", output_);
    c.closing = true;
    c.input.clear();
    c.request_started = 0;
    // A client that does not read even this is dropped at the send timeout.
    if (flush(c)) schedule(c);
    return;
  }
  output_.clear();
  close(c);  // idle
}

}  // namespace kv

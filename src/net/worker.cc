#include "worker.h"

#include "listener.h"
#include "log.h"
#include "tls.h"

#include <event2/event.h>
#include <event2/event_struct.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <ctime>

namespace kv {
namespace {

constexpr timeval kTickInterval = {0, 100 * 1000};  // the cached Date: header is refreshed (and buffers trimmed) this often
constexpr timeval kAcceptPause = {0, 100 * 1000};   // after EMFILE/ENFILE
constexpr double kMinTimer = 0.001;                 // libevent timers below a millisecond fire at once
constexpr int kAcceptsPerEvent = 64;

timeval to_timeval(double seconds) {
  if (seconds < kMinTimer) seconds = kMinTimer;
  double whole = std::floor(seconds);
  return {static_cast<time_t>(whole), static_cast<suseconds_t>((seconds - whole) * 1e6)};
}

void log_refused(const BufferBudget& buffers) {
  static LogThrottle throttle(1000);
  uint64_t suppressed = 0;
  if (!throttle.allow_warning(suppressed)) return;
  log(LogLevel::warn, "tls: refused a new connection: the connection buffer budget ({} of {} MiB used) cannot pay "
      "for its TLS state and no idle connection of this loop could be closed for it ({} more refused since the "
      "last such line; see kvcache_connections_refused_total)",
      buffers.used() >> 20, buffers.limit() >> 20, suppressed);
}

}  // namespace

// The plain-socket I/O of one accepted connection, with the connection it
// serves: libevent's events call the connection, the connection calls this.
class Worker::SocketIo : public ConnectionIo {
 public:
  SocketIo(Worker& worker, int fd, bool rejected)
      : worker_(worker), fd_(fd), rejected_(rejected), connection_(worker.loop_, *this) {
    event_assign(&read_event_, worker.base_, fd, EV_READ | EV_PERSIST, on_readable, this);
    event_assign(&write_event_, worker.base_, fd, EV_WRITE | EV_PERSIST, on_writable, this);
    evtimer_assign(&timer_, worker.base_, on_timer, this);
  }

  IoResult recv(char* buffer, size_t size) override { return receive(buffer, size, 0); }
  IoResult peek(char* buffer, size_t size) override { return receive(buffer, size, MSG_PEEK); }

  IoResult send(const char* data, size_t size) override {
    ssize_t sent = ::send(fd_, data, size, MSG_NOSIGNAL);
    if (sent >= 0) return {sent > 0 ? IoResult::ok : IoResult::would_block, static_cast<size_t>(sent)};
    return {blocked() ? IoResult::would_block : IoResult::error, 0};
  }

  void shutdown_write() override { ::shutdown(fd_, SHUT_WR); }
  void want_read(bool on) override { poll_read(on); }
  void want_write(bool on) override { poll_write(on); }

  void arm_timer(double seconds) override {
    timeval tv = to_timeval(seconds);
    evtimer_add(&timer_, &tv);
  }

  void close() override {
    event_del(&read_event_);
    event_del(&write_event_);
    evtimer_del(&timer_);
    ::close(fd_);
    fd_ = -1;
    worker_.retire(*this);
  }

  Connection& connection() { return connection_; }
  bool rejected() const { return rejected_; }

  SocketIo* prev = nullptr;
  SocketIo* next = nullptr;

 protected:
  // What the socket's events mean for the connection (TlsIo translates them).
  virtual void readable() { connection_.on_readable(); }
  virtual void writable() { connection_.on_writable(); }
  void poll_read(bool on) { on ? event_add(&read_event_, nullptr) : event_del(&read_event_); }
  void poll_write(bool on) { on ? event_add(&write_event_, nullptr) : event_del(&write_event_); }

  Worker& worker_;
  int fd_;
  event read_event_;

 private:
  static bool blocked() { return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR; }

  IoResult receive(char* buffer, size_t size, int flags) {
    ssize_t got = ::recv(fd_, buffer, size, flags);
    if (got > 0) return {IoResult::ok, static_cast<size_t>(got)};
    if (got == 0) return {IoResult::eof, 0};
    return {blocked() ? IoResult::would_block : IoResult::error, 0};
  }

  static void on_readable(int, short, void* arg) {
    auto& self = *static_cast<SocketIo*>(arg);
    Worker& worker = self.worker_;
    self.readable();
    worker.reap();
  }
  static void on_writable(int, short, void* arg) {
    auto& self = *static_cast<SocketIo*>(arg);
    Worker& worker = self.worker_;
    self.writable();
    worker.reap();
  }
  static void on_timer(int, short, void* arg) {
    auto& self = *static_cast<SocketIo*>(arg);
    Worker& worker = self.worker_;
    self.connection_.on_timer();
    worker.reap();
  }

  const bool rejected_;  // over --max-connections: held (and counted) until its lingering close ends
  event write_event_;
  event timer_;

 protected:
  Connection connection_;  // last: its destructor may still close through this I/O
};

// The TLS I/O of one accepted connection (--tls-cert): the socket's events
// and the connection's calls go through a TlsStream (tls.h), which does the
// handshake inside the first recv or send and says which socket events the
// connection's read and write interest need now. The connection's state
// machine is the same as over a plain socket.
class Worker::TlsIo final : public SocketIo {
 public:
  TlsIo(Worker& worker, int fd, bool rejected, SSL* ssl)
      : SocketIo(worker, fd, rejected), stream_(ssl, worker.tls_->metrics()) {
    // The handshake is bound by the read timeout, as a request is.
    evtimer_assign(&handshake_timer_, worker.base_, on_handshake_timer, this);
    timeval tv = to_timeval(worker.options_.connection.read_timeout);
    evtimer_add(&handshake_timer_, &tv);
  }

  IoResult recv(char* buffer, size_t size) override { return settle(stream_.recv(buffer, size)); }
  IoResult peek(char* buffer, size_t size) override { return settle(stream_.peek(buffer, size)); }
  IoResult send(const char* data, size_t size) override { return settle(stream_.send(data, size)); }

  // close_notify, then the FIN.
  void shutdown_write() override {
    stream_.shutdown();
    SocketIo::shutdown_write();
  }
  void want_read(bool on) override {
    stream_.want_read(on);
    poll();
  }
  void want_write(bool on) override {
    stream_.want_write(on);
    poll();
  }
  void close() override {
    evtimer_del(&handshake_timer_);
    stream_.closing();
    SocketIo::close();
  }
  size_t held_bytes() const override { return stream_.held_bytes(); }
  bool busy() const override { return stream_.busy(); }

 private:
  void readable() override { run(stream_.on_event(true, false)); }
  void writable() override { run(stream_.on_event(false, true)); }

  void run(TlsStream::Dispatch handlers) {
    if (handlers.read) connection_.on_readable();
    if (handlers.write && !connection_.closed()) connection_.on_writable();
    if (!connection_.closed()) poll();
  }

  IoResult settle(IoResult result) {
    if (!handshaken_ && stream_.handshake_done()) {
      handshaken_ = true;
      evtimer_del(&handshake_timer_);
    }
    poll();
    return result;
  }

  // Brings the socket events in line with what the stream needs now.
  void poll() {
    bool read = stream_.socket_read();
    bool write = stream_.socket_write();
    if (read != polling_read_) poll_read(polling_read_ = read);
    if (write != polling_write_) poll_write(polling_write_ = write);
    // Records already in OpenSSL's buffer make the socket no more readable.
    if (stream_.input_buffered()) event_active(&read_event_, EV_READ, 1);
  }

  static void on_handshake_timer(int, short, void* arg) {
    auto& self = *static_cast<TlsIo*>(arg);
    Worker& worker = self.worker_;
    if (!self.stream_.handshake_done()) {
      self.stream_.handshake_timed_out();
      self.connection_.on_readable();  // its next recv fails: the connection closes
    }
    worker.reap();
  }

  TlsStream stream_;
  event handshake_timer_;
  bool polling_read_ = false;
  bool polling_write_ = false;
  bool handshaken_ = false;  // and its timer gone
};

Worker::Worker(unsigned index, const WorkerOptions& options, http::Handler& handler, http::DateHeader& date,
               ConnectionCounters& counters, std::atomic<unsigned>& open_connections, BufferBudget& buffers,
               TlsContext* tls)
    : index_(index),
      options_(options),
      counters_(counters),
      open_connections_(open_connections),
      tls_(tls),
      base_(event_base_new()),
      date_(date),
      loop_(options.connection, clock_, buffers, counters_, handler) {}

Worker::~Worker() {
  while (open_ != nullptr) open_->connection().close();
  reap();
  for (event* ev : {accept_event_, stop_event_, wake_event_, tick_event_, accept_pause_event_}) {
    if (ev != nullptr) event_free(ev);
  }
  if (listen_fd_ >= 0) ::close(listen_fd_);
  if (stop_fd_ >= 0) ::close(stop_fd_);
  if (wake_fd_ >= 0) ::close(wake_fd_);
  if (base_ != nullptr) event_base_free(base_);
}

Result<void> Worker::listen() {
  if (base_ == nullptr) return fail("cannot create event loop");
  Result<int> listener = open_listener(options_.bind, options_.port, index_ == 0);
  if (!listener) return fail(listener.error());
  listen_fd_ = listener.value();
  stop_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (stop_fd_ < 0 || wake_fd_ < 0) return fail(fmt::format("eventfd: {}", std::strerror(errno)));
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

void Worker::wake_deferred() {
  uint64_t one = 1;
  if (write(wake_fd_, &one, sizeof one) < 0) log(LogLevel::error, "worker {}: cannot signal a deferred response", index_);
}

void Worker::run() { event_base_dispatch(base_); }

void Worker::stop() {
  uint64_t one = 1;
  if (write(stop_fd_, &one, sizeof one) < 0) log(LogLevel::error, "worker {}: cannot signal stop", index_);
}

void Worker::on_stop(int, short, void* arg) {
  auto& self = *static_cast<Worker*>(arg);
  self.loop_.draining = true;
  // Take what is already queued on the listener, then stop accepting.
  self.accept_pending();
  event_del(self.accept_event_);
  event_del(self.accept_pause_event_);
  ::close(self.listen_fd_);
  self.listen_fd_ = -1;
  // Answer what each connection has sent (with "Connection: close"); close the idle ones.
  for (SocketIo* io = self.open_; io != nullptr;) {
    SocketIo* next = io->next;
    io->connection().drain();
    io = next;
  }
  self.reap();
  timeval drain = to_timeval(self.options_.drain_timeout);
  event_base_loopexit(self.base_, &drain);
  if (self.open_count_ == 0) event_base_loopexit(self.base_, nullptr);
}

void Worker::on_wake(int fd, short, void* arg) {
  auto& self = *static_cast<Worker*>(arg);
  uint64_t count;
  (void)read(fd, &count, sizeof count);
  self.loop_.deliver_deferred();
  self.reap();
}

void Worker::on_tick(int, short, void* arg) {
  auto& self = *static_cast<Worker*>(arg);
  self.date_.refresh();
  self.loop_.trim();
}

void Worker::on_accept(int, short, void* arg) {
  auto& self = *static_cast<Worker*>(arg);
  self.accept_pending();
  self.reap();
}

void Worker::on_accept_pause_end(int, short, void* arg) {
  auto& self = *static_cast<Worker*>(arg);
  if (!self.loop_.draining) event_add(self.accept_event_, nullptr);
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
    // A TLS connection's state is charged to the buffer budget, which bounds
    // it: close idle ones for it, or refuse it before any handshake work.
    if (tls_ != nullptr && !loop_.make_room(TlsStream::kNewBytes)) {
      ::close(fd);
      counters_.refused.add();
      log_refused(loop_.buffers);
      continue;
    }
    // A rejected connection is held (and counted) until its lingering close ends.
    bool over_limit = open_connections_.fetch_add(1, std::memory_order_relaxed) >= options_.max_connections;
    int on = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    SocketIo* io;
    if (tls_ == nullptr) {
      io = new SocketIo(*this, fd, over_limit);
    } else if (SSL* ssl = tls_->new_ssl(fd); ssl != nullptr) {
      io = new TlsIo(*this, fd, over_limit, ssl);
    } else {
      log(LogLevel::error, "tls: cannot allocate a connection's TLS state; closing it");
      ::close(fd);
      open_connections_.fetch_sub(1, std::memory_order_relaxed);
      continue;
    }
    io->next = open_;
    if (open_ != nullptr) open_->prev = io;
    open_ = io;
    ++open_count_;
    if (over_limit) {
      counters_.rejected.add();
      io->connection().start_rejected();
    } else {
      counters_.accepted.add();
      io->connection().start();
    }
  }
}

void Worker::retire(SocketIo& io) {
  (io.prev ? io.prev->next : open_) = io.next;
  if (io.next != nullptr) io.next->prev = io.prev;
  io.next = retired_;
  retired_ = &io;
  --open_count_;
  open_connections_.fetch_sub(1, std::memory_order_relaxed);
  if (!io.rejected()) counters_.closed.add();
  if (loop_.draining && open_count_ == 0) event_base_loopexit(base_, nullptr);
}

void Worker::reap() {
  while (retired_ != nullptr) delete std::exchange(retired_, retired_->next);
}

}  // namespace kv

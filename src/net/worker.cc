#include "worker.h"

#include "listener.h"
#include "log.h"
#include "socket_io.h"
#include "tls.h"
#include "tls_io.h"

#include <event2/event.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <netinet/tcp.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <new>
#include <cstdint>
#include <cstring>
#include <ctime>

namespace kv {
namespace {

constexpr timeval kTickInterval = {0, 100 * 1000};  // the cached Date: header is refreshed (and buffers trimmed) this often
constexpr timeval kAcceptPause = {0, 100 * 1000};   // after EMFILE/ENFILE
constexpr int kAcceptsPerEvent = 64;

timeval to_timeval(double seconds) {
  double whole = std::floor(seconds);
  return {static_cast<time_t>(whole), static_cast<suseconds_t>((seconds - whole) * 1e6)};
}

void log_refused(const BufferBudget& buffers) {
  static LogThrottle throttle;
  throttle.warn([&](uint64_t suppressed) {
    log(LogLevel::warn, "tls: refused a new connection: the connection buffer budget ({} of {} MiB used) cannot pay "
        "for its TLS state and no idle connection of this loop could be closed for it ({} more refused since the "
        "last such line; see kvcache_connections_refused_total)",
        buffers.used() >> 20, buffers.limit() >> 20, suppressed);
  });
}

void log_no_memory() {
  static LogThrottle throttle(1000);
  uint64_t suppressed = 0;
  if (!throttle.allow_warning(suppressed)) return;
  log(LogLevel::error, "accept: no memory for a new connection; closed it ({} more since the last such line; see "
      "kvcache_allocation_failures_total)", suppressed);
}

}  // namespace

Worker::Worker(unsigned index, const WorkerOptions& options, http::Handler& handler, http::DateHeader& date,
               ConnectionCounters counters, std::atomic<unsigned>& open_connections, BufferBudget& buffers,
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

// A wake-up is never lost: the flag is set before the eventfd is written, and
// the loop's tick looks at the flags too, so a write that fails (EINTR,
// ENOMEM, an injected fault) only delays the wake-up to the next tick.
void Worker::wake_deferred() {
  deferred_ready_.store(true, std::memory_order_release);
  uint64_t one = 1;
  if (write(wake_fd_, &one, sizeof one) < 0) {
    log(LogLevel::warn, "worker {}: cannot signal a deferred response ({}); the loop's tick will find it", index_,
        std::strerror(errno));
  }
}

void Worker::run() { event_base_dispatch(base_); }

void Worker::stop() {
  stop_requested_.store(true, std::memory_order_release);
  uint64_t one = 1;
  if (write(stop_fd_, &one, sizeof one) < 0) {
    log(LogLevel::warn, "worker {}: cannot signal stop ({}); the loop's tick will find it", index_,
        std::strerror(errno));
  }
}

void Worker::on_stop(int, short, void* arg) {
  auto& self = *static_cast<Worker*>(arg);
  if (self.loop_.draining) return;  // the tick found the request first (or the eventfd came late)
  event_del(self.stop_event_);
  self.loop_.draining = true;
  // Take what is already queued on the listener, then stop accepting.
  self.accept_pending();
  event_del(self.accept_event_);
  event_del(self.accept_pause_event_);
  ::close(self.listen_fd_);
  self.listen_fd_ = -1;
  // Answer what each connection has sent (with "Connection: close"); close the idle ones.
  for (Transport* io = self.open_; io != nullptr;) {
    Transport* next = io->next;
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
  self.take_wake_ups();
}

void Worker::take_wake_ups() {
  // Exactly once each, whether the eventfd or the tick sees the flag first.
  if (deferred_ready_.exchange(false, std::memory_order_acquire)) {
    loop_.deliver_deferred();
    reap();
  }
  if (stop_requested_.load(std::memory_order_acquire) && !loop_.draining) on_stop(-1, 0, this);
}

void Worker::on_tick(int, short, void* arg) {
  auto& self = *static_cast<Worker*>(arg);
  self.date_.refresh();
  self.loop_.trim();
  self.take_wake_ups();
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
      counters_.refused();
      log_refused(loop_.buffers);
      continue;
    }
    // A rejected connection is held (and counted) until its lingering close ends.
    bool over_limit = open_connections_.fetch_add(1, std::memory_order_relaxed) >= options_.max_connections;
    int on = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    Transport* io = nullptr;
    SSL* ssl = nullptr;
    try {
      if (tls_ == nullptr) {
        io = new SocketIo(loop_, base_, fd, *this);
      } else if (ssl = tls_->new_ssl(fd); ssl != nullptr) {
        io = new TlsIo(loop_, base_, fd, *this, ssl, tls_->metrics());
      }
    } catch (const std::bad_alloc&) {
      if (ssl != nullptr) SSL_free(ssl);
    }
    if (io == nullptr) {
      // No memory for the connection (or its TLS state): close it, count it, keep serving.
      log_no_memory();
      ::close(fd);
      open_connections_.fetch_sub(1, std::memory_order_relaxed);
      counters_.allocation_failed(ConnectionCounters::Memory::accept);
      continue;
    }
    io->rejected = over_limit;
    io->next = open_;
    if (open_ != nullptr) open_->prev = io;
    open_ = io;
    ++open_count_;
    if (over_limit) {
      counters_.rejected();
      io->connection().start_rejected();
    } else {
      counters_.opened();
      io->connection().start();
    }
  }
}

void Worker::retire(Transport& io) {
  (io.prev ? io.prev->next : open_) = io.next;
  if (io.next != nullptr) io.next->prev = io.prev;
  io.next = retired_;
  retired_ = &io;
  --open_count_;
  open_connections_.fetch_sub(1, std::memory_order_relaxed);
  if (!io.rejected) counters_.closed();
  if (loop_.draining && open_count_ == 0) event_base_loopexit(base_, nullptr);
}

void Worker::reap() {
  while (retired_ != nullptr) delete std::exchange(retired_, retired_->next);
}

}  // namespace kv

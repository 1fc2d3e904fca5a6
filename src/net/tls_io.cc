#include "tls_io.h"

#include <sys/socket.h>

#include <algorithm>

namespace kv {

TlsIo::TlsIo(LoopContext& loop, event_base* base, int fd, TransportOwner& owner, SSL* ssl, TlsMetrics& metrics)
    : clock_(loop.clock),
      counters_(loop.counters),
      owner_(owner),
      events_(base, fd, *this, owner),
      stream_(ssl, metrics),
      handshake_deadline_(loop.clock.now() + loop.options.read_timeout),
      connection_(loop, *this) {}

void TlsIo::shutdown_write() {
  stream_.shutdown();
  ::shutdown(events_.fd(), SHUT_WR);
}

void TlsIo::want_read(bool on) {
  stream_.want_read(on);
  poll();
}

void TlsIo::want_write(bool on) {
  stream_.want_write(on);
  poll();
}

void TlsIo::arm_timer(double seconds) {
  if (!stream_.handshake_done()) seconds = std::min(seconds, handshake_deadline_ - clock_.now());
  events_.arm_timer(seconds);
}

void TlsIo::close() {
  stream_.closing();
  events_.close();
  owner_.retire(*this);
}

void TlsIo::on_socket_timer() {
  if (!stream_.handshake_done() && clock_.now() >= handshake_deadline_) {
    // Counted (and logged) as an incomplete handshake when the connection closes.
    stream_.handshake_timed_out();
    counters_.timed_out(ConnectionCounters::Timeout::handshake);
    return connection_.close();
  }
  // The connection's own deadline (or the handshake's, met since): it re-arms.
  connection_.on_timer();
}

void TlsIo::dispatch(TlsStream::Dispatch handlers) {
  if (handlers.read) connection_.on_readable();
  if (handlers.write && !connection_.closed()) connection_.on_writable();
  if (!connection_.closed()) poll();
}

void TlsIo::poll() {
  TlsStream::Interest interest = stream_.interest();
  events_.want_read(interest.read);
  events_.want_write(interest.write);
  if (interest.rerun_read) events_.activate_read();
}

}  // namespace kv

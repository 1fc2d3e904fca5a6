// The TLS transport (--tls-cert): a Connection's I/O through a TlsStream
// (tls.h) over a non-blocking socket and its SocketEvents. The stream does
// the handshake inside the first recv or send and says which socket events
// the connection's read and write interest need now (TlsStream::interest);
// this class only applies that to the events and dispatches them back, so
// the connection's state machine is the same as over a plain socket
// (socket_io.h, its sibling).
#pragma once

#include "socket_events.h"
#include "tls.h"
#include "transport.h"

typedef struct ssl_st SSL;
struct event_base;

namespace kv {

class TlsIo final : public Transport, private SocketEvents::Handler {
 public:
  // Takes ownership of `fd` and `ssl` (TlsContext::new_ssl). The handshake
  // must be done within the read timeout, as a request must be.
  TlsIo(LoopContext& loop, event_base* base, int fd, TransportOwner& owner, SSL* ssl, TlsMetrics& metrics);

  IoResult recv(char* buffer, size_t size) override { return polled(stream_.recv(buffer, size)); }
  IoResult peek(char* buffer, size_t size) override { return polled(stream_.peek(buffer, size)); }
  IoResult send(const char* data, size_t size) override { return polled(stream_.send(data, size)); }
  // close_notify, then the FIN.
  void shutdown_write() override;
  void want_read(bool on) override;
  void want_write(bool on) override;
  // The connection's one timer, brought forward to the handshake's deadline while it runs.
  void arm_timer(double seconds) override;
  void close() override;
  size_t held_bytes() const override { return stream_.held_bytes(); }
  bool busy() const override { return stream_.busy(); }
  Connection& connection() override { return connection_; }

  const TlsStream& stream() const { return stream_; }

 private:
  void on_socket_readable() override { dispatch(stream_.on_event(true, false)); }
  void on_socket_writable() override { dispatch(stream_.on_event(false, true)); }
  void on_socket_timer() override;
  void dispatch(TlsStream::Dispatch handlers);
  IoResult polled(IoResult result) {
    poll();
    return result;
  }
  // Brings the socket events in line with what the stream needs now.
  void poll();

  const Clock& clock_;
  ConnectionCounters& counters_;  // the loop's: a handshake timed out
  TransportOwner& owner_;
  SocketEvents events_;
  TlsStream stream_;
  const double handshake_deadline_;
  Connection connection_;  // last: its destructor may still close through this I/O
};

}  // namespace kv

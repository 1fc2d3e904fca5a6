// The plain-socket transport: a Connection's I/O over a non-blocking TCP
// socket (recv, send, MSG_PEEK, shutdown) and its SocketEvents. The TLS
// transport (tls_io.h) is its sibling.
#pragma once

#include "socket_events.h"
#include "transport.h"

struct event_base;

namespace kv {

class SocketIo final : public Transport, private SocketEvents::Handler {
 public:
  // Takes ownership of `fd`.
  SocketIo(LoopContext& loop, event_base* base, int fd, TransportOwner& owner);

  IoResult recv(char* buffer, size_t size) override;
  IoResult peek(char* buffer, size_t size) override;
  IoResult send(const char* data, size_t size) override;
  void shutdown_write() override;
  void want_read(bool on) override { events_.want_read(on); }
  void want_write(bool on) override { events_.want_write(on); }
  void arm_timer(double seconds) override { events_.arm_timer(seconds); }
  void close() override;
  Connection& connection() override { return connection_; }

 private:
  void on_socket_readable() override { connection_.on_readable(); }
  void on_socket_writable() override { connection_.on_writable(); }
  void on_socket_timer() override { connection_.on_timer(); }

  TransportOwner& owner_;
  SocketEvents events_;
  Connection connection_;  // last: its destructor may still close through this I/O
};

// The socket calls behind SocketIo, as IoResults (EINTR and EAGAIN: would_block).
IoResult socket_recv(int fd, char* buffer, size_t size, int flags);
IoResult socket_send(int fd, const char* data, size_t size);

}  // namespace kv

// The socket side of a Connection (connection.h): what the state machine asks
// of the transport, and nothing else. SocketIo (socket_io.h) talks to a plain
// socket; TlsIo (tls_io.h) translates read/write interest into the socket
// events its handshake needs (as Redis's tls.c does), so a Connection
// never assumes that want_read(true) means "poll for readable". The unit tests
// implement it with a fake that scripts every partial read and write.
//
// Events flow back the other way: the implementation calls the connection's
// on_readable(), on_writable() and on_timer() when the loop reports them.
#pragma once

#include "clock.h"  // kv::Clock: now() gives the monotonic seconds deadlines are kept in

#include <cstddef>

namespace kv {

struct IoResult {
  enum Kind { ok, would_block, eof, error } kind;
  size_t bytes;  // valid for ok (never 0 then)
};

// One per connection.
class ConnectionIo {
 public:
  virtual ~ConnectionIo() = default;
  virtual IoResult recv(char* buffer, size_t size) = 0;
  // Like recv, but the bytes stay to be received again (MSG_PEEK; TLS: SSL_peek).
  // Only used while the buffer budget is spent, to look before taking.
  virtual IoResult peek(char* buffer, size_t size) = 0;
  // Never eof: a peer gone shows as an error.
  virtual IoResult send(const char* data, size_t size) = 0;
  // FIN after what was sent (TLS: close_notify first).
  virtual void shutdown_write() = 0;
  // Read and write interest: the connection calls these only when its interest changes.
  virtual void want_read(bool on) = 0;
  virtual void want_write(bool on) = 0;
  // The connection's one timer, re-armed (not added to) by each call; seconds from now.
  virtual void arm_timer(double seconds) = 0;
  // Releases the transport; the connection calls nothing on it afterwards.
  virtual void close() = 0;
  // Memory this I/O holds (TLS state and buffers), charged to the buffer budget.
  virtual size_t held_bytes() const { return 0; }
  // In the middle of work of its own (a TLS handshake, a record half read or
  // half written): the connection is not idle even when it waits for nothing.
  virtual bool busy() const { return false; }
};

}  // namespace kv

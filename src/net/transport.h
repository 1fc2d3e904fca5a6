// One accepted socket as the worker keeps it: a ConnectionIo together with
// the Connection it serves. The plain transport (socket_io.h) and the TLS one
// (tls_io.h) are siblings under this base, each over one SocketEvents
// (socket_events.h); neither knows the other.
#pragma once

#include "connection.h"
#include "connection_io.h"

namespace kv {

class Transport;

// Whoever accepted the socket (the worker; a test in unit tests).
class TransportOwner {
 public:
  // The transport has closed its socket: free it once the event being handled returns.
  virtual void retire(Transport& transport) = 0;
  // An event of one of its transports has been handled: free what was retired.
  virtual void reap() = 0;

 protected:
  ~TransportOwner() = default;
};

class Transport : public ConnectionIo {
 public:
  virtual Connection& connection() = 0;

  // The owner's list of open transports.
  Transport* prev = nullptr;
  Transport* next = nullptr;
  bool rejected = false;  // over --max-connections: held (and counted) until its lingering close ends
};

}  // namespace kv

// The event source of one accepted socket: its three libevent events (read,
// write, and the connection's one timer). The plain and the TLS transport
// each own one; interest is passed to libevent only when it changes.
#pragma once

#include <event2/event_struct.h>

struct event_base;

namespace kv {

class TransportOwner;

class SocketEvents {
 public:
  // What the events are delivered to.
  class Handler {
   public:
    virtual void on_socket_readable() = 0;
    virtual void on_socket_writable() = 0;
    virtual void on_socket_timer() = 0;

   protected:
    ~Handler() = default;
  };

  // After each event, owner.reap() frees what the event closed.
  SocketEvents(event_base* base, int fd, Handler& handler, TransportOwner& owner);
  ~SocketEvents();
  SocketEvents(const SocketEvents&) = delete;
  SocketEvents& operator=(const SocketEvents&) = delete;

  int fd() const { return fd_; }
  void want_read(bool on);
  void want_write(bool on);
  // The one timer, re-armed by each call; seconds from now (at least 1 ms).
  void arm_timer(double seconds);
  // The read handler runs in this loop iteration although the socket did not
  // signal: bytes wait above it (in OpenSSL's buffer), not in it.
  void activate_read();
  // Deletes the events and closes the socket.
  void close();

 private:
  static void on_read(int, short, void* arg);
  static void on_write(int, short, void* arg);
  static void on_timer(int, short, void* arg);

  Handler& handler_;
  TransportOwner& owner_;
  int fd_;
  bool reading_ = false;
  bool writing_ = false;
  event read_;
  event write_;
  event timer_;
};

}  // namespace kv

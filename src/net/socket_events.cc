#include "socket_events.h"

#include "transport.h"

#include <event2/event.h>
#include <unistd.h>

#include <cmath>
#include <ctime>

namespace kv {
namespace {

constexpr double kMinTimer = 0.001;  // libevent timers below a millisecond fire at once

}  // namespace

SocketEvents::SocketEvents(event_base* base, int fd, Handler& handler, TransportOwner& owner)
    : handler_(handler), owner_(owner), fd_(fd) {
  event_assign(&read_, base, fd, EV_READ | EV_PERSIST, on_read, this);
  event_assign(&write_, base, fd, EV_WRITE | EV_PERSIST, on_write, this);
  evtimer_assign(&timer_, base, on_timer, this);
}

SocketEvents::~SocketEvents() { close(); }

void SocketEvents::want_read(bool on) {
  if (on == reading_ || fd_ < 0) return;
  reading_ = on;
  on ? event_add(&read_, nullptr) : event_del(&read_);
}

void SocketEvents::want_write(bool on) {
  if (on == writing_ || fd_ < 0) return;
  writing_ = on;
  on ? event_add(&write_, nullptr) : event_del(&write_);
}

void SocketEvents::arm_timer(double seconds) {
  if (fd_ < 0) return;
  if (seconds < kMinTimer) seconds = kMinTimer;
  double whole = std::floor(seconds);
  timeval tv{static_cast<time_t>(whole), static_cast<suseconds_t>((seconds - whole) * 1e6)};
  evtimer_add(&timer_, &tv);
}

void SocketEvents::activate_read() {
  if (fd_ >= 0) event_active(&read_, EV_READ, 1);
}

void SocketEvents::close() {
  if (fd_ < 0) return;
  event_del(&read_);
  event_del(&write_);
  evtimer_del(&timer_);
  ::close(fd_);
  fd_ = -1;
  reading_ = writing_ = false;
}

void SocketEvents::on_read(int, short, void* arg) {
  auto& self = *static_cast<SocketEvents*>(arg);
  TransportOwner& owner = self.owner_;  // `self` may be freed by reap()
  self.handler_.on_socket_readable();
  owner.reap();
}

void SocketEvents::on_write(int, short, void* arg) {
  auto& self = *static_cast<SocketEvents*>(arg);
  TransportOwner& owner = self.owner_;
  self.handler_.on_socket_writable();
  owner.reap();
}

void SocketEvents::on_timer(int, short, void* arg) {
  auto& self = *static_cast<SocketEvents*>(arg);
  TransportOwner& owner = self.owner_;
  self.handler_.on_socket_timer();
  owner.reap();
}

}  // namespace kv

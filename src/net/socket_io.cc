#include "socket_io.h"

#include <sys/socket.h>

#include <cerrno>

namespace kv {
namespace {

bool blocked() { return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR; }

}  // namespace

IoResult socket_recv(int fd, char* buffer, size_t size, int flags) {
  ssize_t got = ::recv(fd, buffer, size, flags);
  if (got > 0) return {IoResult::ok, static_cast<size_t>(got)};
  if (got == 0) return {IoResult::eof, 0};
  return {blocked() ? IoResult::would_block : IoResult::error, 0};
}

IoResult socket_send(int fd, const char* data, size_t size) {
  ssize_t sent = ::send(fd, data, size, MSG_NOSIGNAL);
  if (sent >= 0) return {sent > 0 ? IoResult::ok : IoResult::would_block, static_cast<size_t>(sent)};
  return {blocked() ? IoResult::would_block : IoResult::error, 0};
}

SocketIo::SocketIo(LoopContext& loop, event_base* base, int fd, TransportOwner& owner)
    : owner_(owner), events_(base, fd, *this, owner), connection_(loop, *this) {}

IoResult SocketIo::recv(char* buffer, size_t size) { return socket_recv(events_.fd(), buffer, size, 0); }

IoResult SocketIo::peek(char* buffer, size_t size) { return socket_recv(events_.fd(), buffer, size, MSG_PEEK); }

IoResult SocketIo::send(const char* data, size_t size) { return socket_send(events_.fd(), data, size); }

void SocketIo::shutdown_write() { ::shutdown(events_.fd(), SHUT_WR); }

void SocketIo::close() {
  events_.close();
  owner_.retire(*this);
}

}  // namespace kv

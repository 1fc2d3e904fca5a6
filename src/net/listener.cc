#include "listener.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace kv {
namespace {

// Parses --bind/--port into a socket address; returns false if bind is not an IP address.
bool make_address(const std::string& bind, uint16_t port, sockaddr_storage& address, socklen_t& size) {
  address = {};
  auto* v4 = reinterpret_cast<sockaddr_in*>(&address);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&address);
  if (inet_pton(AF_INET, bind.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(port);
    size = sizeof *v4;
    return true;
  }
  if (inet_pton(AF_INET6, bind.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(port);
    size = sizeof *v6;
    return true;
  }
  return false;
}

// SO_REUSEPORT would let a second kvcache share the port and split the
// clients between two caches: binding once without it fails if anyone listens.
std::string check_port_free(const sockaddr_storage& address, socklen_t size) {
  int probe = socket(address.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (probe < 0) return fmt::format("socket: {}", std::strerror(errno));
  int on = 1;
  setsockopt(probe, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
  int result = bind(probe, reinterpret_cast<const sockaddr*>(&address), size);
  int error = errno;
  ::close(probe);
  return result == 0 ? std::string() : std::string(std::strerror(error));
}

}  // namespace

Result<int> open_listener(const std::string& bind, uint16_t port, bool probe) {
  sockaddr_storage address;
  socklen_t address_size = 0;
  if (!make_address(bind, port, address, address_size)) {
    return fail(fmt::format("--bind {:?} is not an IPv4 or IPv6 address", bind));
  }
  if (probe) {
    if (std::string busy = check_port_free(address, address_size); !busy.empty()) {
      return fail(fmt::format("bind {}:{}: {}", bind, port, busy));
    }
  }
  int fd = socket(address.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return fail(fmt::format("socket: {}", std::strerror(errno)));
  auto failed = [fd](std::string message) {
    ::close(fd);
    return fail(std::move(message));
  };
  int on = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) != 0) {
    return failed(fmt::format("SO_REUSEPORT: {}", std::strerror(errno)));
  }
  if (::bind(fd, reinterpret_cast<sockaddr*>(&address), address_size) != 0) {
    return failed(fmt::format("bind {}:{}: {}", bind, port, std::strerror(errno)));
  }
  if (::listen(fd, SOMAXCONN) != 0) return failed(fmt::format("listen: {}", std::strerror(errno)));
  return fd;
}

}  // namespace kv

#include "health_check.h"

#include "log.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <string>

namespace kv {

int run_health_check(uint16_t port) {
  constexpr int kTimeoutMs = 2000;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 1;
  timeval timeout{kTimeoutMs / 1000, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(port);
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string response;
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0) {
    constexpr std::string_view kRequest = "GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    if (send(fd, kRequest.data(), kRequest.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(kRequest.size())) {
      char buffer[512];
      ssize_t got;
      while (response.size() < 4096 && (got = recv(fd, buffer, sizeof buffer, 0)) > 0) response.append(buffer, got);
    }
  }
  close(fd);
  bool healthy = response.rfind("HTTP/1.1 200 ", 0) == 0;
  if (!healthy) log(LogLevel::error, "health check of 127.0.0.1:{} failed", port);
  return healthy ? 0 : 1;
}

}  // namespace kv

#include "health_check.h"

#include "log.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <string>

namespace kv {
namespace {

constexpr std::string_view kRequest = "GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
constexpr size_t kMaxResponse = 4096;

// The probe checks that this server answers, not who it is: it connects to
// loopback and does not verify the server's certificate. Under mutual TLS it
// presents the server's own certificate, so that one must be issued by
// --tls-client-ca for client use too (docs/operations.md, "TLS").
std::string ask_tls(int fd, const Config& config) {
  std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> ctx(SSL_CTX_new(TLS_client_method()), SSL_CTX_free);
  if (!ctx) return {};
  if (!config.tls_client_ca.empty() &&
      (SSL_CTX_use_certificate_chain_file(ctx.get(), config.tls_cert.c_str()) != 1 ||
       SSL_CTX_use_PrivateKey_file(ctx.get(), config.tls_key.c_str(), SSL_FILETYPE_PEM) != 1)) {
    log(LogLevel::error, "health check: cannot load --tls-cert/--tls-key as the client certificate");
    return {};
  }
  std::unique_ptr<SSL, decltype(&SSL_free)> ssl(SSL_new(ctx.get()), SSL_free);
  std::string response;
  if (!ssl || SSL_set_fd(ssl.get(), fd) != 1 || SSL_connect(ssl.get()) != 1 ||
      SSL_write(ssl.get(), kRequest.data(), static_cast<int>(kRequest.size())) != static_cast<int>(kRequest.size())) {
    return response;
  }
  char buffer[512];
  int got;
  while (response.size() < kMaxResponse && (got = SSL_read(ssl.get(), buffer, sizeof buffer)) > 0) response.append(buffer, got);
  return response;
}

std::string ask_plain(int fd) {
  std::string response;
  if (send(fd, kRequest.data(), kRequest.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(kRequest.size())) {
    char buffer[512];
    ssize_t got;
    while (response.size() < kMaxResponse && (got = recv(fd, buffer, sizeof buffer, 0)) > 0) response.append(buffer, got);
  }
  return response;
}

}  // namespace

int run_health_check(const Config& config) {
  constexpr int kTimeoutMs = 2000;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 1;
  timeval timeout{kTimeoutMs / 1000, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(config.port);
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string response;
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0) {
    response = config.tls() ? ask_tls(fd, config) : ask_plain(fd);
  }
  close(fd);
  bool healthy = response.rfind("HTTP/1.1 200 ", 0) == 0;
  if (!healthy) log(LogLevel::error, "health check of {}://127.0.0.1:{} failed", config.tls() ? "https" : "http", config.port);
  return healthy ? 0 : 1;
}

}  // namespace kv

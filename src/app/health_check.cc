#include "health_check.h"

#include "log.h"
#include "result.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <string>

namespace kv {
namespace {

constexpr std::string_view kRequest = "GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
constexpr size_t kMaxResponse = 4096;
constexpr int kTimeoutSeconds = 2;

// Why a socket call failed: a timeout (SO_RCVTIMEO/SO_SNDTIMEO) or the errno.
std::string socket_error(int error) {
  if (error == EAGAIN || error == EWOULDBLOCK || error == EINPROGRESS) {
    return fmt::format("timeout: no answer within {}s", kTimeoutSeconds);
  }
  if (error == 0) return "connection closed before a response";
  std::string text = std::strerror(error);
  if (!text.empty()) text[0] = static_cast<char>(std::tolower(static_cast<unsigned char>(text[0])));
  return text;
}

std::string tls_error(SSL* ssl, int rc) {
  int kind = SSL_get_error(ssl, rc);
  if (kind == SSL_ERROR_SYSCALL) return socket_error(errno);
  unsigned long code = ERR_peek_last_error();
  const char* reason = code != 0 ? ERR_reason_error_string(code) : nullptr;
  ERR_clear_error();
  return fmt::format("TLS error: {}", reason != nullptr ? reason : "the handshake failed");
}

// The probe checks that this server answers, not who it is: it connects to
// loopback and does not verify the server's certificate. Under mutual TLS it
// presents the server's own certificate, so that one must be issued by
// --tls-client-ca for client use too (docs/operations.md, "TLS").
Result<std::string> ask_tls(int fd, const Config& config) {
  std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> ctx(SSL_CTX_new(TLS_client_method()), SSL_CTX_free);
  if (!ctx) return fail("TLS error: cannot create a TLS context");
  if (!config.tls_client_ca.empty() &&
      (SSL_CTX_use_certificate_chain_file(ctx.get(), config.tls_cert.c_str()) != 1 ||
       SSL_CTX_use_PrivateKey_file(ctx.get(), config.tls_key.c_str(), SSL_FILETYPE_PEM) != 1)) {
    ERR_clear_error();
    return fail("TLS error: cannot load --tls-cert/--tls-key as the client certificate");
  }
  std::unique_ptr<SSL, decltype(&SSL_free)> ssl(SSL_new(ctx.get()), SSL_free);
  if (!ssl || SSL_set_fd(ssl.get(), fd) != 1) return fail("TLS error: cannot create a TLS connection");
  if (int rc = SSL_connect(ssl.get()); rc != 1) return fail(tls_error(ssl.get(), rc));
  int sent = SSL_write(ssl.get(), kRequest.data(), static_cast<int>(kRequest.size()));
  if (sent != static_cast<int>(kRequest.size())) return fail(tls_error(ssl.get(), sent));
  std::string response;
  char buffer[512];
  int got = 0;
  while (response.size() < kMaxResponse && (got = SSL_read(ssl.get(), buffer, sizeof buffer)) > 0) {
    response.append(buffer, static_cast<size_t>(got));
  }
  if (response.empty()) return fail(tls_error(ssl.get(), got));
  return response;
}

Result<std::string> ask_plain(int fd) {
  if (send(fd, kRequest.data(), kRequest.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(kRequest.size())) {
    return fail(socket_error(errno));
  }
  std::string response;
  char buffer[512];
  ssize_t got = 0;
  while (response.size() < kMaxResponse && (got = recv(fd, buffer, sizeof buffer, 0)) > 0) {
    response.append(buffer, static_cast<size_t>(got));
  }
  if (response.empty()) return fail(socket_error(got < 0 ? errno : 0));
  return response;
}

Result<void> check(const Config& config) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return fail(fmt::format("cannot create a socket: {}", std::strerror(errno)));
  timeval timeout{kTimeoutSeconds, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(config.port);
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  Result<std::string> response = fail("");
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
    response = fail(socket_error(errno));
  } else {
    response = config.tls() ? ask_tls(fd, config) : ask_plain(fd);
  }
  close(fd);
  if (!response) return fail(response.error());
  // "HTTP/1.1 200 OK\r\n..."
  const std::string& head = response.value();
  if (head.rfind("HTTP/1.", 0) != 0 || head.size() < 12) return fail("not an HTTP response");
  if (head.compare(9, 3, "200") != 0) return fail(fmt::format("status {}", head.substr(9, 3)));
  return {};
}

}  // namespace

int run_health_check(const Config& config) {
  Result<void> healthy = check(config);
  if (!healthy) {
    log(LogLevel::error, "health check of {}://127.0.0.1:{}/health failed: {}", config.tls() ? "https" : "http",
        config.port, healthy.error());
  }
  return healthy ? 0 : 1;
}

}  // namespace kv

#include "tls.h"

#include "log.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <sys/socket.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <iterator>

namespace kv {
namespace {

// TLS 1.2 suites: forward secrecy and AEAD only (TLS 1.3's are all of that).
constexpr const char* kTls12Ciphers = "ECDHE+AESGCM:ECDHE+CHACHA20";
// The stateful cache serves TLS 1.2 clients that resume by session ID;
// tickets (stateless) serve the rest. Bounded: see kSessionCacheBytes.
constexpr long kSessionCacheSize = 2048;
constexpr long kSessionLifetimeSeconds = 3600;
constexpr unsigned char kSessionIdContext[] = "kvcache";
// ALPN wire format: one length-prefixed protocol.
constexpr unsigned char kAlpn[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
// SSL_CTX_get_tlsext_ticket_keys wants exactly this many bytes (name, HMAC and AES keys).
constexpr size_t kTicketKeyBytes = 80;

// A plain HTTP request sent to the TLS port is answered in the clear, as
// nginx answers "The plain HTTP request was sent to HTTPS port", then closed.
constexpr std::string_view kPlainHttpBody =
    R"({"status":"ERROR","message":"This port speaks TLS: send the request over https://"})";

void answer_plain_http(int fd) {
  // What the client sent must be read first: closing with unread bytes
  // would reset the connection and lose the answer. A request fits in a
  // few reads; a client that keeps sending is not waited for.
  char discard[4096];
  for (int i = 0; i < 16 && ::recv(fd, discard, sizeof discard, MSG_DONTWAIT) > 0; ++i) {
  }
  char response[512];
  int size = std::snprintf(response, sizeof response,
                           "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                           "Connection: close\r\n\r\n%.*s",
                           kPlainHttpBody.size(), static_cast<int>(kPlainHttpBody.size()), kPlainHttpBody.data());
  if (size > 0 && static_cast<size_t>(size) < sizeof response) {
    (void)::send(fd, response, static_cast<size_t>(size), MSG_NOSIGNAL | MSG_DONTWAIT);
  }
  ::shutdown(fd, SHUT_WR);
}

// The reason of the most recent OpenSSL error ("key values mismatch"), and
// an empty queue afterwards.
std::string openssl_error() {
  unsigned long code = ERR_peek_last_error();
  ERR_clear_error();
  if (code == 0) return "unknown OpenSSL error";
  const char* reason = ERR_reason_error_string(code);
  return reason != nullptr ? reason : fmt::format("OpenSSL error {:#x}", code);
}

// fopen's errno says "No such file" or "Permission denied" better than OpenSSL's "system lib".
Result<void> check_readable(std::string_view flag, const std::string& path) {
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) return fail(fmt::format("{} {}: {}", flag, path, std::strerror(errno)));
  std::fclose(file);
  return {};
}

struct X509Deleter {
  void operator()(X509* x) const { X509_free(x); }
};
struct KeyDeleter {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};

// "RSA 2048-bit", "EC 256-bit": what a key is, for a message about a mismatch.
std::string describe_key(const EVP_PKEY* key) {
  if (key == nullptr) return "no key";
  const char* type = EVP_PKEY_get0_type_name(key);
  return fmt::format("{} {}-bit", type != nullptr ? type : "unknown", EVP_PKEY_get_bits(key));
}

// The first certificate of the chain file and the key, read as PEM by
// ourselves first, so that each error says what to fix rather than
// OpenSSL's "PEM lib" or "no certificate assigned" (what a key of another
// type than the certificate's gets from SSL_CTX_check_private_key).
Result<void> check_pair(const TlsFiles& files) {
  std::unique_ptr<BIO, decltype(&BIO_free)> cert_file(BIO_new_file(files.cert.c_str(), "rb"), BIO_free);
  std::unique_ptr<X509, X509Deleter> cert(cert_file ? PEM_read_bio_X509(cert_file.get(), nullptr, nullptr, nullptr)
                                                    : nullptr);
  if (!cert) {
    ERR_clear_error();
    return fail(fmt::format("--tls-cert {}: not a PEM certificate (expected a \"-----BEGIN CERTIFICATE-----\" block, "
                            "the server's certificate first, then any intermediates)",
                            files.cert));
  }
  std::unique_ptr<BIO, decltype(&BIO_free)> key_file(BIO_new_file(files.key.c_str(), "rb"), BIO_free);
  // A passphrase callback that gives none: an encrypted key fails here instead of prompting.
  auto no_passphrase = [](char*, int, int, void*) { return 0; };
  std::unique_ptr<EVP_PKEY, KeyDeleter> key(
      key_file ? PEM_read_bio_PrivateKey(key_file.get(), nullptr, no_passphrase, nullptr) : nullptr);
  if (!key) {
    ERR_clear_error();
    return fail(fmt::format("--tls-key {}: not a PEM private key (expected a \"-----BEGIN PRIVATE KEY-----\" "
                            "or \"-----BEGIN EC/RSA PRIVATE KEY-----\" block, not encrypted)",
                            files.key));
  }
  const EVP_PKEY* public_key = X509_get0_pubkey(cert.get());
  if (public_key == nullptr || EVP_PKEY_eq(public_key, key.get()) != 1) {
    ERR_clear_error();
    return fail(fmt::format("--tls-key {} does not match the certificate in --tls-cert {} (key: {}, certificate's "
                            "key: {}): give the key the certificate was issued for",
                            files.key, files.cert, describe_key(key.get()), describe_key(public_key)));
  }
  return {};
}

int select_alpn(SSL*, const unsigned char** out, unsigned char* out_size, const unsigned char* offered,
                unsigned int offered_size, void*) {
  unsigned char* selected = nullptr;
  if (SSL_select_next_proto(&selected, out_size, kAlpn, sizeof kAlpn, offered, offered_size) !=
      OPENSSL_NPN_NEGOTIATED) {
    return SSL_TLSEXT_ERR_ALERT_FATAL;  // RFC 7301: no_application_protocol (h2-only clients)
  }
  *out = selected;
  return SSL_TLSEXT_ERR_OK;
}

int64_t not_after(SSL_CTX* ctx) {
  X509* leaf = SSL_CTX_get0_certificate(ctx);
  tm when{};
  if (leaf == nullptr || ASN1_TIME_to_tm(X509_get0_notAfter(leaf), &when) != 1) return 0;
  return static_cast<int64_t>(timegm(&when));
}

// The gauge holds no negative time (a certificate from before 1970 reads as 0).
uint64_t expiry_value(int64_t unix_seconds) { return unix_seconds > 0 ? static_cast<uint64_t>(unix_seconds) : 0; }

struct CtxDeleter {
  void operator()(SSL_CTX* ctx) const { SSL_CTX_free(ctx); }
};
using CtxPtr = std::unique_ptr<SSL_CTX, CtxDeleter>;

Result<CtxPtr> build_context(const TlsFiles& files) {
  for (auto [flag, path] : {std::pair<std::string_view, const std::string*>{"--tls-cert", &files.cert},
                            {"--tls-key", &files.key}, {"--tls-client-ca", &files.client_ca}}) {
    if (path->empty()) continue;
    if (Result<void> readable = check_readable(flag, *path); !readable) return fail(readable.error());
  }
  if (Result<void> pair = check_pair(files); !pair) return fail(pair.error());
  ERR_clear_error();
  CtxPtr ctx(SSL_CTX_new(TLS_server_method()));
  if (!ctx) return fail("cannot create a TLS context: " + openssl_error());
  SSL_CTX* c = ctx.get();
  SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION);
  // IGNORE_UNEXPECTED_EOF: most HTTP clients close without close_notify; HTTP
  // framing, not TLS, says whether a request is complete.
  SSL_CTX_set_options(c, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_ENABLE_KTLS |
                             SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_COMPRESSION);
  // RELEASE_BUFFERS: an idle connection gives its record buffers (~34 KiB) back.
  // PARTIAL_WRITE + MOVING_WRITE_BUFFER: send() behaves as the socket's, and
  // a retry may come from a connection's grown (moved) output string.
  SSL_CTX_set_mode(c, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                          SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  // Whole socket reads instead of a header then a body per record.
  SSL_CTX_set_read_ahead(c, 1);
  if (SSL_CTX_set_cipher_list(c, kTls12Ciphers) != 1) return fail("cannot set the TLS 1.2 ciphers: " + openssl_error());
  SSL_CTX_set_session_id_context(c, kSessionIdContext, sizeof kSessionIdContext - 1);
  SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_SERVER);
  SSL_CTX_sess_set_cache_size(c, kSessionCacheSize);
  SSL_CTX_set_timeout(c, kSessionLifetimeSeconds);
  SSL_CTX_set_alpn_select_cb(c, select_alpn, nullptr);

  if (SSL_CTX_use_certificate_chain_file(c, files.cert.c_str()) != 1) {
    return fail(fmt::format("--tls-cert {}: {}", files.cert, openssl_error()));
  }
  if (SSL_CTX_use_PrivateKey_file(c, files.key.c_str(), SSL_FILETYPE_PEM) != 1 || SSL_CTX_check_private_key(c) != 1) {
    return fail(fmt::format("--tls-key {} does not match the certificate in --tls-cert {}: {}", files.key, files.cert,
                            openssl_error()));
  }
  if (!files.client_ca.empty()) {
    STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(files.client_ca.c_str());
    if (names == nullptr || SSL_CTX_load_verify_locations(c, files.client_ca.c_str(), nullptr) != 1) {
      if (names != nullptr) sk_X509_NAME_pop_free(names, X509_NAME_free);
      return fail(fmt::format("--tls-client-ca {}: no PEM CA certificate ({})", files.client_ca, openssl_error()));
    }
    SSL_CTX_set_client_CA_list(c, names);
    SSL_CTX_set_verify(c, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  }
  ERR_clear_error();
  return ctx;
}

void log_handshake_failure(SSL* ssl, TlsFailure reason, std::string_view detail) {
  static LogThrottle throttle;
  throttle.warn([&](uint64_t suppressed) {
    sockaddr_storage peer{};
    socklen_t size = sizeof peer;
    char address[INET6_ADDRSTRLEN] = "?";
    if (getpeername(SSL_get_fd(ssl), reinterpret_cast<sockaddr*>(&peer), &size) == 0) {
      const void* ip = peer.ss_family == AF_INET6 ? static_cast<const void*>(&reinterpret_cast<sockaddr_in6*>(&peer)->sin6_addr)
                                                   : &reinterpret_cast<sockaddr_in*>(&peer)->sin_addr;
      inet_ntop(peer.ss_family, ip, address, sizeof address);
    }
    log(LogLevel::warn, "tls: handshake from {} failed: {}{}{} ({} more failed since the last such line; "
        "see kvcache_tls_handshake_failures_total)",
        address, tls_failure_name(reason), detail.empty() ? "" : ": ", detail, suppressed);
  });
}

}  // namespace

std::string_view tls_failure_name(TlsFailure failure) {
  return kTlsFailureNames[static_cast<size_t>(failure)];
}

Result<std::unique_ptr<TlsContext>> TlsContext::load(const TlsFiles& files) {
  Result<CtxPtr> ctx = build_context(files);
  if (!ctx) return fail(ctx.error());
  std::unique_ptr<TlsContext> context(new TlsContext(files, ctx.value().release()));
  context->metrics_[tls_slot::kCertificateExpiry].set(expiry_value(not_after(context->ctx_)));
  return context;
}

TlsContext::~TlsContext() { SSL_CTX_free(ctx_); }

Result<void> TlsContext::reload() {
  Result<CtxPtr> built = build_context(files_);
  if (!built) {
    metrics_[tls_slot::kReloads + 1].add();
    return fail(built.error());
  }
  CtxPtr& fresh = built.value();
  std::lock_guard lock(mutex_);
  unsigned char keys[kTicketKeyBytes];
  if (SSL_CTX_get_tlsext_ticket_keys(ctx_, keys, sizeof keys) == 1) {
    SSL_CTX_set_tlsext_ticket_keys(fresh.get(), keys, sizeof keys);
  }
  OPENSSL_cleanse(keys, sizeof keys);
  metrics_[tls_slot::kCertificateExpiry].set(expiry_value(not_after(fresh.get())));
  SSL_CTX_free(ctx_);  // connections still using it hold their own references
  ctx_ = fresh.release();
  metrics_[tls_slot::kReloads].add();
  return {};
}

SSL* TlsContext::new_ssl(int fd) {
  SSL_CTX* ctx;
  {
    std::lock_guard lock(mutex_);
    ctx = ctx_;
    SSL_CTX_up_ref(ctx);
  }
  SSL* ssl = SSL_new(ctx);
  SSL_CTX_free(ctx);  // the SSL holds its own reference
  if (ssl != nullptr && SSL_set_fd(ssl, fd) != 1) {
    SSL_free(ssl);
    ssl = nullptr;
  }
  if (ssl == nullptr) {
    ERR_clear_error();
    return nullptr;
  }
  SSL_set_accept_state(ssl);
  return ssl;
}

bool TlsContext::kernel_tls_available() {
  std::ifstream ulp("/proc/sys/net/ipv4/tcp_available_ulp");
  std::string name;
  while (ulp >> name) {
    if (name == "tls") return true;
  }
  return false;
}

TlsStream::TlsStream(SSL* ssl, TlsMetrics& metrics) : ssl_(ssl), metrics_(metrics) {}

TlsStream::~TlsStream() {
  // Without this, freeing an SSL that saw no close_notify drops its session
  // from the cache: clients that just close (most do) could not resume.
  if (handshake_done_ && !failed_) SSL_set_shutdown(ssl_, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
  SSL_free(ssl_);
}

IoResult TlsStream::fail(TlsFailure reason) {
  if (!failed_) {
    failed_ = true;
    if (!handshake_done_) {
      metrics_[tls_slot::kFailures + static_cast<size_t>(reason)].add();
      unsigned long code = ERR_peek_error();
      const char* detail = code != 0 ? ERR_reason_error_string(code) : nullptr;
      log_handshake_failure(ssl_, reason, detail != nullptr ? detail : "");
    }
  }
  ERR_clear_error();
  return {IoResult::error, 0};
}

IoResult TlsStream::handshake(bool& wants_write) {
  if (failed_) return {IoResult::error, 0};
  if (timed_out_) return fail(TlsFailure::incomplete);
  ERR_clear_error();
  int rc = SSL_do_handshake(ssl_);
  if (rc == 1) {
    handshake_done_ = true;
    int version = SSL_version(ssl_) == TLS1_3_VERSION ? 1 : 0;
    metrics_[tls_slot::kHandshakes + version * 2 + (SSL_session_reused(ssl_) ? 1 : 0)].add();
    if (BIO_get_ktls_send(SSL_get_wbio(ssl_))) metrics_[tls_slot::kKtlsConnections].add();
    return {IoResult::ok, 0};
  }
  switch (SSL_get_error(ssl_, rc)) {
    case SSL_ERROR_WANT_READ:
      return {IoResult::would_block, 0};
    case SSL_ERROR_WANT_WRITE:
      wants_write = true;
      return {IoResult::would_block, 0};
    case SSL_ERROR_SSL:
      break;
    default:  // the client closed or reset the connection
      return fail(TlsFailure::incomplete);
  }
  switch (ERR_GET_REASON(ERR_peek_error())) {
    case SSL_R_HTTP_REQUEST:
      answer_plain_http(SSL_get_fd(ssl_));
      return fail(TlsFailure::plain_http);
    case SSL_R_HTTPS_PROXY_REQUEST:
      return fail(TlsFailure::plain_http);
    case SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE:
      return fail(TlsFailure::no_client_cert);
    case SSL_R_CERTIFICATE_VERIFY_FAILED:
      return fail(TlsFailure::bad_client_cert);
    default:
      return fail(TlsFailure::protocol);
  }
}

void TlsStream::handshake_timed_out() {
  if (!handshake_done_) timed_out_ = true;
}

void TlsStream::closing() {
  if (!handshake_done_ && !failed_) fail(TlsFailure::incomplete);
}

IoResult TlsStream::recv(char* buffer, size_t size) {
  size_t taken = std::min(size, stash_.size());
  if (taken > 0) {
    std::memcpy(buffer, stash_.data(), taken);
    stash_.erase(0, taken);
    if (stash_.empty()) std::string().swap(stash_);  // its memory goes with it
    if (taken == size) return {IoResult::ok, taken};
  }
  IoResult more = read(buffer + taken, size - taken, false);
  if (taken == 0) return more;
  // An eof or error after the stash is reported by the next call.
  return {IoResult::ok, taken + (more.kind == IoResult::ok ? more.bytes : 0)};
}

IoResult TlsStream::peek(char* buffer, size_t size) {
  size_t seen = std::min(size, stash_.size());
  std::memcpy(buffer, stash_.data(), seen);
  if (seen < size) {
    // On to EAGAIN: a record the read-ahead buffer had no room for is still in the socket.
    IoResult more = read(buffer + seen, size - seen, true);
    if (more.kind != IoResult::ok) return seen > 0 ? IoResult{IoResult::ok, seen} : more;
    if (stash_.empty()) stash_.reserve(size);
    stash_.append(buffer + seen, more.bytes);
    seen += more.bytes;
  }
  return {IoResult::ok, seen};
}

IoResult TlsStream::read(char* buffer, size_t size, bool until_blocked) {
  read_wants_write_ = false;
  if (!handshake_done_) {
    IoResult done = handshake(read_wants_write_);
    if (done.kind != IoResult::ok) return done;
  }
  if (failed_) return {IoResult::error, 0};
  if (eof_) return {IoResult::eof, 0};
  size_t total = 0;
  bool broken = false;
  while (total < size) {
    ERR_clear_error();
    size_t got = 0;
    int rc = SSL_read_ex(ssl_, buffer + total, size - total, &got);
    if (rc == 1) {
      total += got;
      // Nothing left in OpenSSL's buffer: the socket says when more comes
      // (level-triggered), so no read that would only return EAGAIN.
      if (!until_blocked && SSL_has_pending(ssl_) == 0) break;
      continue;
    }
    int error = SSL_get_error(ssl_, rc);
    if (error == SSL_ERROR_WANT_WRITE) read_wants_write_ = true;
    if (error == SSL_ERROR_ZERO_RETURN) eof_ = true;
    broken = error != SSL_ERROR_WANT_READ && error != SSL_ERROR_WANT_WRITE && error != SSL_ERROR_ZERO_RETURN;
    break;
  }
  // A full buffer may leave whole records in OpenSSL's (read-ahead) buffer.
  buffered_ = total == size && SSL_has_pending(ssl_) == 1;
  if (broken) failed_ = true;  // bytes read before the failure are still delivered
  ERR_clear_error();
  if (total > 0) return {IoResult::ok, total};
  if (eof_) return {IoResult::eof, 0};
  return {failed_ ? IoResult::error : IoResult::would_block, 0};
}

IoResult TlsStream::send(const char* data, size_t size) {
  write_wants_read_ = false;
  if (!handshake_done_) {
    // An answer before the handshake is done (a 503 at the connection
    // limit): the write waits for the client's handshake messages.
    bool wants_write = false;
    IoResult done = handshake(wants_write);
    if (done.kind == IoResult::would_block) write_wants_read_ = !wants_write;
    if (done.kind != IoResult::ok) return done;
  }
  if (failed_) return {IoResult::error, 0};
  size_t total = 0;
  while (total < size) {
    ERR_clear_error();
    size_t sent = 0;
    int rc = SSL_write_ex(ssl_, data + total, size - total, &sent);
    if (rc == 1) {
      total += sent;
      continue;
    }
    int error = SSL_get_error(ssl_, rc);
    if (error == SSL_ERROR_WANT_READ) write_wants_read_ = true;
    if (error != SSL_ERROR_WANT_READ && error != SSL_ERROR_WANT_WRITE) failed_ = true;
    break;
  }
  ERR_clear_error();
  write_blocked_ = total < size && !failed_;
  if (total > 0) return {IoResult::ok, total};
  return {failed_ ? IoResult::error : IoResult::would_block, 0};
}

void TlsStream::shutdown() {
  if (!handshake_done_ || failed_) return;
  ERR_clear_error();
  SSL_shutdown(ssl_);  // sends close_notify; the client's is not waited for
  ERR_clear_error();
}

TlsStream::Dispatch TlsStream::on_event(bool readable, bool writable) {
  Dispatch run{false, false};
  if (readable) {
    run.write = write_wants_read_;
    run.read = conn_read_ && !read_wants_write_;
  }
  if (writable) {
    run.read = run.read || read_wants_write_;
    run.write = run.write || (conn_write_ && !write_wants_read_);
  }
  return run;
}

size_t TlsStream::held_bytes() const {
  return kIdleBytes + (records_held() ? kActiveBytes : 0) + (stash_.empty() ? 0 : stash_.capacity());
}

}  // namespace kv

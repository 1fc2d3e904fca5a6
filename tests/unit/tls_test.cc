// TlsContext (load, reload, mutual TLS) and TlsStream (handshake, records,
// the want-read/want-write translation, failures by reason) over socketpairs,
// against an OpenSSL client in the same thread.
#include "tls.h"
#include "tls_io.h"

#include "connection.h"
#include "fake_io.h"
#include "test_certs.h"

#include <doctest/doctest.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <unistd.h>
#include <fcntl.h>
#include <openssl/crypto.h>

#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <poll.h>
#include <fstream>
#include <string>

using namespace kv;
using kv::test::CertDir;

namespace {

// OpenSSL's allocations, counted per thread (a 16-byte header keeps each size).
thread_local int64_t openssl_live_bytes = 0;
thread_local int64_t openssl_peak_bytes = 0;
constexpr size_t kHeader = 16;

void* counted_malloc(size_t size, const char*, int) {
  auto* block = static_cast<char*>(std::malloc(size + kHeader));
  if (block == nullptr) return nullptr;
  std::memcpy(block, &size, sizeof size);
  openssl_live_bytes += static_cast<int64_t>(size);
  openssl_peak_bytes = std::max(openssl_peak_bytes, openssl_live_bytes);
  return block + kHeader;
}

void counted_free(void* pointer, const char*, int) {
  if (pointer == nullptr) return;
  char* block = static_cast<char*>(pointer) - kHeader;
  size_t size;
  std::memcpy(&size, block, sizeof size);
  openssl_live_bytes -= static_cast<int64_t>(size);
  std::free(block);
}

void* counted_realloc(void* pointer, size_t size, const char* file, int line) {
  if (pointer == nullptr) return counted_malloc(size, file, line);
  char* old_block = static_cast<char*>(pointer) - kHeader;
  size_t old_size;
  std::memcpy(&old_size, old_block, sizeof old_size);
  void* fresh = counted_malloc(size, file, line);
  if (fresh == nullptr) return nullptr;
  std::memcpy(fresh, pointer, std::min(old_size, size));
  counted_free(pointer, file, line);
  return fresh;
}

// Before OpenSSL's first allocation (static initialisation, before main).
const bool kCountingOpenSsl = CRYPTO_set_mem_functions(counted_malloc, counted_realloc, counted_free) == 1;

// OpenSSL writes with write(2): a client gone first would kill the test (the server ignores SIGPIPE too).
const bool kIgnoreSigpipe = signal(SIGPIPE, SIG_IGN) != SIG_ERR;

TlsFiles files_of(const CertDir& certs, bool mutual = false) {
  return {certs.path("server.pem"), certs.path("server.key"), mutual ? certs.path("ca.pem") : ""};
}

struct ClientOptions {
  std::string cert{}, key{};  // a client certificate, if any
  int max_version = 0;    // 0: TLS 1.3
  SSL_SESSION* session = nullptr;
  const unsigned char* alpn = reinterpret_cast<const unsigned char*>("\x08http/1.1");
  unsigned alpn_size = 9;
};

// A server TlsStream and a non-blocking OpenSSL client on the two ends of a socketpair.
struct Link {
  int server_fd = -1, client_fd = -1;
  SSL_CTX* client_ctx = nullptr;
  SSL* client = nullptr;
  std::unique_ptr<TlsStream> server;

  Link(TlsContext& context, const CertDir& certs, const ClientOptions& options = {}) {
    int fds[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fds) == 0);
    server_fd = fds[0];
    client_fd = fds[1];
    SSL* ssl = context.new_ssl(server_fd);
    REQUIRE(ssl != nullptr);
    server = std::make_unique<TlsStream>(ssl, context.metrics());
    server->want_read(true);
    client_ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_load_verify_locations(client_ctx, certs.path("ca.pem").c_str(), nullptr);
    SSL_CTX_set_verify(client_ctx, SSL_VERIFY_PEER, nullptr);
    if (options.max_version != 0) SSL_CTX_set_max_proto_version(client_ctx, options.max_version);
    if (!options.cert.empty()) {
      REQUIRE(SSL_CTX_use_certificate_file(client_ctx, options.cert.c_str(), SSL_FILETYPE_PEM) == 1);
      REQUIRE(SSL_CTX_use_PrivateKey_file(client_ctx, options.key.c_str(), SSL_FILETYPE_PEM) == 1);
    }
    if (options.alpn != nullptr) SSL_CTX_set_alpn_protos(client_ctx, options.alpn, options.alpn_size);
    client = SSL_new(client_ctx);
    SSL_set_fd(client, client_fd);
    SSL_set_tlsext_host_name(client, "localhost");
    if (options.session != nullptr) SSL_set_session(client, options.session);
    SSL_set_connect_state(client);
  }
  ~Link() {
    server.reset();
    SSL_set_shutdown(client, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);  // keeps its session resumable
    SSL_free(client);
    SSL_CTX_free(client_ctx);
    if (server_fd >= 0) ::close(server_fd);
    if (client_fd >= 0) ::close(client_fd);
  }

  // Steps both sides until the handshake is over; returns the server's last result.
  IoResult handshake() {
    char scratch[64];
    IoResult last{IoResult::would_block, 0};
    bool client_done = false;
    for (int round = 0; round < 50; ++round) {
      if (!client_done) {
        ERR_clear_error();
        int rc = SSL_do_handshake(client);
        client_done = rc == 1;
        int error = rc == 1 ? SSL_ERROR_NONE : SSL_get_error(client, rc);
        if (error != SSL_ERROR_NONE && error != SSL_ERROR_WANT_READ && error != SSL_ERROR_WANT_WRITE) client_done = true;
      }
      last = server->recv(scratch, sizeof scratch);
      if (last.kind == IoResult::error || last.kind == IoResult::eof) return last;
      if (client_done && server->handshake_done()) {
        // TLS 1.3: the client reads the server's session tickets with its first read.
        char none[1];
        SSL_read(client, none, sizeof none);
        ERR_clear_error();
        return last;
      }
    }
    return last;
  }

  std::string client_read_all() {
    std::string got;
    char buffer[16384];
    for (int i = 0; i < 1000; ++i) {
      int n = SSL_read(client, buffer, sizeof buffer);
      if (n <= 0) break;
      got.append(buffer, n);
    }
    ERR_clear_error();
    return got;
  }
};

std::unique_ptr<TlsContext> load_context(const CertDir& certs, bool mutual = false) {
  auto loaded = TlsContext::load(files_of(certs, mutual));
  REQUIRE_MESSAGE(loaded, (loaded ? std::string() : loaded.error()));
  return std::move(loaded.value());
}

// A Link whose TLS 1.3 handshake is done, with its certificates and context.
struct Connected {
  explicit Connected(const char* name) : certs(name), context(load_context(certs)), link(*context, certs) {
    link.handshake();
    REQUIRE(link.server->handshake_done());
  }
  CertDir certs;
  std::unique_ptr<TlsContext> context;
  Link link;
};

uint64_t failures(const TlsContext& context, TlsFailure reason) {
  return context.metrics()[tls_slot::kFailures + static_cast<size_t>(reason)].get();
}

uint64_t handshakes(const TlsContext& context, int version13, int resumed) {
  return context.metrics()[tls_slot::kHandshakes + static_cast<size_t>(version13 * 2 + resumed)].get();
}

std::string server_subject(SSL* client) {
  X509* cert = SSL_get1_peer_certificate(client);
  if (cert == nullptr) return "";
  char name[256];
  X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, name, sizeof name);
  X509_free(cert);
  return name;
}

}  // namespace

TEST_CASE("context: loads a matching pair and reports the certificate's expiry") {
  CertDir certs("tls-load");
  auto loaded = TlsContext::load(files_of(certs, true));
  REQUIRE(loaded);
  std::unique_ptr<TlsContext>& context = loaded.value();
  int64_t expiry = static_cast<int64_t>(context->metrics()[tls_slot::kCertificateExpiry].get());
  CHECK(expiry > time(nullptr) + 29 * 86400);
  CHECK(expiry < time(nullptr) + 31 * 86400);
}

TEST_CASE("context: unreadable, malformed or mismatched files are errors naming the flag and file") {
  CertDir certs("tls-bad");
  std::ofstream(certs.path("garbage.pem")) << "not a certificate\n";
  struct Case {
    TlsFiles files;
    std::string expect;
  } cases[] = {
      {{certs.path("missing.pem"), certs.path("server.key"), ""}, "--tls-cert " + certs.path("missing.pem") + ": No such file"},
      {{certs.path("server.pem"), certs.path("missing.key"), ""}, "--tls-key " + certs.path("missing.key") + ": No such file"},
      {{certs.path("garbage.pem"), certs.path("server.key"), ""}, "--tls-cert " + certs.path("garbage.pem") + ": "},
      {{certs.path("server.pem"), certs.path("garbage.pem"), ""}, "--tls-key " + certs.path("garbage.pem") + ": "},
      {{certs.path("server.pem"), certs.path("client.key"), ""}, "does not match the certificate in --tls-cert"},
      {{certs.path("server.pem"), certs.path("server.key"), certs.path("garbage.pem")}, "--tls-client-ca " + certs.path("garbage.pem")},
      {{certs.path("server.pem"), certs.path("server.key"), certs.path("nope.pem")}, "--tls-client-ca " + certs.path("nope.pem") + ": No such file"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.expect);
    auto loaded = TlsContext::load(c.files);
    REQUIRE_FALSE(loaded);
    CHECK_MESSAGE(loaded.error().find(c.expect) != std::string::npos, loaded.error());
  }
}

TEST_CASE("context: a file error says what to fix, at start and on reload") {
  CertDir certs("tls-fix");
  // A certificate where the key should be: not "PEM lib".
  auto not_a_key = TlsContext::load({certs.path("server.pem"), certs.path("server.pem"), ""});
  REQUIRE_FALSE(not_a_key);
  CHECK(not_a_key.error() == "--tls-key " + certs.path("server.pem") +
                                 ": not a PEM private key (expected a \"-----BEGIN PRIVATE KEY-----\" or "
                                 "\"-----BEGIN EC/RSA PRIVATE KEY-----\" block, not encrypted)");
  // A key where the certificate should be.
  auto not_a_cert = TlsContext::load({certs.path("server.key"), certs.path("server.key"), ""});
  REQUIRE_FALSE(not_a_cert);
  CHECK(not_a_cert.error().find("--tls-cert " + certs.path("server.key") + ": not a PEM certificate") == 0);
  // An RSA key with the EC certificate: not "no certificate assigned".
  std::shared_ptr<EVP_PKEY> rsa(EVP_RSA_gen(2048), EVP_PKEY_free);
  REQUIRE(rsa);
  kv::test::write_pem(certs.path("rsa.key"), rsa.get());
  auto mismatched = TlsContext::load({certs.path("server.pem"), certs.path("rsa.key"), ""});
  REQUIRE_FALSE(mismatched);
  CHECK(mismatched.error() == "--tls-key " + certs.path("rsa.key") + " does not match the certificate in --tls-cert " +
                                  certs.path("server.pem") +
                                  " (key: RSA 2048-bit, certificate's key: EC 256-bit): give the key the certificate "
                                  "was issued for");
  // The same messages on SIGHUP, and the working pair stays.
  auto context = load_context(certs);
  kv::test::write_pem(certs.path("server.key"), rsa.get());
  Result<void> reloaded = context->reload();
  REQUIRE_FALSE(reloaded);
  CHECK(reloaded.error().find("does not match the certificate in --tls-cert") != std::string::npos);
  CHECK(reloaded.error().find("key: RSA 2048-bit") != std::string::npos);
  std::ofstream(certs.path("server.key")) << "-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n";
  reloaded = context->reload();
  REQUIRE_FALSE(reloaded);
  CHECK(reloaded.error().find(": not a PEM private key") != std::string::npos);
  CHECK(context->metrics()[tls_slot::kReloads + 1].get() == 2);
}

TEST_CASE("handshake: TLS 1.3 preferred, ALPN http/1.1, then records both ways") {
  CertDir certs("tls-hs");
  auto context = load_context(certs);
  Link link(*context, certs);
  CHECK(link.server->held_bytes() >= TlsStream::kIdleBytes + TlsStream::kActiveBytes);
  CHECK(link.handshake().kind == IoResult::would_block);
  REQUIRE(link.server->handshake_done());
  CHECK(SSL_version(link.client) == TLS1_3_VERSION);
  const unsigned char* alpn = nullptr;
  unsigned alpn_size = 0;
  SSL_get0_alpn_selected(link.client, &alpn, &alpn_size);
  CHECK(std::string(reinterpret_cast<const char*>(alpn), alpn_size) == "http/1.1");
  CHECK(handshakes(*context, 1, 0) == 1);
  CHECK(link.server->held_bytes() == TlsStream::kIdleBytes);

  std::string request = "GET /health HTTP/1.1\r\n\r\n";
  REQUIRE(SSL_write(link.client, request.data(), request.size()) == static_cast<int>(request.size()));
  char buffer[256];
  IoResult seen = link.server->peek(buffer, sizeof buffer);
  REQUIRE(seen.kind == IoResult::ok);
  CHECK(std::string(buffer, seen.bytes) == request);
  IoResult got = link.server->recv(buffer, sizeof buffer);
  REQUIRE(got.kind == IoResult::ok);
  CHECK(std::string(buffer, got.bytes) == request);
  CHECK(link.server->recv(buffer, sizeof buffer).kind == IoResult::would_block);
  IoResult sent = link.server->send("HTTP/1.1 200 OK\r\n\r\n", 19);
  CHECK(sent.kind == IoResult::ok);
  CHECK(sent.bytes == 19);
  CHECK(link.client_read_all() == "HTTP/1.1 200 OK\r\n\r\n");

  // close_notify from the client is an end of input.
  SSL_shutdown(link.client);
  CHECK(link.server->peek(buffer, sizeof buffer).kind == IoResult::eof);
  CHECK(link.server->recv(buffer, sizeof buffer).kind == IoResult::eof);
}

TEST_CASE("handshake: TLS 1.2 clients are served; a TLS 1.1 client is refused") {
  CertDir certs("tls-12");
  auto context = load_context(certs);
  {
    Link link(*context, certs, {.max_version = TLS1_2_VERSION});
    link.handshake();
    REQUIRE(link.server->handshake_done());
    CHECK(SSL_version(link.client) == TLS1_2_VERSION);
    CHECK(handshakes(*context, 0, 0) == 1);
  }
  {
    Link link(*context, certs, {.max_version = TLS1_1_VERSION});
    SSL_set_security_level(link.client, 0);
    CHECK(link.handshake().kind == IoResult::error);
    CHECK(failures(*context, TlsFailure::protocol) == 1);
  }
}

TEST_CASE("handshake: a client offering only h2 gets no_application_protocol") {
  CertDir certs("tls-alpn");
  auto context = load_context(certs);
  Link link(*context, certs, {.alpn = reinterpret_cast<const unsigned char*>("\x02h2"), .alpn_size = 3});
  CHECK(link.handshake().kind == IoResult::error);
  CHECK(failures(*context, TlsFailure::protocol) == 1);
  Link none(*context, certs, {.alpn = nullptr, .alpn_size = 0});  // no ALPN at all: fine
  none.handshake();
  CHECK(none.server->handshake_done());
}

TEST_CASE("session resumption: by ticket, and across a reload") {
  CertDir certs("tls-resume");
  auto context = load_context(certs);
  for (int max_version : {TLS1_2_VERSION, TLS1_3_VERSION}) {
    CAPTURE(max_version);
    SSL_SESSION* session = nullptr;
    {
      Link first(*context, certs, {.max_version = max_version});
      first.handshake();
      REQUIRE(first.server->handshake_done());
      session = SSL_get1_session(first.client);
      REQUIRE(session != nullptr);
    }
    {
      Link again(*context, certs, {.max_version = max_version, .session = session});
      again.handshake();
      REQUIRE(again.server->handshake_done());
      CHECK(SSL_session_reused(again.client) == 1);
    }
    CHECK(context->reload().ok());
    {
      Link after_reload(*context, certs, {.max_version = max_version, .session = session});
      after_reload.handshake();
      REQUIRE(after_reload.server->handshake_done());
      CHECK(SSL_session_reused(after_reload.client) == 1);  // the ticket keys carried over
    }
    SSL_SESSION_free(session);
  }
  CHECK(handshakes(*context, 1, 1) == 2);
  CHECK(handshakes(*context, 0, 1) == 2);
}

TEST_CASE("reload: a good pair is served to new connections; a bad one keeps the old") {
  CertDir certs("tls-reload");
  auto context = load_context(certs);
  Link before(*context, certs);
  before.handshake();
  CHECK(server_subject(before.client) == "localhost");

  // Rotate: a new certificate and key in the same files.
  auto rotated = kv::test::make_cert("rotated", &certs.ca, false);
  kv::test::write_pem(certs.path("server.pem"), rotated.cert.get());
  kv::test::write_pem(certs.path("server.key"), rotated.key.get());
  CHECK(context->reload().ok());
  CHECK(context->metrics()[tls_slot::kReloads].get() == 1);
  Link after(*context, certs);
  after.handshake();
  REQUIRE(after.server->handshake_done());
  CHECK(server_subject(after.client) == "rotated");
  // The connection opened before the reload keeps working on the old context.
  CHECK(before.server->send("x", 1).kind == IoResult::ok);

  // Half-written rotation: the key no longer matches. The rotated pair stays.
  kv::test::write_pem(certs.path("server.key"), certs.client.key.get());
  Result<void> failed = context->reload();
  REQUIRE_FALSE(failed);
  CHECK(failed.error().find("does not match") != std::string::npos);
  std::ofstream(certs.path("server.pem")) << "garbage";
  failed = context->reload();
  REQUIRE_FALSE(failed);
  CHECK(failed.error().find("--tls-cert") != std::string::npos);
  CHECK(context->metrics()[tls_slot::kReloads + 1].get() == 2);
  Link still(*context, certs);
  still.handshake();
  REQUIRE(still.server->handshake_done());
  CHECK(server_subject(still.client) == "rotated");
}

TEST_CASE("mutual TLS: a client certificate from the CA is required") {
  CertDir certs("tls-mtls");
  auto context = load_context(certs, true);
  SUBCASE("none") {
    Link link(*context, certs);
    CHECK(link.handshake().kind == IoResult::error);
    CHECK(failures(*context, TlsFailure::no_client_cert) == 1);
  }
  SUBCASE("from another CA") {
    Link link(*context, certs, {.cert = certs.path("stranger.pem"), .key = certs.path("stranger.key")});
    CHECK(link.handshake().kind == IoResult::error);
    CHECK(failures(*context, TlsFailure::bad_client_cert) == 1);
  }
  SUBCASE("from the CA, TLS 1.3 and 1.2") {
    for (int max_version : {TLS1_3_VERSION, TLS1_2_VERSION}) {
      Link link(*context, certs, {.cert = certs.path("client.pem"), .key = certs.path("client.key"), .max_version = max_version});
      link.handshake();
      CHECK(link.server->handshake_done());
    }
  }
}

TEST_CASE("bad input: plain HTTP, garbage, a client that leaves or stalls mid-handshake") {
  CertDir certs("tls-input");
  auto context = load_context(certs);
  char buffer[64];
  auto raw = [&](std::string_view bytes) {
    auto link = std::make_unique<Link>(*context, certs);
    REQUIRE(::send(link->client_fd, bytes.data(), bytes.size(), 0) == static_cast<ssize_t>(bytes.size()));
    return link;
  };
  CHECK(raw("GET / HTTP/1.1\r\nHost: x\r\n\r\n")->server->recv(buffer, sizeof buffer).kind == IoResult::error);
  CHECK(raw("POST /put HTTP/1.1\r\n\r\n")->server->recv(buffer, sizeof buffer).kind == IoResult::error);
  CHECK(failures(*context, TlsFailure::plain_http) == 2);
  std::string garbage(300, '\x16');
  CHECK(raw(garbage)->server->recv(buffer, sizeof buffer).kind == IoResult::error);
  CHECK(raw(std::string_view("\x16\x03\x01\x00\x04\x01\x00\x00\x00", 9))->server->recv(buffer, sizeof buffer).kind == IoResult::error);
  CHECK(failures(*context, TlsFailure::protocol) == 2);

  {  // the client leaves after its ClientHello
    Link link(*context, certs);
    SSL_do_handshake(link.client);
    ::close(link.client_fd);
    link.client_fd = -1;
    CHECK(link.server->recv(buffer, sizeof buffer).kind == IoResult::error);
  }
  {  // the client stalls: the connection's read timeout ends the handshake
    Link link(*context, certs);
    SSL_do_handshake(link.client);
    CHECK(link.server->recv(buffer, sizeof buffer).kind == IoResult::would_block);
    link.server->handshake_timed_out();
    CHECK(link.server->recv(buffer, sizeof buffer).kind == IoResult::error);
    link.server->closing();  // counted once
  }
  {  // connected, never spoke, closed by the server
    Link link(*context, certs);
    link.server->closing();
  }
  CHECK(failures(*context, TlsFailure::incomplete) == 3);
  CHECK(handshakes(*context, 1, 0) == 0);
}

TEST_CASE("renegotiation: a TLS 1.2 client's attempt is refused, the connection goes on") {
  CertDir certs("tls-reneg");
  auto context = load_context(certs);
  Link link(*context, certs, {.max_version = TLS1_2_VERSION});
  link.handshake();
  REQUIRE(link.server->handshake_done());
  REQUIRE(SSL_renegotiate(link.client) == 1);
  SSL_do_handshake(link.client);  // sends a ClientHello
  ERR_clear_error();
  char buffer[64];
  // The server answers no_renegotiation and stays on its first session.
  CHECK(link.server->recv(buffer, sizeof buffer).kind != IoResult::ok);
  CHECK(handshakes(*context, 0, 0) == 1);
  CHECK(SSL_get_secure_renegotiation_support(link.client) == 1);
}

TEST_CASE("want-read/want-write: a stalled send asks for writable, buffered records for another read") {
  Connected connected("tls-wants");
  Link& link = connected.link;

  // A large response fills the socket: the stream needs writable only while the connection wants to write.
  std::string big(4 << 20, 'v');
  size_t sent = 0;
  IoResult result{IoResult::ok, 0};
  while ((result = link.server->send(big.data() + sent, big.size() - sent)).kind == IoResult::ok) sent += result.bytes;
  REQUIRE(result.kind == IoResult::would_block);
  CHECK(sent < big.size());
  CHECK(link.server->held_bytes() > TlsStream::kIdleBytes);
  CHECK_FALSE(link.server->socket_write());
  link.server->want_write(true);
  CHECK(link.server->socket_write());
  TlsStream::Dispatch run = link.server->on_event(false, true);
  CHECK(run.write);
  CHECK_FALSE(run.read);
  // The client reads everything while the server finishes its send.
  std::string received;
  char buffer[65536];
  for (int i = 0; i < 100000 && received.size() < big.size(); ++i) {
    int n = SSL_read(link.client, buffer, sizeof buffer);
    if (n > 0) received.append(buffer, n);
    if (sent < big.size()) {
      result = link.server->send(big.data() + sent, big.size() - sent);
      if (result.kind == IoResult::ok) sent += result.bytes;
      REQUIRE(result.kind != IoResult::error);
    }
  }
  CHECK(received == big);
  link.server->want_write(false);
  CHECK_FALSE(link.server->socket_write());

  // The client sends 64 KiB; a small read leaves whole records in OpenSSL's buffer.
  std::string upload(64 * 1024, 'u');
  size_t written = 0;
  while (written < upload.size()) {
    int n = SSL_write(link.client, upload.data() + written, upload.size() - written);
    REQUIRE(n > 0);
    written += n;
  }
  std::string got;
  IoResult small = link.server->recv(buffer, 1024);
  REQUIRE(small.kind == IoResult::ok);
  got.append(buffer, small.bytes);
  CHECK(link.server->input_buffered());
  link.server->want_read(false);
  CHECK_FALSE(link.server->input_buffered());  // not while the connection does not want to read
  link.server->want_read(true);
  for (int i = 0; i < 1000 && got.size() < upload.size(); ++i) {
    IoResult more = link.server->recv(buffer, sizeof buffer);
    if (more.kind != IoResult::ok) break;
    got.append(buffer, more.bytes);
  }
  CHECK(got == upload);
  CHECK(link.server->on_event(true, false).read);
}

TEST_CASE("peek: a request split across records is seen whole, and received once") {
  Connected connected("tls-peek");
  Link& link = connected.link;
  char buffer[16384];
  CHECK(link.server->peek(buffer, sizeof buffer).kind == IoResult::would_block);
  CHECK(link.server->held_bytes() == TlsStream::kIdleBytes);

  // Head and body in two records, as curl and requests send a POST.
  std::string body = "{\"key\":\"k\",\"value\":\"vvvv\"}";
  std::string head = "POST /put HTTP/1.1\r\nHost: x\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n";
  REQUIRE(SSL_write(link.client, head.data(), head.size()) == static_cast<int>(head.size()));
  REQUIRE(SSL_write(link.client, body.data(), body.size()) == static_cast<int>(body.size()));
  IoResult seen = link.server->peek(buffer, sizeof buffer);
  REQUIRE(seen.kind == IoResult::ok);
  CHECK(std::string(buffer, seen.bytes) == head + body);  // SSL_peek alone sees the head's record only
  CHECK(link.server->busy());
  CHECK(link.server->held_bytes() > TlsStream::kIdleBytes);
  link.server->want_read(true);
  CHECK(link.server->input_buffered());  // the socket will not signal the stash
  // A second look sees the same bytes, and what came since.
  REQUIRE(SSL_write(link.client, "GET", 3) == 3);
  seen = link.server->peek(buffer, sizeof buffer);
  REQUIRE(seen.kind == IoResult::ok);
  CHECK(std::string(buffer, seen.bytes) == head + body + "GET");
  // recv hands the stash out first, in as many pieces as asked for.
  IoResult got = link.server->recv(buffer, head.size());
  REQUIRE(got.kind == IoResult::ok);
  CHECK(std::string(buffer, got.bytes) == head);
  REQUIRE(SSL_write(link.client, " /", 2) == 2);
  got = link.server->recv(buffer, sizeof buffer);
  REQUIRE(got.kind == IoResult::ok);
  CHECK(std::string(buffer, got.bytes) == body + "GET /");
  CHECK_FALSE(link.server->busy());
  CHECK(link.server->held_bytes() == TlsStream::kIdleBytes);

  // The client's close_notify after a peeked record: the record first, then eof.
  REQUIRE(SSL_write(link.client, "x", 1) == 1);
  SSL_shutdown(link.client);
  seen = link.server->peek(buffer, sizeof buffer);
  REQUIRE(seen.kind == IoResult::ok);
  CHECK(seen.bytes == 1);
  CHECK(link.server->recv(buffer, sizeof buffer).kind == IoResult::ok);
  CHECK(link.server->recv(buffer, sizeof buffer).kind == IoResult::eof);
  ERR_clear_error();
}

namespace {

// The shipped TLS transport (tls_io.h) on one end of a socketpair, a real
// libevent loop, and a non-blocking OpenSSL client on the other end.
struct TlsLink : kv::testing::TestLoop {
  explicit TlsLink(TlsContext& context, uint64_t budget = 8 << 20, ConnectionOptions options = {})
      : TestLoop(budget, options), base(event_base_new()) {
    int fds[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fds) == 0);
    client_fd = fds[1];
    SSL* ssl = context.new_ssl(fds[0]);
    REQUIRE(ssl != nullptr);
    io = std::make_unique<TlsIo>(loop, base, fds[0], owner, ssl, context.metrics());
    io->connection().start();
    client_ctx = SSL_CTX_new(TLS_client_method());
    client = SSL_new(client_ctx);
    SSL_set_fd(client, client_fd);
    SSL_set_connect_state(client);
  }
  ~TlsLink() {
    io.reset();
    SSL_set_shutdown(client, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
    SSL_free(client);
    SSL_CTX_free(client_ctx);
    ::close(client_fd);
    event_base_free(base);
    ERR_clear_error();
  }

  // Runs the loop without blocking until `done` or about two seconds.
  template <typename Done>
  void run_until(Done done) {
    for (int i = 0; i < 2000 && !done(); ++i) {
      event_base_loop(base, EVLOOP_NONBLOCK);
      if (!done()) usleep(1000);
    }
  }
  void handshake() {
    run_until([&] {
      ERR_clear_error();
      return SSL_do_handshake(client) == 1 && io->stream().handshake_done();
    });
    REQUIRE(io->stream().handshake_done());
  }
  std::string client_read() {
    std::string got;
    char buffer[16384];
    int n;
    while ((n = SSL_read(client, buffer, sizeof buffer)) > 0) got.append(buffer, n);
    ERR_clear_error();
    return got;
  }

  event_base* base;
  kv::testing::TestOwner owner;
  std::unique_ptr<TlsIo> io;
  int client_fd = -1;
  SSL_CTX* client_ctx = nullptr;
  SSL* client = nullptr;
};

}  // namespace

TEST_CASE("TLS I/O: handshake, then requests answered through the event loop") {
  CertDir certs("tls-io");
  auto context = load_context(certs);
  TlsLink link(*context);
  link.handshake();
  std::string request = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
  REQUIRE(SSL_write(link.client, request.data(), request.size()) == static_cast<int>(request.size()));
  std::string got;
  link.run_until([&] {
    got += link.client_read();
    return got.find("\r\n\r\n{\"status\":\"OK\"}") != std::string::npos;
  });
  CHECK(got.rfind("HTTP/1.1 200 OK\r\n", 0) == 0);
  CHECK(link.owner.retired == 0);
  CHECK(link.io->connection().charged() == TlsStream::kIdleBytes);
  CHECK(handshakes(*context, 1, 0) == 1);
}

TEST_CASE("TLS I/O: a stalled handshake ends at the read timeout, through the connection's one timer") {
  CertDir certs("tls-io-stall");
  auto context = load_context(certs);
  ConnectionOptions options;
  options.read_timeout = 0.02;  // the idle timeout (120 s) is far off
  TlsLink link(*context, 8 << 20, options);
  SSL_do_handshake(link.client);  // the ClientHello, then nothing
  ERR_clear_error();
  link.run_until([&] { return link.owner.events > 0; });  // the ClientHello is read
  CHECK(link.owner.retired == 0);
  link.clock.set(link.clock.now() + 1);  // past the handshake's deadline when the timer fires
  link.run_until([&] { return link.owner.retired > 0; });
  CHECK(link.owner.retired == 1);
  CHECK(link.io->connection().closed());
  CHECK(failures(*context, TlsFailure::incomplete) == 1);
  CHECK(link.io->connection().charged() == 0);
}

TEST_CASE("buffer budget spent: a request split across records is answered, not left to its 408") {
  CertDir certs("tls-spent");
  auto context = load_context(certs);
  TlsLink link(*context, 1 << 20);
  link.handshake();
  link.buffers.recharge(0, link.buffers.limit());  // other connections hold it all
  std::string body = "{\"key\":\"k\",\"value\":\"vvvv\"}";
  std::string head = "POST /put HTTP/1.1\r\nHost: x\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n";
  REQUIRE(SSL_write(link.client, head.data(), head.size()) == static_cast<int>(head.size()));
  REQUIRE(SSL_write(link.client, body.data(), body.size()) == static_cast<int>(body.size()));
  std::string got;
  link.run_until([&] {
    got += link.client_read();
    return got.find("\r\n\r\n{") != std::string::npos;
  });
  CHECK(got.rfind("HTTP/1.1 200 OK\r\n", 0) == 0);
  CHECK(link.io->connection().reading());
  CHECK(link.io->connection().charged() == TlsStream::kIdleBytes);
  link.buffers.recharge(link.buffers.limit(), 0);
}

TEST_CASE("metrics: the exposition names every family") {
  TlsMetrics metrics(kTlsMetrics);
  metrics[tls_slot::kFailures + static_cast<size_t>(TlsFailure::plain_http)].add(3);
  metrics[tls_slot::kHandshakes + 2].add(7);
  std::string out = render_source(metrics);
  CHECK(out.find("kvcache_tls_handshakes_total{version=\"TLSv1.3\",resumed=\"false\"} 7\n") != std::string::npos);
  CHECK(out.find("kvcache_tls_handshake_failures_total{reason=\"plain_http\"} 3\n") != std::string::npos);
  CHECK(out.find("kvcache_tls_reloads_total{result=\"error\"} 0\n") != std::string::npos);
  CHECK(out.find("kvcache_tls_certificate_expiry_timestamp_seconds 0\n") != std::string::npos);
}

TEST_CASE("held_bytes: what a server connection charges covers what OpenSSL holds for it") {
  REQUIRE(kCountingOpenSsl);
  CertDir certs("tls-held");
  auto context = load_context(certs);
  // The first handshake of each version also fills OpenSSL's process-wide
  // caches (algorithm fetches, properties): measure the second.
  for (int max_version : {TLS1_3_VERSION, TLS1_2_VERSION, TLS1_3_VERSION, TLS1_2_VERSION}) {
    static int round = 0;
    bool warm = round++ >= 2;
    CAPTURE(max_version);
    int fds[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0);
    // The client runs on its own thread, so this thread's count is the server's alone.
    std::thread client([&] {
      SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
      SSL_CTX_set_max_proto_version(ctx, max_version);
      SSL* ssl = SSL_new(ctx);
      SSL_set_fd(ssl, fds[1]);
      if (SSL_connect(ssl) == 1) {
        std::string request(1000, 'r');
        SSL_write(ssl, request.data(), request.size());
        char buffer[4096];
        SSL_read(ssl, buffer, sizeof buffer);  // the server's answer; TLS 1.3 tickets before it
      }
      SSL_set_shutdown(ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
      SSL_free(ssl);
      SSL_CTX_free(ctx);
      ERR_clear_error();
    });
    fcntl(fds[0], F_SETFL, O_NONBLOCK);
    int64_t before = openssl_live_bytes;
    openssl_peak_bytes = before;
    {
      TlsStream server(context->new_ssl(fds[0]), context->metrics());
      server.want_read(true);
      char buffer[4096];
      size_t got = 0;
      for (int i = 0; i < 200 && got < 1000; ++i) {
        pollfd p{fds[0], POLLIN, 0};
        poll(&p, 1, 100);
        IoResult r = server.recv(buffer, sizeof buffer);
        REQUIRE(r.kind != IoResult::error);
        if (r.kind == IoResult::ok) got += r.bytes;
      }
      REQUIRE(got == 1000);
      int64_t peak = openssl_peak_bytes - before;
      REQUIRE(server.send("ok", 2).kind == IoResult::ok);
      int64_t idle = openssl_live_bytes - before;
      if (warm) {
        MESSAGE("server SSL: peak ", peak, " bytes during the handshake, ", idle, " bytes idle");
        CHECK(idle <= static_cast<int64_t>(TlsStream::kIdleBytes));
        CHECK(peak <= static_cast<int64_t>(TlsStream::kIdleBytes + TlsStream::kActiveBytes));
      }
      CHECK(server.held_bytes() == TlsStream::kIdleBytes);
      client.join();
    }
    ::close(fds[0]);
    ::close(fds[1]);
  }
}

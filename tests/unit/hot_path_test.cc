// The request path allocates nothing once warm: every malloc in this test
// binary is counted (glibc lets the executable interpose malloc), and a
// stream of requests read, framed, answered and sent by the shipped
// Connection (through a fake socket, fake_io.h) must not add to the count.
// Over TLS, OpenSSL's allocations are counted apart (it takes and releases
// its record buffers per record) and kvcache's own must still be zero.
#include "auth.h"
#include "connection.h"
#include "fake_io.h"
#include "gzip.h"
#include "handlers.h"
#include "log.h"
#include "metrics.h"
#include "store.h"
#include "test_certs.h"
#include "tls.h"
#include "tls_io.h"

#include <event2/event.h>
#include <openssl/crypto.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <csignal>

#include <doctest/doctest.h>

#include <fmt/format.h>

#include <atomic>
#include <cstdlib>
#include <string>
#include <vector>

extern "C" {
void* __libc_malloc(size_t);
void* __libc_calloc(size_t, size_t);
void* __libc_realloc(void*, size_t);
void* __libc_memalign(size_t, size_t);

static std::atomic<size_t> allocations{0};

void* malloc(size_t size) {
  allocations.fetch_add(1, std::memory_order_relaxed);
  return __libc_malloc(size);
}
void* calloc(size_t count, size_t size) {
  allocations.fetch_add(1, std::memory_order_relaxed);
  return __libc_calloc(count, size);
}
void* realloc(void* pointer, size_t size) {
  allocations.fetch_add(1, std::memory_order_relaxed);
  return __libc_realloc(pointer, size);
}
void* aligned_alloc(size_t alignment, size_t size) {
  allocations.fetch_add(1, std::memory_order_relaxed);
  return __libc_memalign(alignment, size);
}
int posix_memalign(void** out, size_t alignment, size_t size) {
  allocations.fetch_add(1, std::memory_order_relaxed);
  *out = __libc_memalign(alignment, size);
  return *out ? 0 : 12;
}
}

using namespace kv;
using namespace kv::testing;

namespace {

// One loop and one keep-alive connection on a fake socket.
struct Loop : TestLoop {
  explicit Loop(const TokenStore* tokens = nullptr) : TestLoop(8 << 20, {}, tokens), io(clock), connection(loop, io) {
    connection.start();
  }

  // Each batch arrives as one read; every response goes out.
  void serve(const std::vector<std::string>& batches) {
    for (const std::string& batch : batches) {
      io.incoming.assign(batch);
      pump(connection, io);
      REQUIRE(io.incoming.empty());
      REQUIRE(connection.carried_input() == 0);
    }
  }

  FakeIo io;
  Connection connection;
};

// Room for everything the measured run receives and sends, so the fake socket allocates nothing.
void reserve(Loop& loop, const std::vector<std::string>& batches) {
  size_t largest = 0;
  for (const std::string& batch : batches) largest = std::max(largest, batch.size());
  loop.io.incoming.reserve(largest);
  loop.io.sent.reserve(64 << 20);
}

}  // namespace

TEST_CASE("gets and puts allocate nothing once warm") {
  Loop l;
  std::string value(128, 'v');
  std::vector<std::string> batches;
  for (int i = 0; i < 500; ++i) {
    std::string key = "key:" + std::to_string(i);
    std::string body = R"({"key":")" + key + R"(","value":")" + value + R"("})";
    std::string wire = "POST /put HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
                       std::to_string(body.size()) + "\r\n\r\n" + body;
    wire += "GET /get?key=" + key + " HTTP/1.1\r\nHost: x\r\n\r\n";
    wire += "HEAD /get?key=" + key + " HTTP/1.1\r\nHost: x\r\n\r\n";
    wire += fmt::format("POST /put HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{}\r\n0\r\n\r\n",
                        body.size(), body);
    wire += "GET /get?key=missing" + std::to_string(i) + " HTTP/1.1\r\nHost: x\r\n\r\n";
    // The operator's commands on the same keys: a TTL set (the entry's layout grows), read, then HEAD.
    std::string expire = R"({"key":")" + key + R"(","ttl":100})";
    wire += "POST /expire HTTP/1.1\r\nContent-Length: " + std::to_string(expire.size()) + "\r\n\r\n" + expire;
    wire += "GET /ttl?key=" + key + " HTTP/1.1\r\nHost: x\r\n\r\n";
    wire += "HEAD /ttl?key=" + key + " HTTP/1.1\r\nHost: x\r\n\r\n";
    wire += "OPTIONS /put HTTP/1.1\r\nHost: x\r\n\r\n";
    batches.push_back(wire);
  }
  reserve(l, batches);
  size_t cold = allocations.load();
  l.serve(batches);  // warm: the keys exist now, the index has grown
  CHECK(allocations.load() > cold);  // the counter does see the store's allocations
  l.io.sent.clear();

  size_t before = allocations.load();
  l.serve(batches);
  size_t after = allocations.load();
  CHECK(after - before == 0);
  CHECK(l.io.sent.find("HTTP/1.1 200 OK") != std::string::npos);
  CHECK(l.io.sent.find("Key not found.") != std::string::npos);
  CHECK(l.io.sent.find(R"("ttl":100})") != std::string::npos);
  CHECK(l.io.sent.find("HTTP/1.1 204 No Content") != std::string::npos);
  CHECK(l.store.stats().entries == 500);
  CHECK(l.io.recv_calls == 2 * batches.size());  // one recv per read event
  CHECK(l.io.send_calls == 2 * batches.size());  // one send per batch
}

TEST_CASE("with a token, gzip bodies and gzip responses, warm requests allocate nothing either") {
  TokenStore tokens(parse_tokens("0123456789abcdef\n", "test").value());
  Loop l(&tokens);
  set_log_level(LogLevel::error);  // the once-a-second 401 log line formats a string; it is not per request

  gzip::Deflater deflater;
  std::string value(128, 'v');
  std::string keys;
  std::vector<std::string> batches;
  for (int i = 0; i < 100; ++i) {
    std::string key = "key:" + std::to_string(i);
    keys += (i ? ",\"" : "\"") + key + "\"";
    std::string body(deflater.compress(R"({"key":")" + key + R"(","value":")" + value + R"("})"));
    std::string wire = "POST /put HTTP/1.1\r\nAuthorization: Bearer 0123456789abcdef\r\nContent-Encoding: gzip\r\n"
                       "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
    wire += "GET /get?key=" + key + " HTTP/1.1\r\nAuthorization: Bearer 0123456789abcdef\r\n\r\n";
    wire += "GET /get?key=" + key + " HTTP/1.1\r\n\r\n";  // 401
    batches.push_back(wire);
  }
  std::string mget = R"({"keys":[)" + keys + "]}";
  batches.push_back("POST /mget HTTP/1.1\r\nAuthorization: Bearer 0123456789abcdef\r\nAccept-Encoding: gzip\r\n"
                    "Content-Length: " + std::to_string(mget.size()) + "\r\n\r\n" + mget);
  reserve(l, batches);
  l.serve(batches);  // warm: keys stored, the compressor's buffer grown
  l.io.sent.clear();

  size_t before = allocations.load();
  l.serve(batches);
  CHECK(allocations.load() - before == 0);
  CHECK(l.io.sent.find("Content-Encoding: gzip") != std::string::npos);
  CHECK(l.io.sent.find("HTTP/1.1 401 Unauthorized") != std::string::npos);
  CHECK(l.store.stats().entries == 100);
}

namespace {

// OpenSSL's allocations (server and client) go through these, so they can be
// counted apart from kvcache's own, which must stay at zero.
std::atomic<size_t> openssl_allocations{0};
void* openssl_malloc(size_t size, const char*, int) {
  openssl_allocations.fetch_add(1, std::memory_order_relaxed);
  return malloc(size);
}
void* openssl_realloc(void* pointer, size_t size, const char*, int) {
  openssl_allocations.fetch_add(1, std::memory_order_relaxed);
  return realloc(pointer, size);
}
void openssl_free(void* pointer, const char*, int) { free(pointer); }
// Before OpenSSL's first allocation (static initialisation, before main).
const bool kCountingOpenSsl = CRYPTO_set_mem_functions(openssl_malloc, openssl_realloc, openssl_free) == 1;

}  // namespace

TEST_CASE("over TLS, a warm request costs kvcache no allocation (OpenSSL's are counted apart)") {
  signal(SIGPIPE, SIG_IGN);
  test::CertDir certs("hot-path-tls");
  auto loaded = TlsContext::load({certs.path("server.pem"), certs.path("server.key"), ""});
  REQUIRE(loaded);
  std::unique_ptr<TlsContext> context = std::move(loaded.value());
  int fds[2];
  REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fds) == 0);

  REQUIRE(kCountingOpenSsl);
  TestLoop l;
  event_base* base = event_base_new();
  TestOwner owner;
  // The shipped TLS transport; its events are called by hand here, as the loop would.
  auto io = std::make_unique<TlsIo>(l.loop, base, fds[0], owner, context->new_ssl(fds[0]), context->metrics());
  Connection& connection = io->connection();
  connection.start();
  SSL_CTX* client_ctx = SSL_CTX_new(TLS_client_method());
  SSL* client = SSL_new(client_ctx);
  SSL_set_fd(client, fds[1]);
  SSL_set_connect_state(client);
  for (int i = 0; i < 50 && !(SSL_is_init_finished(client) && connection.reading()); ++i) {
    SSL_do_handshake(client);
    connection.on_readable();
  }
  REQUIRE(SSL_is_init_finished(client));

  std::string value(128, 'v');
  std::vector<std::string> requests;
  for (int i = 0; i < 200; ++i) {
    std::string key = "key:" + std::to_string(i);
    std::string body = R"({"key":")" + key + R"(","value":")" + value + R"("})";
    requests.push_back("POST /put HTTP/1.1\r\nHost: x\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" +
                       body + "GET /get?key=" + key + " HTTP/1.1\r\nHost: x\r\n\r\n");
  }
  std::string received;
  received.reserve(1 << 20);
  char buffer[16384];
  auto exchange = [&] {
    for (const std::string& request : requests) {
      REQUIRE(SSL_write(client, request.data(), static_cast<int>(request.size())) > 0);
      connection.on_readable();
      REQUIRE(!connection.closed());
      for (int i = 0; i < 10; ++i) {
        int n = SSL_read(client, buffer, sizeof buffer);
        if (n <= 0) break;
        received.append(buffer, n);
      }
    }
  };
  exchange();  // warm: keys stored, the tickets read
  received.clear();
  size_t before = allocations.load();
  size_t openssl_before = openssl_allocations.load();
  exchange();
  size_t total = allocations.load() - before;
  size_t openssl = openssl_allocations.load() - openssl_before;
  CHECK(total - openssl == 0);  // kvcache's own
  CHECK(received.find("HTTP/1.1 200 OK") != std::string::npos);
  CHECK(l.store.stats().entries == 200);
  MESSAGE("OpenSSL allocations per request (2 per exchange of a put and a get; server and client): ",
          static_cast<double>(openssl) / (2 * requests.size()));
  SSL_free(client);
  SSL_CTX_free(client_ctx);
  io.reset();  // closes fds[0]
  event_base_free(base);
  ::close(fds[1]);
}

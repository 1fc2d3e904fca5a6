// A failed allocation fails one request or one connection, never the
// process: every operator new of this test binary goes through a hook that
// makes allocations of at least a chosen size fail (std::bad_alloc, or null
// for the nothrow forms simdjson uses), and the shipped Connection, request
// handler and body decoder (through a fake socket, fake_io.h) must answer
// 503, close and count, then serve the next request. Runs under ASan too
// (replacing operator new and delete together is allowed there).
#include "connection.h"
#include "fake_io.h"
#include "handlers.h"
#include "request_body.h"
#include "store.h"

#include <doctest/doctest.h>

#include <fmt/format.h>

#include <atomic>
#include <cstdlib>
#include <new>
#include <optional>
#include <string>

namespace {

std::atomic<size_t> fail_from{SIZE_MAX};  // an allocation of at least this many bytes fails
std::atomic<size_t> failed{0};            // how many did

void* allocate(size_t size) noexcept {
  if (size >= fail_from.load(std::memory_order_relaxed)) {
    failed.fetch_add(1, std::memory_order_relaxed);
    return nullptr;
  }
  return std::malloc(size != 0 ? size : 1);
}

void* allocate_or_throw(size_t size) {
  void* p = allocate(size);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

// While alive, allocations of `bytes` or more fail.
struct FailAllocations {
  explicit FailAllocations(size_t bytes) {
    failed = 0;
    fail_from = bytes;
  }
  ~FailAllocations() { fail_from = SIZE_MAX; }
};

}  // namespace

void* operator new(size_t size) { return allocate_or_throw(size); }
void* operator new[](size_t size) { return allocate_or_throw(size); }
void* operator new(size_t size, const std::nothrow_t&) noexcept { return allocate(size); }
void* operator new[](size_t size, const std::nothrow_t&) noexcept { return allocate(size); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }

using namespace kv;
using namespace kv::testing;

namespace {

size_t count(const std::string& haystack, std::string_view needle) {
  size_t n = 0;
  for (size_t at = haystack.find(needle); at != std::string::npos; at = haystack.find(needle, at + needle.size())) ++n;
  return n;
}

// A body with simdjson's padding after it, as the connection hands them over.
struct PaddedBody {
  explicit PaddedBody(std::string text) : size(text.size()), bytes(std::move(text)) {
    bytes.append(RequestBodyDecoder::kPadding, '\0');
  }
  std::string_view view() const { return {bytes.data(), size}; }
  size_t size;
  std::string bytes;
};

struct Loop : TestLoop {
  std::string metrics_text() {
    std::string out;
    metrics.render(out);
    return out;
  }
};

}  // namespace

TEST_CASE("the hook fails what it is asked to, and nothing else") {
  {
    FailAllocations fail(1 << 20);
    CHECK_THROWS_AS(std::string(2 << 20, 'x'), std::bad_alloc);
    std::string small(100, 'x');
    CHECK(small.size() == 100);
  }
  CHECK(failed == 1);
  std::string large(2 << 20, 'x');
  CHECK(large.size() == 2 << 20);
}

TEST_CASE("request body: a parser that cannot allocate answers 503 (the server's failure), not malformed JSON") {
  // Larger than the bodies whose few hundred bytes of parser state the hook lets through.
  PaddedBody body(R"({"key":"k","value":"v"})" + std::string(4000, ' '));
  std::optional<RequestBodyDecoder> decoder;
  PutItem item;
  bool ok = true;
  {
    FailAllocations fail(1024);
    decoder.emplace();  // its up-front allocation fails too
    ok = decoder->decode_put(body.view(), item);
  }
  CHECK(failed > 0);
  CHECK(!ok);
  CHECK(decoder->error_status() == 503);
  CHECK(decoder->error().find("out of memory") != std::string::npos);
  // Once memory is there again, the same decoder parses.
  REQUIRE(decoder->decode_put(body.view(), item));
  CHECK(item.key == "k");
  CHECK(item.value == "v");
  PaddedBody bad("{\"key\":");
  CHECK(!decoder->decode_put(bad.view(), item));
  CHECK(decoder->error_status() == 400);
  CHECK(decoder->error() == "malformed JSON");
}

TEST_CASE("a request that fails to allocate gets 503 with Retry-After, counted under its endpoint; the next is served") {
  Loop t;
  // 1,000 values of 200 bytes: an /mget of them all outgrows the handler's 64 KiB scratch buffer.
  std::string keys;
  for (int i = 0; i < 1000; ++i) {
    std::string key = fmt::format("k{}", i);
    REQUIRE(t.store.put(make_key(key), std::string(200, 'v'), 0) == PutStatus::ok);
    keys += fmt::format("{}\"{}\"", i == 0 ? "" : ",", key);
  }
  std::string body = "{\"keys\":[" + keys + "]}";
  std::string mget = fmt::format("POST /mget HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{}", body.size(), body);
  FakeIo io(t.clock);
  Connection connection(t.loop, io);
  connection.start();
  {
    FailAllocations fail(100 * 1024);
    io.incoming = mget + "GET /get?key=k7 HTTP/1.1\r\nHost: x\r\n\r\n";
    pump(connection, io);
  }
  CHECK(failed > 0);
  CHECK(!connection.closed());
  REQUIRE(count(io.sent, "HTTP/1.1 503 Service Unavailable\r\n") == 1);
  CHECK(io.sent.find("Retry-After: 1\r\n") != std::string::npos);
  CHECK(io.sent.find("server out of memory") != std::string::npos);
  CHECK(io.sent.find("HTTP/1.1 200 OK\r\n") > io.sent.find("HTTP/1.1 503"));  // the request behind it
  std::string text = t.metrics_text();
  CHECK(text.find("kvcache_requests_total{endpoint=\"mget\",code=\"503\"} 1\n") != std::string::npos);
  CHECK(text.find("kvcache_allocation_failures_total{stage=\"request\"} 1\n") != std::string::npos);
  // With memory again, the same request is answered whole.
  io.sent.clear();
  io.incoming = mget;
  pump(connection, io);
  CHECK(io.sent.starts_with("HTTP/1.1 200 OK\r\n"));
  CHECK(count(io.sent, std::string(200, 'v')) == 1000);
}

TEST_CASE("a connection whose own buffers cannot grow is closed and counted, its budget given back; others go on") {
  Loop t;
  FakeIo io(t.clock);
  Connection connection(t.loop, io);
  connection.start();
  std::string requests;
  for (int i = 0; i < 200; ++i) requests += "GET /get?key=missing HTTP/1.1\r\nHost: x\r\n\r\n";
  {
    // The client takes nothing: the batch's 200 responses must be kept, and cannot.
    FailAllocations fail(16 * 1024);
    io.send_room = 0;
    io.incoming = requests;
    pump(connection, io);
  }
  CHECK(failed > 0);
  CHECK(connection.closed());
  CHECK(io.closed);
  CHECK(connection.charged() == 0);
  CHECK(t.buffers.used() == 0);
  CHECK(t.loop.output.empty());
  CHECK(t.metrics_text().find("kvcache_allocation_failures_total{stage=\"connection\"} 1\n") != std::string::npos);

  FakeIo other_io(t.clock);
  Connection other(t.loop, other_io);
  other.start();
  other_io.incoming = "GET /get?key=missing HTTP/1.1\r\nHost: x\r\n\r\n";
  pump(other, other_io);
  CHECK(other_io.sent.starts_with("HTTP/1.1 404 Not Found\r\n"));
}

// The request path allocates nothing once warm: every malloc in this test
// binary is counted (glibc lets the executable interpose malloc), and a
// stream of parsed-and-answered gets and puts must not add to the count.
#include "auth.h"
#include "gzip.h"
#include "handlers.h"
#include "log.h"
#include "http_framing.h"
#include "metrics.h"
#include "store.h"

#include <doctest/doctest.h>

#include <fmt/format.h>

#include <atomic>
#include <cstdlib>
#include <string>

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

namespace {

class FixedClock final : public Clock {
 public:
  uint64_t now_ms() const override { return 1000; }
};

// Frames each request in `wire` and answers it, through the functions Worker::process calls.
void serve(const std::string& wire, RequestHandler& handler, std::string& out) {
  static char body_buffer[http::kMaxBodyBytes + RequestBodyDecoder::kPadding];
  http::FrameState state;
  size_t pos = 0;
  while (pos < wire.size()) {
    http::Request request;
    http::Frame frame = http::frame_request(wire.data() + pos, wire.size() - pos, state, request, body_buffer);
    REQUIRE(frame.status == http::Status::complete);
    handler.handle(request, frame.body, http::ConnectionMode::keep_alive, out);
    pos += frame.consumed;
  }
}

}  // namespace

TEST_CASE("gets and puts allocate nothing once warm") {
  FixedClock clock;
  Store store(16, 64 << 20, clock);
  BufferBudget buffers(8 << 20);
  Metrics metrics(store, buffers, 1, 64 << 20, 100);
  http::DateHeader date;
  RequestHandler handler(store, metrics, metrics.worker(0), date);

  std::string value(128, 'v');
  std::string wire;
  for (int i = 0; i < 500; ++i) {
    std::string key = "key:" + std::to_string(i);
    std::string body = R"({"key":")" + key + R"(","value":")" + value + R"("})";
    wire += "POST /put HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
            std::to_string(body.size()) + "\r\n\r\n" + body;
    wire += "GET /get?key=" + key + " HTTP/1.1\r\nHost: x\r\n\r\n";
    wire += "HEAD /get?key=" + key + " HTTP/1.1\r\nHost: x\r\n\r\n";
    wire += fmt::format("POST /put HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{}\r\n0\r\n\r\n",
                        body.size(), body);
    wire += "GET /get?key=missing" + std::to_string(i) + " HTTP/1.1\r\nHost: x\r\n\r\n";
  }
  wire.append(RequestBodyDecoder::kPadding, '\0');  // simdjson reads past a body in place
  std::string_view requests(wire.data(), wire.size() - RequestBodyDecoder::kPadding);

  std::string copy(requests);
  copy.reserve(wire.size());  // keeps the padding readable past the last body
  std::string out;
  out.reserve(1 << 20);
  size_t cold = allocations.load();
  serve(copy, handler, out);  // warm: the keys exist now, the index has grown
  CHECK(allocations.load() > cold);  // the counter does see the store's allocations
  out.clear();

  size_t before = allocations.load();
  serve(copy, handler, out);
  size_t after = allocations.load();
  CHECK(after - before == 0);
  CHECK(out.find("HTTP/1.1 200 OK") != std::string::npos);
  CHECK(out.find("Key not found.") != std::string::npos);
  CHECK(store.stats().entries == 500);
}

TEST_CASE("with a token, gzip bodies and gzip responses, warm requests allocate nothing either") {
  FixedClock clock;
  Store store(16, 64 << 20, clock);
  BufferBudget buffers(8 << 20);
  Metrics metrics(store, buffers, 1, 64 << 20, 100);
  http::DateHeader date;
  TokenStore tokens(parse_tokens("0123456789abcdef\n", "test").tokens);
  RequestHandler handler(store, metrics, metrics.worker(0), date, &tokens);
  set_log_level(LogLevel::error);  // the once-a-second 401 log line formats a string; it is not per request

  gzip::Deflater deflater;
  std::string value(128, 'v');
  std::string keys;
  std::string wire;
  for (int i = 0; i < 100; ++i) {
    std::string key = "key:" + std::to_string(i);
    keys += (i ? ",\"" : "\"") + key + "\"";
    std::string body(deflater.compress(R"({"key":")" + key + R"(","value":")" + value + R"("})"));
    wire += "POST /put HTTP/1.1\r\nAuthorization: Bearer 0123456789abcdef\r\nContent-Encoding: gzip\r\n"
            "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
    wire += "GET /get?key=" + key + " HTTP/1.1\r\nAuthorization: Bearer 0123456789abcdef\r\n\r\n";
    wire += "GET /get?key=" + key + " HTTP/1.1\r\n\r\n";  // 401
  }
  std::string mget = R"({"keys":[)" + keys + "]}";
  wire += "POST /mget HTTP/1.1\r\nAuthorization: Bearer 0123456789abcdef\r\nAccept-Encoding: gzip\r\n"
          "Content-Length: " + std::to_string(mget.size()) + "\r\n\r\n" + mget;
  std::string copy(wire);
  copy.reserve(wire.size() + RequestBodyDecoder::kPadding);
  std::string out;
  out.reserve(1 << 20);
  serve(copy, handler, out);  // warm: keys stored, compressor and its buffer created
  out.clear();

  size_t before = allocations.load();
  serve(copy, handler, out);
  CHECK(allocations.load() - before == 0);
  CHECK(out.find("Content-Encoding: gzip") != std::string::npos);
  CHECK(out.find("HTTP/1.1 401 Unauthorized") != std::string::npos);
  CHECK(store.stats().entries == 100);
}

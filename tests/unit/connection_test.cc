// The connection's promises, proven on the shipped state machine through a
// scripted I/O and a hand-moved clock (fake_io.h): backpressure, half-close,
// lingering close, the read/send/idle deadlines, drain, the buffer budget and
// a connection waiting on a deferred response.
#include "connection.h"
#include "fake_io.h"
#include "handlers.h"
#include "metrics.h"
#include "snapshot.h"
#include "store.h"

#include <doctest/doctest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <deque>
#include <cstdlib>
#include <string>
#include <thread>

using namespace kv;
using namespace kv::testing;

namespace {

constexpr std::string_view kGet = "GET /get?key=k HTTP/1.1\r\nHost: x\r\n\r\n";

size_t count(const std::string& haystack, std::string_view needle) {
  size_t n = 0;
  for (size_t at = haystack.find(needle); at != std::string::npos; at = haystack.find(needle, at + needle.size())) ++n;
  return n;
}

std::string repeat(std::string_view piece, int times) {
  std::string out;
  for (int i = 0; i < times; ++i) out += piece;
  return out;
}

// One loop and one connection on a fake socket.
struct Fixture : TestLoop {
  explicit Fixture(uint64_t budget = 8 << 20, ConnectionOptions settings = {})
      : TestLoop(budget, std::move(settings)), io(clock), connection(loop, io) {
    connection.start();
  }

  void send(std::string_view bytes) {
    io.incoming += bytes;
    pump(connection, io);
  }
  void advance(double seconds) { testing::advance(connection, io, clock, seconds); }
  std::string metrics_text() {
    std::string out;
    metrics.render(out);
    return out;
  }

  FakeIo io;
  Connection connection;
};

}  // namespace

TEST_CASE("requests are answered in order, one recv per read event and one send per batch") {
  Fixture f;
  f.send(repeat(kGet, 50));
  CHECK(count(f.io.sent, "HTTP/1.1 404 Not Found") == 50);
  CHECK(f.io.recv_calls == 1);
  CHECK(f.io.send_calls == 1);
  CHECK(f.io.reading);
  CHECK(!f.io.closed);
  CHECK(f.connection.charged() == 0);  // nothing carried over, nothing pending
}

TEST_CASE("one endpoint table: every endpoint is routed, checks its method and is counted under its name") {
  Fixture f;
  for (const RequestHandler::Endpoint& endpoint : RequestHandler::endpoints()) {
    INFO(endpoint.path);
    bool get = endpoint.method == http::Method::get;
    f.io.sent.clear();
    f.send(std::string(get ? "POST " : "GET ") + std::string(endpoint.path) + " HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    CHECK(f.io.sent.rfind("HTTP/1.1 405 Method Not Allowed\r\n", 0) == 0);
    CHECK(f.io.sent.find(get ? "Allow: GET, HEAD, OPTIONS\r\n" : "Allow: POST, OPTIONS\r\n") != std::string::npos);
    // OPTIONS names the same methods, with a 204.
    f.io.sent.clear();
    f.send("OPTIONS " + std::string(endpoint.path) + " HTTP/1.1\r\n\r\n");
    CHECK(f.io.sent.rfind("HTTP/1.1 204 No Content\r\n", 0) == 0);
    CHECK(f.io.sent.find(get ? "Allow: GET, HEAD, OPTIONS\r\n" : "Allow: POST, OPTIONS\r\n") != std::string::npos);
    CHECK(f.io.sent.find("Content-Length") == std::string::npos);
  }
  f.io.sent.clear();
  f.send("GET /metrics HTTP/1.1\r\n\r\n");
  for (const RequestHandler::Endpoint& endpoint : RequestHandler::endpoints()) {
    CHECK(f.io.sent.find("kvcache_requests_total{endpoint=\"" + std::string(endpoint.name) + "\",code=\"405\"} 1") !=
          std::string::npos);
  }
}

TEST_CASE("backpressure: a client that does not read stops being read, and is served once it reads") {
  Fixture f;
  f.io.send_room = 0;
  const int requests = 20000;  // answers far beyond kOutputHighWater
  f.send(repeat(kGet, requests));
  CHECK(!f.io.reading);  // paused: its responses are not being taken
  CHECK(f.io.writing);
  CHECK(f.connection.pending_output() >= kOutputHighWater);
  CHECK(f.connection.pending_output() < kOutputHighWater + 64 * 1024);
  CHECK(f.connection.carried_input() > 0);  // whole requests held back, unanswered
  CHECK(f.buffers.used() == f.connection.charged());
  f.io.send_room = SIZE_MAX;
  pump(f.connection, f.io);
  CHECK(count(f.io.sent, "HTTP/1.1 404") == requests);
  CHECK(f.io.reading);
  CHECK(f.connection.pending_output() == 0);
  CHECK(f.connection.charged() == 0);
  CHECK(f.buffers.used() == 0);
}

TEST_CASE("half-close: every request held back before the client's FIN is answered, then the connection closes") {
  Fixture f;
  f.io.send_room = 4096;
  const int requests = 5000;
  f.io.incoming = repeat(kGet, requests);
  f.io.client_fin = true;
  pump(f.connection, f.io);
  CHECK(!f.io.closed);  // answers still queued behind a slow reader
  for (int i = 0; i < 100000 && !f.io.closed; ++i) {
    f.io.send_room = 4096;  // the client reads a little at a time
    pump(f.connection, f.io);
  }
  CHECK(count(f.io.sent, "HTTP/1.1 404") == requests);
  CHECK(f.io.closed);
  CHECK(!f.io.shut);  // after the client's FIN there is nothing to linger for
  CHECK(f.buffers.used() == 0);
}

TEST_CASE("half-close: a partial request before the FIN is dropped, the complete ones answered") {
  Fixture f;
  f.io.incoming = std::string(kGet) + "GET /get?ke";
  f.io.client_fin = true;
  pump(f.connection, f.io);
  CHECK(count(f.io.sent, "HTTP/1.1 404") == 1);
  CHECK(f.io.closed);
}

TEST_CASE("lingering close: bounded by time, not by what the client sends") {
  Fixture f;
  f.send(std::string(kGet) + "GET / HTTP/1.1\r\nno colon\r\n\r\n");
  CHECK(count(f.io.sent, "HTTP/1.1 404") == 1);
  CHECK(count(f.io.sent, "HTTP/1.1 400") == 1);
  CHECK(f.io.shut);  // FIN after the last response
  CHECK(f.connection.lingering());
  CHECK(f.io.reading);

  SUBCASE("a client still sending is read and discarded until kLingerTime, however much it sends") {
    std::string chunk(64 * 1024, 'x');
    double elapsed = 0;
    size_t discarded = 0;
    while (elapsed + 1 < kLingerTime) {
      f.send(chunk);
      discarded += chunk.size();
      f.advance(1);
      elapsed += 1;
      REQUIRE(!f.io.closed);
    }
    CHECK(discarded > 1024 * 1024);  // far past the old 256 KiB cap
    CHECK(f.io.incoming.empty());
    f.send(chunk);
    f.advance(2);
    CHECK(f.io.closed);
  }
  SUBCASE("a client that goes quiet is closed after kLingerQuiet") {
    f.advance(kLingerQuiet - 0.5);
    CHECK(!f.io.closed);
    f.advance(1);
    CHECK(f.io.closed);
  }
  SUBCASE("the client's FIN ends the linger at once") {
    f.io.client_fin = true;
    pump(f.connection, f.io);
    CHECK(f.io.closed);
  }
  CHECK(f.buffers.used() == 0);
}

TEST_CASE("read timeout: a stalled partial request gets a 408, then the connection lingers") {
  Fixture f;
  f.send("GET /get?key=k HTTP/1.1\r\nHo");
  CHECK(f.connection.carried_input() > 0);
  f.advance(f.config.read_timeout - 0.1);
  CHECK(f.io.sent.empty());
  f.send("st");  // progress within a request does not restart its clock
  f.advance(0.2);
  CHECK(count(f.io.sent, "HTTP/1.1 408 Request Timeout") == 1);
  CHECK(f.io.sent.find("Connection: close") != std::string::npos);
  CHECK(f.connection.lingering());
  CHECK(f.metrics_text().find("kvcache_timeouts_total{kind=\"read\"} 1\n") != std::string::npos);
}

TEST_CASE("read timeout: a slow body is counted under its endpoint once the request line was read") {
  SUBCASE("the request line was read: counted under /put") {
    Fixture f;
    f.send("POST /put HTTP/1.1\r\nHost: x\r\nContent-Length: 30\r\n\r\n{\"key\":");
    f.advance(f.config.read_timeout + 0.1);
    CHECK(count(f.io.sent, "HTTP/1.1 408 Request Timeout") == 1);
    CHECK(f.metrics_text().find("kvcache_requests_total{endpoint=\"put\",code=\"408\"} 1\n") != std::string::npos);
  }
  SUBCASE("a query string is not part of the endpoint") {
    Fixture f;
    f.send("GET /get?key=k HTTP/1.1\r\nHo");
    f.advance(f.config.read_timeout + 0.1);
    CHECK(f.metrics_text().find("kvcache_requests_total{endpoint=\"get\",code=\"408\"} 1\n") != std::string::npos);
  }
  SUBCASE("the request line is not whole: counted as other") {
    Fixture f;
    f.send("POST /pu");
    f.advance(f.config.read_timeout + 0.1);
    CHECK(count(f.io.sent, "HTTP/1.1 408 Request Timeout") == 1);
    CHECK(f.metrics_text().find("kvcache_requests_total{endpoint=\"other\",code=\"408\"} 1\n") != std::string::npos);
  }
}

TEST_CASE("send timeout: a client that takes nothing is dropped and its output returned to the budget") {
  Fixture f;
  f.io.send_room = 0;
  f.send(repeat(kGet, 100));
  CHECK(f.buffers.used() > 0);
  f.advance(f.config.send_timeout - 1);
  CHECK(!f.io.closed);
  f.io.send_room = 10;  // progress restarts the send timeout
  pump(f.connection, f.io);
  f.io.send_room = 0;
  f.advance(f.config.send_timeout - 1);
  CHECK(!f.io.closed);
  f.advance(2);
  CHECK(f.io.closed);
  CHECK(f.buffers.used() == 0);
  CHECK(f.metrics_text().find("kvcache_timeouts_total{kind=\"send\"} 1\n") != std::string::npos);
}

TEST_CASE("idle timeout: a keep-alive connection with nothing to do is closed") {
  Fixture f;
  f.send(kGet);
  f.advance(f.config.idle_timeout - 1);
  CHECK(!f.io.closed);
  f.send(kGet);  // activity restarts it
  f.advance(f.config.idle_timeout - 1);
  CHECK(!f.io.closed);
  f.advance(2);
  CHECK(f.io.closed);
  CHECK(f.metrics_text().find("kvcache_timeouts_total{kind=\"idle\"} 1\n") != std::string::npos);
  CHECK(f.metrics_text().find("kvcache_timeouts_total{kind=\"read\"} 0\n") != std::string::npos);
}

TEST_CASE("errors from the socket close the connection and give its buffers back") {
  Fixture f;
  f.io.send_room = 0;
  f.send(repeat(kGet, 100));
  CHECK(f.buffers.used() > 0);
  f.io.reset = true;
  f.io.send_room = 100;
  pump(f.connection, f.io);
  CHECK(f.io.closed);
  CHECK(f.buffers.used() == 0);
}

TEST_CASE("drain: idle connections close, sent requests are answered with Connection: close, partial ones wait") {
  SUBCASE("idle") {
    Fixture f;
    f.send(kGet);
    f.loop.draining = true;
    f.connection.drain();
    CHECK(f.io.closed);
  }
  SUBCASE("a request already in the socket") {
    Fixture f;
    f.io.incoming = kGet;  // arrived, not read yet
    f.loop.draining = true;
    f.connection.drain();
    CHECK(count(f.io.sent, "HTTP/1.1 404") == 1);
    CHECK(f.io.sent.find("Connection: close") != std::string::npos);
    CHECK((f.io.closed || f.connection.lingering()));
  }
  SUBCASE("a partial request is given its read timeout") {
    Fixture f;
    f.send("GET /get?key=k HTTP/1.1\r\n");
    f.loop.draining = true;
    f.connection.drain();
    CHECK(!f.io.closed);
    f.send("\r\n");
    CHECK(count(f.io.sent, "HTTP/1.1 404") == 1);
    CHECK(f.io.sent.find("Connection: close") != std::string::npos);
  }
  SUBCASE("output still queued is sent first") {
    Fixture f;
    f.io.send_room = 0;
    f.send(repeat(kGet, 3000));
    f.loop.draining = true;
    f.connection.drain();
    CHECK(!f.io.closed);
    f.io.send_room = SIZE_MAX;
    pump(f.connection, f.io);
    // The first request answered after the drain began closes the connection.
    size_t answered = count(f.io.sent, "HTTP/1.1 404");
    CHECK(answered < 3000);
    CHECK(count(f.io.sent, "Connection: close") == 1);
    CHECK(f.io.sent.rfind("HTTP/1.1 404") < f.io.sent.find("Connection: close"));
    CHECK((f.io.closed || f.connection.lingering()));
  }
}

TEST_CASE("buffer budget spent: a partial request stays unread in the socket; its read timeout answers 408") {
  Fixture f(1 << 20);
  f.buffers.recharge(0, f.buffers.limit());  // other connections hold it all
  // A well-behaved client is still answered.
  f.send(kGet);
  CHECK(count(f.io.sent, "HTTP/1.1 404") == 1);

  SUBCASE("a request that is not whole is not taken at all") {
    std::string head = "POST /put HTTP/1.1\r\nContent-Length: 65536\r\n\r\n";
    f.io.incoming = head + std::string(60000, 'a');
    pump(f.connection, f.io);
    CHECK(f.connection.carried_input() == 0);
    CHECK(f.io.incoming.size() == head.size() + 60000);  // still in the socket
    CHECK(!f.io.reading);
    CHECK(f.connection.charged() == 0);
    f.advance(f.config.read_timeout / 2);
    CHECK(f.io.sent.find("408") == std::string::npos);
    f.advance(f.config.read_timeout);
    CHECK(count(f.io.sent, "HTTP/1.1 408") == 1);
    CHECK(f.connection.lingering());
  }
  SUBCASE("whole requests before a partial one are answered, the partial one waits") {
    f.io.incoming = repeat(kGet, 3) + "GET /get?key=k HTTP/1.1\r\nHo";
    pump(f.connection, f.io);
    CHECK(count(f.io.sent, "HTTP/1.1 404") == 4);
    CHECK(f.connection.carried_input() == 0);
    CHECK(f.io.incoming == "GET /get?key=k HTTP/1.1\r\nHo");
    CHECK(!f.io.reading);
    f.advance(f.config.read_timeout + 0.1);
    CHECK(count(f.io.sent, "HTTP/1.1 408") == 1);
  }
  SUBCASE("a partial request already carried when the budget ran out is read no further") {
    f.buffers.recharge(f.buffers.limit(), 0);
    f.send("POST /put HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"key\":");
    size_t carried = f.connection.carried_input();
    CHECK(carried > 0);
    f.buffers.recharge(0, f.buffers.limit());
    f.send("\"k\",\"value\":\"");
    CHECK(f.connection.carried_input() == carried);
    CHECK(!f.io.reading);
    f.advance(f.config.read_timeout + 0.1);
    CHECK(count(f.io.sent, "HTTP/1.1 408") == 1);
  }
  SUBCASE("a malformed request is taken and answered at once") {
    f.send("GET / HTTP/1.1\r\nno colon\r\n\r\n" + std::string(30000, 'x'));
    CHECK(count(f.io.sent, "HTTP/1.1 400") == 1);
  }
  f.buffers.recharge(f.buffers.limit(), 0);
  CHECK(f.buffers.used() == f.connection.charged());
}

TEST_CASE("buffer budget spent: a response over the floor is a 503 with Retry-After, the connection kept") {
  Fixture f(1 << 20);
  std::string keys;
  for (int i = 0; i < 200; ++i) {
    std::string key = "big" + std::to_string(i);
    REQUIRE(f.store.put(make_key(key), std::string(200, 'v'), 0) == PutStatus::ok);
    keys += (i == 0 ? "\"" : ",\"") + key + "\"";
  }
  std::string body = "{\"keys\":[" + keys + "]}";
  f.buffers.recharge(0, f.buffers.limit());  // other connections hold it all
  f.send("POST /mget HTTP/1.1\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body);
  CHECK(f.io.sent.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
  CHECK(f.io.sent.find("Retry-After: 1\r\n") != std::string::npos);
  CHECK(!f.io.closed);
  f.buffers.recharge(f.buffers.limit(), 0);
}

TEST_CASE("after an outsized response, trim() gives the loop's buffers back") {
  Fixture f;
  std::string value(256, '\x01');  // 6 bytes each once JSON-escaped
  std::string keys;
  for (int i = 0; i < 1000; ++i) {
    std::string key = "key" + std::to_string(i);
    f.store.put(make_key(key), value, 0);
    keys += (i ? ",\"" : "\"") + key + "\"";
  }
  std::string body = "{\"keys\":[" + keys + "]}";
  f.send("POST /mget HTTP/1.1\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body);
  CHECK(f.io.sent.size() > kOutputKeepCapacity);  // the response outgrew them
  CHECK(f.loop.output.capacity() > kOutputKeepCapacity);
  CHECK(f.handler.scratch_capacity() > kScratchKeepCapacity);
  f.loop.trim();
  CHECK(f.loop.output.capacity() <= kOutputKeepCapacity);
  CHECK(f.handler.scratch_capacity() <= kScratchKeepCapacity);
  f.send(kGet);  // and it still serves
  CHECK(count(f.io.sent, "HTTP/1.1 404") == 1);
}

namespace {

std::string temporary_path() {
  char name[] = "/tmp/kvcache-connection-test-XXXXXX";
  int fd = mkstemp(name);
  REQUIRE(fd >= 0);
  ::close(fd);
  unlink(name);
  return name;
}

}  // namespace

TEST_CASE("waiting on a deferred response (POST /snapshot)") {
  SnapshotOptions options;
  options.path = temporary_path();
  Fixture f;
  Snapshotter snapshots(f.store, options, 1);
  snapshots.start();
  std::atomic<bool> done{false};
  f.handler.enable_snapshots(&snapshots, [&done] { done = true; });
  auto wait_done = [&done] {
    for (int i = 0; i < 1000 && !done; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    REQUIRE(done);
  };

  SUBCASE("the answer comes in order, before the requests sent behind it") {
    f.send("POST /snapshot HTTP/1.1\r\nContent-Length: 0\r\n\r\n" + std::string(kGet));
    CHECK(f.connection.waiting());
    CHECK(!f.io.reading);
    CHECK(f.io.sent.empty());
    wait_done();
    f.loop.deliver_deferred();
    CHECK_FALSE(f.connection.waiting());
    pump(f.connection, f.io);
    size_t snapshot_at = f.io.sent.find("HTTP/1.1 200 OK");
    size_t get_at = f.io.sent.find("HTTP/1.1 404");
    CHECK(snapshot_at != std::string::npos);
    CHECK(get_at != std::string::npos);
    CHECK(snapshot_at < get_at);
    CHECK(f.io.reading);
  }
  SUBCASE("the idle timeout still ends a wait that outlasts it") {
    f.send("POST /snapshot HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    CHECK(f.connection.waiting());
    f.advance(f.config.idle_timeout + 1);
    CHECK(f.io.closed);
    CHECK(f.loop.deferred == nullptr);
    wait_done();
    f.loop.deliver_deferred();  // its answer goes nowhere
    CHECK(f.loop.output.empty());
  }
  SUBCASE("the send timeout still drops a client that takes nothing while it waits") {
    f.io.send_room = 0;
    f.send(repeat(kGet, 10) + "POST /snapshot HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    CHECK(f.connection.waiting());
    CHECK(f.connection.pending_output() > 0);
    f.advance(f.config.send_timeout + 1);
    CHECK(f.io.closed);
    CHECK(f.buffers.used() == 0);
    wait_done();
    f.loop.deliver_deferred();
    CHECK(f.loop.output.empty());
  }
  SUBCASE("stopping: the answer is delivered, then the connection closes") {
    f.send("POST /snapshot HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    f.loop.draining = true;
    f.connection.drain();
    CHECK(!f.io.closed);
    wait_done();
    f.loop.deliver_deferred();
    pump(f.connection, f.io);
    CHECK(f.io.sent.find("HTTP/1.1 200 OK") != std::string::npos);
    CHECK((f.io.closed || f.connection.lingering()));
  }
  snapshots.stop();
  unlink(options.path.c_str());
}

namespace {

// Connections whose transport holds memory (TLS state), on one loop.
struct Crowd : TestLoop {
  struct Member {
    explicit Member(Crowd& crowd) : io(crowd.clock), connection(crowd.loop, io) {}
    FakeIo io;
    Connection connection;
  };

  explicit Crowd(uint64_t budget) : TestLoop(budget) {}

  // A connection that did its handshake (held as TLS would be: handshaking,
  // then idle; a plain one holds nothing) and one request, a second after
  // the previous one.
  Member& join(size_t idle_bytes) {
    clock.set(clock.now() + 1);
    Member& m = members.emplace_back(*this);
    m.io.held = idle_bytes > 0 ? idle_bytes + 72 * 1024 : 0;
    m.io.in_progress = idle_bytes > 0;
    m.connection.start();
    m.io.held = idle_bytes;
    m.io.in_progress = false;
    request(m);
    return m;
  }
  void request(Member& m) {
    m.io.incoming += kGet;
    pump(m.connection, m.io);
  }

  std::deque<Member> members;
};

}  // namespace

TEST_CASE("admission: a handshake is charged from the start, an idle TLS connection its idle state") {
  Crowd crowd(1 << 20);
  Crowd::Member& m = crowd.members.emplace_back(crowd);
  m.io.held = 86 * 1024;
  m.io.in_progress = true;
  m.connection.start();
  CHECK(m.connection.charged() == 86 * 1024);
  CHECK(!m.connection.idle());  // a handshake in progress is never closed for room
  // The handshake completes inside a read that finds no request yet.
  m.io.held = 14 * 1024;
  m.io.in_progress = false;
  m.connection.on_readable();
  CHECK(m.connection.charged() == 14 * 1024);
  CHECK(m.connection.idle());
  CHECK(crowd.buffers.used() == 14 * 1024);
}

TEST_CASE("admission: the longest-idle connections are closed to make room; none idle means no room") {
  constexpr size_t kIdle = 20 * 1024;
  // Admitted into 7/8 of the budget (the rest is for connections in use): 7 * kIdle.
  Crowd crowd(8 * kIdle);
  for (int i = 0; i < 7; ++i) crowd.join(kIdle);
  for (auto& m : crowd.members) CHECK(m.connection.idle());
  CHECK(crowd.buffers.used() == 7 * kIdle);

  SUBCASE("oldest first, only as many as needed, each with close_notify and FIN") {
    CHECK(crowd.loop.make_room(30 * 1024));
    CHECK(crowd.members[0].io.closed);
    CHECK(crowd.members[0].io.shut);
    CHECK(crowd.members[1].io.closed);
    CHECK(!crowd.members[2].io.closed);
    CHECK(metric_value(crowd.connections, "kvcache_connections_idle_closed_total") == 2);
    CHECK(crowd.buffers.used() == 5 * kIdle);
  }
  SUBCASE("a request makes a connection the newest idle one") {
    crowd.clock.set(crowd.clock.now() + 1);
    crowd.request(crowd.members[0]);
    CHECK(crowd.loop.make_room(kIdle));
    CHECK(!crowd.members[0].io.closed);
    CHECK(crowd.members[1].io.closed);
    CHECK(count(crowd.members[0].io.sent, "HTTP/1.1 404") == 2);
  }
  SUBCASE("connections with work in progress are never closed for room") {
    crowd.members[0].io.incoming = "GET /get?key=k HTTP/1.1\r\nHo";  // a partial request
    pump(crowd.members[0].connection, crowd.members[0].io);
    crowd.members[1].io.send_room = 0;                                // a client that does not read
    crowd.request(crowd.members[1]);
    crowd.members[2].io.in_progress = true;                           // a TLS record half written
    crowd.members[2].connection.on_readable();
    crowd.members[3].io.incoming = "POST /put HTTP/1.1\r\nContent-Length: 10\r\n\r\n{";  // a body to come
    pump(crowd.members[3].connection, crowd.members[3].io);
    for (int i : {0, 1, 2, 3}) CHECK(!crowd.members[i].connection.idle());
    // Only the last three are idle: they are closed, and that is not room enough.
    CHECK(!crowd.loop.make_room(3 * kIdle));
    for (int i : {4, 5, 6}) CHECK(crowd.members[i].io.closed);
    for (int i : {0, 1, 2, 3}) CHECK(!crowd.members[i].io.closed);
    CHECK(metric_value(crowd.connections, "kvcache_connections_idle_closed_total") == 3);
  }
  SUBCASE("at most kMaxIdleClosesPerAdmission closes for one new connection") {
    Crowd many(kMaxIdleClosesPerAdmission * 2 * 1024);
    for (size_t i = 0; i < kMaxIdleClosesPerAdmission + 8; ++i) many.join(2 * 1024);
    CHECK(!many.loop.make_room(many.buffers.limit()));
    CHECK(metric_value(many.connections, "kvcache_connections_idle_closed_total") == kMaxIdleClosesPerAdmission);
  }
  std::string metrics = render_source(crowd.connections);
  CHECK(metrics.find("kvcache_connections_idle_closed_total ") != std::string::npos);
  CHECK(metrics.find("kvcache_connections_refused_total 0\n") != std::string::npos);
}

TEST_CASE("admission: plain connections hold no budget memory and are never closed for room") {
  Crowd crowd(64 * 1024);
  for (int i = 0; i < 3; ++i) crowd.join(0);
  crowd.buffers.recharge(0, crowd.buffers.limit());
  for (auto& m : crowd.members) CHECK(!m.connection.idle());
  CHECK(!crowd.loop.make_room(1));
  for (auto& m : crowd.members) CHECK(!m.io.closed);
  crowd.buffers.recharge(crowd.buffers.limit(), 0);
}

// ---------------------------------------------------------------- phases
// One test per transition of Connection::Phase (connection.h), over a
// scripted handler: the connection layer needs nothing of the API.

namespace {

// Answers every request "ok", defers those to /defer, rejects with an empty body.
struct ScriptedHandler final : http::Handler {
  http::Handled handle(const http::Request& request, std::string_view, http::ConnectionMode mode, std::string& out,
                       size_t) override {
    if (request.path == "/defer") return http::Handled::deferred;
    out += mode == http::ConnectionMode::close ? "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                                               : "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    return http::Handled::answered;
  }
  void reject(int code, std::string_view, std::string& out, http::Method, std::string_view, std::string_view) override {
    out += "HTTP/1.1 " + std::to_string(code) + " No\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
  }
  void out_of_memory(std::string& out, size_t start, http::ConnectionMode, http::Method) override {
    out.resize(start);
    out += "HTTP/1.1 503 No\r\nContent-Length: 0\r\n\r\n";
  }
  void complete_deferred(std::string& out) override { out += "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\ndeferred"; }
  void trim() override {}
};

struct Phased {
  Phased() { connection.start(); }
  void send(std::string_view bytes) {
    io.incoming += bytes;
    pump(connection, io);
  }
  void advance(double seconds) { testing::advance(connection, io, clock, seconds); }
  Connection::Phase phase() const { return connection.phase(); }

  ConnectionOptions options;
  FakeClock clock;
  BufferBudget buffers{8 << 20};
  WorkerCounters counters{kConnectionMetrics, 1};
  ScriptedHandler handler;
  LoopContext loop{options, clock, buffers, ConnectionCounters(counters.worker(0)), handler};
  FakeIo io{clock};
  Connection connection{loop, io};
};

using Phase = Connection::Phase;
constexpr std::string_view kOk = "GET /ok HTTP/1.1\r\n\r\n";
constexpr std::string_view kClose = "GET /ok HTTP/1.1\r\nConnection: close\r\n\r\n";
constexpr std::string_view kDefer = "POST /defer HTTP/1.1\r\nContent-Length: 0\r\n\r\n";
constexpr std::string_view kDeferClose = "POST /defer HTTP/1.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

}  // namespace

TEST_CASE("phase: the transition table") {
  constexpr Phase all[] = {Phase::reading, Phase::starved, Phase::waiting, Phase::closing, Phase::lingering, Phase::closed};
  int allowed = 0;
  for (Phase from : all) {
    for (Phase to : all) allowed += Connection::transition_allowed(from, to);
  }
  CHECK(allowed == 12);  // the edges below, one test each
  for (Phase to : all) CHECK_FALSE(Connection::transition_allowed(Phase::closed, to));
  CHECK_FALSE(Connection::transition_allowed(Phase::lingering, Phase::reading));
  CHECK_FALSE(Connection::transition_allowed(Phase::starved, Phase::reading));
}

TEST_CASE("phase: reading -> starved (a partial request while the budget is spent)") {
  Phased p;
  p.buffers.recharge(0, p.buffers.limit());
  p.send("GET /ok HTTP/1.1\r\n");
  CHECK(p.phase() == Phase::starved);
  CHECK_FALSE(p.io.reading);
  p.buffers.recharge(p.buffers.limit(), 0);
}

TEST_CASE("phase: reading -> waiting (a deferred request)") {
  Phased p;
  p.send(std::string(kDefer) + std::string(kOk));
  CHECK(p.phase() == Phase::waiting);
  CHECK(p.loop.deferred == &p.connection);
  CHECK(p.io.sent.empty());  // the request behind it waits
}

TEST_CASE("phase: reading -> closing (the last response queued, not yet taken)") {
  Phased p;
  p.io.send_room = 0;
  p.send(kClose);
  CHECK(p.phase() == Phase::closing);
  CHECK(p.io.writing);
}

TEST_CASE("phase: reading -> closed (a reset, or the idle timeout)") {
  {
    Phased p;
    p.io.reset = true;
    p.send(kOk);
    CHECK(p.phase() == Phase::closed);
  }
  {
    Phased p;
    p.advance(p.options.idle_timeout + 1);
    CHECK(p.phase() == Phase::closed);
  }
}

TEST_CASE("phase: starved -> closing (its read timeout answers 408)") {
  Phased p;
  p.buffers.recharge(0, p.buffers.limit());
  p.io.send_room = 0;
  p.send("GET /ok HTTP/1.1\r\n");
  REQUIRE(p.phase() == Phase::starved);
  p.advance(p.options.read_timeout + 0.1);
  CHECK(p.phase() == Phase::closing);
  p.buffers.recharge(p.buffers.limit(), 0);
}

TEST_CASE("phase: starved -> closed (the server closes it)") {
  Phased p;
  p.buffers.recharge(0, p.buffers.limit());
  p.send("GET /ok HTTP/1.1\r\n");
  REQUIRE(p.phase() == Phase::starved);
  p.connection.close();
  CHECK(p.phase() == Phase::closed);
  CHECK(p.io.closed);
  p.buffers.recharge(p.buffers.limit(), 0);
}

TEST_CASE("phase: waiting -> reading (the deferred response, then the requests behind it)") {
  Phased p;
  p.send(std::string(kDefer) + std::string(kOk));
  REQUIRE(p.phase() == Phase::waiting);
  p.loop.deliver_deferred();
  CHECK(p.phase() == Phase::reading);
  CHECK(p.io.sent.find("deferred") < p.io.sent.find("\r\n\r\nok"));
}

TEST_CASE("phase: waiting -> closing (the deferred response is the last one)") {
  Phased p;
  p.send(kDeferClose);
  REQUIRE(p.phase() == Phase::waiting);
  p.io.send_room = 0;
  p.loop.deliver_deferred();
  CHECK(p.phase() == Phase::closing);
}

TEST_CASE("phase: waiting -> closed (the wait outlasts the idle timeout)") {
  Phased p;
  p.send(kDefer);
  REQUIRE(p.phase() == Phase::waiting);
  p.advance(p.options.idle_timeout + 1);
  CHECK(p.phase() == Phase::closed);
  CHECK(p.loop.deferred == nullptr);
  p.loop.deliver_deferred();  // its answer goes nowhere
  CHECK(p.loop.output.empty());
}

TEST_CASE("phase: closing -> lingering (the last response sent, our FIN)") {
  Phased p;
  p.io.send_room = 0;
  p.send(kClose);
  REQUIRE(p.phase() == Phase::closing);
  p.io.send_room = SIZE_MAX;
  pump(p.connection, p.io);
  CHECK(p.phase() == Phase::lingering);
  CHECK(p.io.shut);
}

TEST_CASE("phase: closing -> closed (after the client's FIN nothing is left to linger for)") {
  Phased p;
  p.io.send_room = 0;
  p.io.client_fin = true;
  p.send(kOk);  // then the FIN: the request is answered, then the connection closes
  REQUIRE(p.phase() == Phase::closing);
  CHECK(p.connection.peer_closed());
  p.io.send_room = SIZE_MAX;
  pump(p.connection, p.io);
  CHECK(p.phase() == Phase::closed);
}

TEST_CASE("phase: lingering -> closed (the quiet time passes)") {
  Phased p;
  p.send(kClose);
  REQUIRE(p.phase() == Phase::lingering);
  p.advance(kLingerQuiet + 0.1);
  CHECK(p.phase() == Phase::closed);
}

// A scripted ConnectionIo and a hand-moved clock, for driving the shipped
// Connection (connection.h) without sockets or an event loop: connection_test,
// hot_path_test and the HTTP fuzzer use them. TestOwner stands in for the
// worker under the shipped transports (transport_test, tls_test, hot_path_test).
#pragma once

#include "connection.h"
#include "connection_io.h"
#include "handlers.h"
#include "metrics.h"
#include "store.h"
#include "transport.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <string>

namespace kv::testing {

// Atomic: a store's other threads (the snapshot writer) read it too.
class FakeClock final : public Clock {
 public:
  uint64_t now_ms() const override { return static_cast<uint64_t>(now() * 1000); }
  double now() const override { return seconds_.load(std::memory_order_relaxed); }
  void set(double seconds) { seconds_.store(seconds, std::memory_order_relaxed); }

 private:
  std::atomic<double> seconds_{1000};
};

// The client's side of the socket, as the connection sees it.
class FakeIo final : public ConnectionIo {
 public:
  explicit FakeIo(const FakeClock& clock) : clock_(clock) {}

  IoResult recv(char* buffer, size_t size) override {
    ++recv_calls;
    IoResult got = peek(buffer, size);
    if (got.kind == IoResult::ok) incoming.erase(0, got.bytes);
    return got;
  }

  IoResult peek(char* buffer, size_t size) override {
    if (reset) return {IoResult::error, 0};
    if (incoming.empty()) return {client_fin ? IoResult::eof : IoResult::would_block, 0};
    size_t n = std::min({size, incoming.size(), recv_chunk});
    std::memcpy(buffer, incoming.data(), n);
    return {IoResult::ok, n};
  }

  IoResult send(const char* data, size_t size) override {
    ++send_calls;
    if (reset) return {IoResult::error, 0};
    size_t n = std::min(size, send_room);
    if (n == 0) return {IoResult::would_block, 0};
    sent.append(data, n);
    send_room -= n;
    return {IoResult::ok, n};
  }

  void shutdown_write() override { shut = true; }
  void want_read(bool on) override { reading = on; }
  void want_write(bool on) override { writing = on; }
  void arm_timer(double seconds) override { timer_at = clock_.now() + seconds; }
  void close() override {
    closed = true;
    reading = writing = false;
  }
  size_t held_bytes() const override { return held; }
  bool busy() const override { return in_progress; }

  std::string incoming;         // sent by the client, not read yet
  bool client_fin = false;      // once incoming is read: end of stream
  bool reset = false;           // every call fails
  size_t recv_chunk = SIZE_MAX; // the most one recv returns
  size_t send_room = SIZE_MAX;  // what the socket still takes before it would block
  size_t held = 0;              // what the transport itself holds (TLS state): charged to the budget
  bool in_progress = false;     // busy(): a TLS handshake, a record half read or written
  std::string sent;             // everything the connection sent
  bool shut = false;
  bool closed = false;
  bool reading = false;
  bool writing = false;
  double timer_at = 0;          // when the armed timer fires
  size_t recv_calls = 0;
  size_t send_calls = 0;

 private:
  const FakeClock& clock_;
};

// One loop's worth of what connections need: a store, the buffer budget, the
// counters (the API's in /metrics), a handler and the LoopContext.
struct TestLoop {
  explicit TestLoop(uint64_t budget = 8 << 20, ConnectionOptions settings = {}, const TokenStore* tokens = nullptr)
      : config(std::move(settings)),
        store(16, 64 << 20, clock),
        buffers(budget),
        api(kApiMetrics, 1),
        connections(kConnectionMetrics, 1),
        connection_gauges(kv::connection_gauges(buffers, 100)),
        handler(store, metrics, ApiCounters(api.worker(0)), date, tokens),
        loop(config, clock, buffers, ConnectionCounters(connections.worker(0)), handler) {
    metrics.add(api);
    metrics.add(connections);
    metrics.add(connection_gauges);
  }

  ConnectionOptions config;
  FakeClock clock;
  Store store;
  BufferBudget buffers;
  WorkerCounters api;
  WorkerCounters connections;
  ComputedMetrics connection_gauges;
  Metrics metrics;
  http::DateHeader date;
  RequestHandler handler;
  LoopContext loop;
};

// The owner of shipped transports (socket_io.h, tls_io.h) in a test: notes
// each retirement and frees nothing (the test owns them).
struct TestOwner final : TransportOwner {
  void retire(Transport&) override { ++retired; }
  void reap() override { ++events; }
  int retired = 0;
  int events = 0;  // events handled (reap follows each)
};

// What an event loop would do: deliver readable and writable events while the
// connection wants them and the fake socket can satisfy them.
inline void pump(Connection& connection, FakeIo& io, int max_events = 100000) {
  for (int i = 0; i < max_events && !connection.closed(); ++i) {
    if (io.writing && io.send_room > 0) {
      connection.on_writable();
    } else if (io.reading && (!io.incoming.empty() || io.client_fin)) {
      connection.on_readable();
    } else {
      return;
    }
  }
}

// Moves the clock to `seconds` from now, firing the timer each time it is due on the way.
inline void advance(Connection& connection, FakeIo& io, FakeClock& clock, double seconds) {
  double end = clock.now() + seconds;
  for (int fired = 0; fired < 100000 && !connection.closed() && io.timer_at <= end; ++fired) {
    clock.set(std::max(clock.now(), io.timer_at));
    connection.on_timer();
    pump(connection, io);
  }
  clock.set(end);
}

}  // namespace kv::testing

// Monotonic time behind an interface so tests can move it by hand: milliseconds
// for TTLs (the store), seconds for connection deadlines (connection.h).
#pragma once

#include <cstdint>
#include <ctime>

namespace kv {

class Clock {
 public:
  virtual ~Clock() = default;
  // Monotonic milliseconds.
  virtual uint64_t now_ms() const = 0;
  // Monotonic seconds; a clock that keeps finer time than milliseconds overrides it.
  virtual double now() const { return static_cast<double>(now_ms()) * 1e-3; }
  // Monotonic nanoseconds at the finest resolution the clock has: for
  // measuring (request latency), never for deadlines.
  virtual uint64_t now_ns() const { return static_cast<uint64_t>(now() * 1e9); }
};

// The server's clock. Deadlines and TTLs read the coarse clock (vDSO, no
// syscall, ~4 ms resolution: they need no finer); latency reads the fine one
// (vDSO too).
class MonotonicClock final : public Clock {
 public:
  uint64_t now_ms() const override {
    timespec ts = read(CLOCK_MONOTONIC_COARSE);
    return static_cast<uint64_t>(ts.tv_sec) * 1000 + static_cast<uint64_t>(ts.tv_nsec) / 1000000;
  }
  double now() const override {
    timespec ts = read(CLOCK_MONOTONIC_COARSE);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
  }
  uint64_t now_ns() const override {
    timespec ts = read(CLOCK_MONOTONIC);
    return static_cast<uint64_t>(ts.tv_sec) * 1000000000 + static_cast<uint64_t>(ts.tv_nsec);
  }

 private:
  static timespec read(clockid_t id) {
    timespec ts;
    clock_gettime(id, &ts);
    return ts;
  }
};

// Entries keep their expiry in 32 bits as a count of these ticks (13 years
// of range); 0 means "never".
constexpr uint64_t kExpiryTickMs = 100;

// The first tick at or after a monotonic time: rounded up, so an entry never
// expires early (at most one tick late); the range's end saturates.
inline uint32_t tick_at_or_after(uint64_t ms) {
  uint64_t tick = (ms + kExpiryTickMs - 1) / kExpiryTickMs;
  return tick > UINT32_MAX ? UINT32_MAX : static_cast<uint32_t>(tick);
}

// The first tick at which an entry put at now_ms with this TTL is expired.
inline uint32_t expiry_tick(uint64_t now_ms, uint32_t ttl_seconds) {
  return ttl_seconds == 0 ? 0 : tick_at_or_after(now_ms + uint64_t{ttl_seconds} * 1000);
}

inline bool is_expired(uint32_t expiry, uint64_t now_ms) { return expiry != 0 && now_ms / kExpiryTickMs >= expiry; }

}  // namespace kv

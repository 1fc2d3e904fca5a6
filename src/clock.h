// Seconds for TTLs, behind an interface so tests can move time by hand.
#pragma once

#include <cstdint>
#include <ctime>

namespace kv {

class Clock {
 public:
  virtual ~Clock() = default;
  // Monotonic seconds; always >= 1 so 0 can mean "never expires".
  virtual uint32_t now_seconds() const = 0;
};

class MonotonicClock final : public Clock {
 public:
  uint32_t now_seconds() const override {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);  // vDSO, no syscall
    return static_cast<uint32_t>(ts.tv_sec) + 1;
  }
};

}  // namespace kv

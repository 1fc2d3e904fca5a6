// The process-wide budget of connection buffers: a connection's carried-over
// input and its unsent output, charged by every worker loop against one share
// of --memory-limit. Spending it never fails; a loop that finds it spent
// stops producing output for the connections that hold it and stops growing
// their partial requests (connection.h).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace kv {

// The share of --memory-limit set aside for connection buffers (1/8); the
// store gets what is left after the process's own overhead.
constexpr uint64_t kBufferBudgetDivisor = 8;

class BufferBudget {
 public:
  explicit BufferBudget(uint64_t limit) : limit_(limit) {}

  // A holder's charge goes from `before` to `after` bytes.
  void recharge(size_t before, size_t after) {
    if (after > before) used_.fetch_add(after - before, std::memory_order_relaxed);
    if (after < before) used_.fetch_sub(before - after, std::memory_order_relaxed);
  }
  bool spent() const { return used() >= limit_; }
  uint64_t used() const { return used_.load(std::memory_order_relaxed); }
  uint64_t limit() const { return limit_; }

 private:
  const uint64_t limit_;
  std::atomic<uint64_t> used_{0};
};

}  // namespace kv

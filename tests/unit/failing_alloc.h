// A seam for allocation failure: replaces the global operator new of the
// test binary whose one source includes this header, so that a test can
// make an allocation throw std::bad_alloc as it would when memory runs out
// (under vm.overcommit_memory=2 or an address-space limit). It works under
// ASan too, which keeps its own operator new[] and free() underneath.
//
//   failing_alloc::Armed armed(n);          // the n-th allocation from now fails
//   failing_alloc::Armed armed(n, sticky);  // ... and every later one, until disarmed
//
// Threads that set failing_alloc::exempt (a test thread waiting for
// another one) never fail.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <new>

namespace failing_alloc {

inline std::atomic<long> countdown{-1};  // allocations before one fails; -1: none will
inline std::atomic<bool> sticky{false};  // once one failed, every later one fails
inline std::atomic<bool> failing{false};
inline std::atomic<long> failures{0};
inline thread_local bool exempt = false;

inline bool should_fail() {
  if (exempt) return false;
  if (failing.load(std::memory_order_relaxed)) {
    failures.fetch_add(1, std::memory_order_relaxed);
    return true;
  }
  long left = countdown.load(std::memory_order_relaxed);
  while (left >= 0) {
    if (countdown.compare_exchange_weak(left, left - 1, std::memory_order_relaxed)) {
      if (left > 0) return false;
      failures.fetch_add(1, std::memory_order_relaxed);
      if (sticky.load(std::memory_order_relaxed)) failing = true;
      return true;
    }
  }
  return false;
}

// While it lives, allocations fail as asked; failures() tells whether any did.
class Armed {
 public:
  explicit Armed(long after, bool keep_failing = false) {
    failing_alloc::failures = 0;
    failing = false;
    sticky = keep_failing;
    countdown = after;
  }
  ~Armed() { disarm(); }
  Armed(const Armed&) = delete;
  Armed& operator=(const Armed&) = delete;
  void disarm() {
    countdown = -1;
    failing = false;
  }
  long failures() const { return failing_alloc::failures.load(); }
};

}  // namespace failing_alloc

// GCC sees malloc() and free() inside operator new and delete and warns of a mismatch that is not one.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif

void* operator new(std::size_t size) {
  if (failing_alloc::should_fail()) throw std::bad_alloc();
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t size, const std::nothrow_t&) noexcept {
  if (failing_alloc::should_fail()) return nullptr;
  return std::malloc(size == 0 ? 1 : size);
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }

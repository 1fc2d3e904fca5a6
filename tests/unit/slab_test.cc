#include "store.h"
#include "slab.h"

#include <doctest/doctest.h>
#include <fmt/core.h>
#include <sys/mman.h>

#include <cstring>
#include <fstream>
#include <string>
#include <vector>

using namespace kv;

namespace {

// The real system calls, counted, each of which a test can make fail.
struct Syscalls {
  static inline bool fail_reserve = false, fail_make_usable = false, fail_give_back = false, fail_allocate = false;
  static inline int reserves = 0, make_usables = 0, give_backs = 0, allocates = 0;
  static void reset() {
    fail_reserve = fail_make_usable = fail_give_back = fail_allocate = false;
    reserves = make_usables = give_backs = allocates = 0;
  }
};

const MemoryCalls kCounted{
    [](size_t bytes) -> void* {
      if (Syscalls::fail_reserve) return MAP_FAILED;
      ++Syscalls::reserves;
      return system_memory_calls().reserve(bytes);
    },
    [](void* at, size_t bytes) {
      if (Syscalls::fail_make_usable) return -1;
      ++Syscalls::make_usables;
      return system_memory_calls().make_usable(at, bytes);
    },
    [](void* at, size_t bytes) {
      if (Syscalls::fail_give_back) return -1;
      ++Syscalls::give_backs;
      return system_memory_calls().give_back(at, bytes);
    },
    [](void* at, size_t bytes) { return system_memory_calls().unreserve(at, bytes); },
    [](size_t bytes) -> void* {
      if (Syscalls::fail_allocate) return nullptr;
      ++Syscalls::allocates;
      return system_memory_calls().allocate(bytes);
    },
    [](void* at) { system_memory_calls().deallocate(at); },
};

// Whether the handle is a chunk in use, as the page walk sees it.
bool in_use(const Slab& slab, Handle handle) {
  bool found = false;
  slab.for_each_in_use(Slab::page_of(handle), [&](Handle h) { found |= h == handle; });
  return found;
}

constexpr size_t kClass = 9;  // 160-byte chunks

// Takes every chunk of kClass the slab's free pages hold, writing each.
std::vector<Handle> fill(Slab& slab) {
  std::vector<Handle> taken;
  for (Handle h; (h = slab.take(kClass)) != kNoHandle;) {
    std::memset(slab.at(h), 0x5a, Slab::chunk_size(kClass));
    taken.push_back(h);
  }
  return taken;
}

size_t mappings() {
  std::ifstream maps("/proc/self/maps");
  size_t lines = 0;
  for (std::string line; std::getline(maps, line);) ++lines;
  return lines;
}

class FakeClock final : public Clock {
 public:
  uint64_t now_ms() const override { return 1000000; }
};

}  // namespace

TEST_CASE("pages come from one reservation, made usable an arena at a time") {
  Syscalls::reset();
  Slab slab(1000, kCounted);
  CHECK(Syscalls::reserves == 0);  // nothing until the first page
  for (int i = 0; i < 300; ++i) REQUIRE(slab.map_page());
  CHECK(Syscalls::reserves == 1);
  CHECK(Syscalls::make_usables == 3);  // 128 + 128 + 44 pages
  CHECK(slab.charged_bytes() == 300 * Slab::kPageSize);
  CHECK(fill(slab).size() == 300 * Slab::chunks_per_page(kClass));
}

TEST_CASE("the reservation bounds the pages") {
  Syscalls::reset();
  Slab slab(5, kCounted);
  for (int i = 0; i < 5; ++i) REQUIRE(slab.map_page());
  CHECK_FALSE(slab.map_page());
  CHECK(slab.charged_pages() == 5);
  Slab none(0, kCounted);
  CHECK_FALSE(none.map_page());
  CHECK(Syscalls::reserves == 1);
}

TEST_CASE("emptied pages are given back, uncharged, and reused before the slab grows") {
  Syscalls::reset();
  Slab slab(1000, kCounted);
  for (int i = 0; i < 3; ++i) REQUIRE(slab.map_page());
  std::vector<Handle> taken = fill(slab);
  for (Handle h : taken) slab.release(h);
  // One empty page stays for the next allocation; the other two go back.
  CHECK(Syscalls::give_backs == 2);
  CHECK(slab.charged_pages() == 1);
  CHECK(slab.has_free_page());
  for (int i = 0; i < 2; ++i) REQUIRE(slab.map_page());
  CHECK(Syscalls::make_usables == 1);  // no growth: the given-back pages came first
  CHECK(slab.charged_pages() == 3);
  std::vector<Handle> again = fill(slab);
  CHECK(again.size() == taken.size());
  for (Handle h : again) CHECK(in_use(slab, h));
  slab.release(again.front());
  CHECK_FALSE(in_use(slab, again.front()));
}

TEST_CASE("a failing madvise leaves the page free and charged") {
  Syscalls::reset();
  Slab slab(1000, kCounted);
  for (int i = 0; i < 2; ++i) REQUIRE(slab.map_page());
  std::vector<Handle> taken = fill(slab);
  Syscalls::fail_give_back = true;
  for (Handle h : taken) slab.release(h);
  CHECK(slab.charged_pages() == 2);  // still resident, so still counted
  CHECK_FALSE(slab.give_back_free_page());
  CHECK(slab.charged_pages() == 2);
  // The pages are still good.
  CHECK(fill(slab).size() == taken.size());
  Syscalls::fail_give_back = false;
}

TEST_CASE("a failing page-table growth adds no page and changes nothing (no throw under the lock)") {
  Syscalls::reset();
  Slab slab(1000, kCounted);
  REQUIRE(slab.map_page());
  int grown = Syscalls::allocates;  // the first growth: room for 64 pages
  CHECK(grown == 3);
  for (int i = 1; i < 64; ++i) REQUIRE(slab.map_page());
  CHECK(Syscalls::allocates == grown);  // within the reserved room: no allocation
  Syscalls::fail_allocate = true;
  CHECK_FALSE(slab.map_page());  // the 65th needs the tables doubled
  CHECK(slab.page_count() == 64);
  CHECK(slab.charged_pages() == 64);
  Syscalls::fail_allocate = false;
  REQUIRE(slab.map_page());
  CHECK(slab.page_count() == 65);
  CHECK(fill(slab).size() == 65 * Slab::chunks_per_page(kClass));
}

TEST_CASE("a failing mmap or mprotect adds no page and changes nothing") {
  Syscalls::reset();
  Slab slab(1000, kCounted);
  Syscalls::fail_reserve = true;
  CHECK_FALSE(slab.map_page());
  CHECK(slab.charged_pages() == 0);
  Syscalls::fail_reserve = false;
  for (size_t i = 0; i < Slab::kArenaPages; ++i) REQUIRE(slab.map_page());
  Syscalls::fail_make_usable = true;
  CHECK_FALSE(slab.map_page());
  CHECK(slab.charged_pages() == Slab::kArenaPages);
  Syscalls::fail_make_usable = false;
  CHECK(slab.map_page());
  CHECK(fill(slab).size() == (Slab::kArenaPages + 1) * Slab::chunks_per_page(kClass));
}

TEST_CASE("a shard whose memory calls fail answers too_large, and stays within its accounting") {
  FakeClock clock;
  Syscalls::reset();
  Syscalls::fail_reserve = true;
  Shard none(1 << 20, clock, kCounted);
  CHECK(none.put(make_key("k"), "v", 0) == PutStatus::too_large);
  CHECK(none.stats().bytes_used == 0);
  Syscalls::reset();
  const uint64_t limit = 64 * Slab::kPageSize;
  Shard shard(limit, clock, kCounted);
  Syscalls::fail_give_back = true;
  for (int round = 0; round < 3; ++round) {
    for (int i = 0; i < 20000; ++i) {
      std::string key = fmt::format("r{}:{}", round, i);
      REQUIRE(shard.put(make_key(key), std::string(round == 1 ? 200 : 20, 'v'), 0) == PutStatus::ok);
    }
    for (int i = 0; i < 20000; i += 2) shard.erase(make_key(fmt::format("r{}:{}", round, i)));
  }
  CHECK(shard.stats().bytes_used <= limit);
  CHECK(Syscalls::give_backs == 0);
  Syscalls::reset();
}

TEST_CASE("churn keeps the store at two mappings per shard at most") {
  FakeClock clock;
  size_t before = mappings();
  {
    Store store(16, 64 << 20, clock);
    // Alternate value sizes in runs, then delete one of them: pages empty
    // between live ones (each a separate mapping, once).
    for (int i = 0; i < 200000; ++i) {
      std::string value(i / 40 % 2 ? 200 : 100, 'v');
      REQUIRE(store.put(make_key(fmt::format("k{}", i)), value, 0) == PutStatus::ok);
    }
    for (int i = 0; i < 200000; ++i) {
      if (i / 40 % 2) store.erase(make_key(fmt::format("k{}", i)));
    }
    for (int i = 0; i < 50000; ++i) REQUIRE(store.put(make_key(fmt::format("n{}", i)), "x", 0) == PutStatus::ok);
    CHECK(mappings() <= before + 2 * 16 + 8);  // (+ a few for the allocator)
  }
  CHECK(mappings() <= before + 8);
}

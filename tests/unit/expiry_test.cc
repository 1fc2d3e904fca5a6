#include "expiry.h"

#include "clock.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <iterator>
#include <map>
#include <random>
#include <string>
#include <vector>

using namespace kv;

namespace {

constexpr size_t kValueSize = 20;
const size_t kClass = Slab::class_for(Entry::size_for(1, kValueSize, true));

// A slab whose chunks hold entries, and the index over it.
struct Fixture {
  Slab slab{64};
  ExpiryIndex index{slab};

  Fixture() {
    REQUIRE(index.reserve_pages(64));
    for (int i = 0; i < 8; ++i) REQUIRE(slab.map_page());
  }
  Entry& entry(Handle handle) { return Entry::at(slab, handle); }
  Handle put(uint32_t tick) {
    Handle handle = slab.take(kClass);
    REQUIRE(handle != kNoHandle);
    Entry& e = entry(handle);
    e.newer = e.older = kNoHandle;
    e.fill("k", std::string(kValueSize, 'v'), tick);
    index.update(handle, 0, tick);
    return handle;
  }
  void rewrite(Handle handle, uint32_t tick) {
    uint32_t before = entry(handle).expires_at();
    entry(handle).fill("k", std::string(kValueSize, 'v'), tick);
    index.update(handle, before, tick);
  }
  void remove(Handle handle) {
    uint32_t before = entry(handle).expires_at();
    slab.release(handle);
    index.update(handle, before, 0);
  }
};

uint64_t at_tick(uint32_t tick) { return uint64_t{tick} * kExpiryTickMs; }

}  // namespace

TEST_CASE("expiry index: the page with the soonest expiry is due once that expiry passes") {
  Fixture f;
  CHECK(f.index.due_page(at_tick(1000)) == Slab::kNoPage);
  f.put(0);  // no TTL: not indexed
  CHECK_FALSE(f.index.may_be_due(UINT64_MAX / 2));
  Handle late = f.put(50);
  uint32_t page = Slab::page_of(late);
  CHECK(f.index.due_page(at_tick(49)) == Slab::kNoPage);
  CHECK(f.index.due_page(at_tick(50)) == page);
  f.put(40);
  CHECK(f.index.due_page(at_tick(40)) == page);
  CHECK(f.index.due_page(at_tick(40) - 1) == Slab::kNoPage);
}

TEST_CASE("expiry index: of two pages, the one with the sooner expiry is due first") {
  Fixture f;
  Handle h = f.put(30);
  uint32_t page = Slab::page_of(h);
  // Fill the first page, so the next entry lands on another one.
  while (Slab::page_of(h) == page) h = f.put(0);
  Handle other = f.put(20);
  REQUIRE(Slab::page_of(other) != page);
  CHECK(f.index.due_page(at_tick(25)) == Slab::page_of(other));
  f.rewrite(other, 40);  // later than the first page's
  CHECK(f.index.due_page(at_tick(25)) == Slab::kNoPage);
  CHECK(f.index.due_page(at_tick(30)) == page);
}

TEST_CASE("expiry index: a rewrite to a later or earlier time, or to none, updates the page in place") {
  Fixture f;
  Handle a = f.put(10);
  Handle b = f.put(20);
  uint32_t page = Slab::page_of(a);
  REQUIRE(Slab::page_of(b) == page);
  f.rewrite(a, 30);  // later: b is the page's earliest now
  CHECK(f.index.due_page(at_tick(19)) == Slab::kNoPage);
  CHECK(f.index.due_page(at_tick(20)) == page);
  f.rewrite(a, 5);  // earlier
  CHECK(f.index.due_page(at_tick(5)) == page);
  CHECK(f.index.due_page(at_tick(5) - 1) == Slab::kNoPage);
  f.rewrite(a, 0);  // ttl 0: no expiry any more
  CHECK(f.index.due_page(at_tick(19)) == Slab::kNoPage);
  CHECK(f.index.due_page(at_tick(20)) == page);
  f.rewrite(b, 0);
  CHECK(f.index.due_page(UINT64_MAX / 2) == Slab::kNoPage);
  CHECK_FALSE(f.index.may_be_due(UINT64_MAX / 2));  // the rescan dropped the page
}

TEST_CASE("expiry index: removing entries (a delete of a TTL entry) updates the page") {
  Fixture f;
  Handle a = f.put(10);
  Handle b = f.put(10);
  Handle c = f.put(12);
  uint32_t page = Slab::page_of(a);
  f.remove(a);
  CHECK(f.index.due_page(at_tick(10)) == page);  // b still has it
  f.remove(b);
  CHECK(f.index.due_page(at_tick(11)) == Slab::kNoPage);
  CHECK(f.index.due_page(at_tick(12)) == page);
  f.remove(c);
  CHECK(f.index.due_page(UINT64_MAX / 2) == Slab::kNoPage);
  CHECK_FALSE(f.index.may_be_due(UINT64_MAX / 2));
}

TEST_CASE("expiry index: a chunk reserved for a batch is not an entry") {
  Fixture f;
  Handle a = f.put(10);
  Handle reserved = f.slab.take(kClass);
  f.entry(reserved).newer = Entry::kBatchChunk;
  f.entry(reserved).older = 0;
  // Whatever its bytes say, a rescan skips it.
  std::memset(f.slab.at(reserved) + 8, 0xff, Slab::chunk_size(kClass) - 8);
  f.remove(a);
  CHECK(f.index.due_page(UINT64_MAX / 2) == Slab::kNoPage);
  CHECK_FALSE(f.index.may_be_due(UINT64_MAX / 2));
}

TEST_CASE("expiry index: updates never scan; a stale bound costs one rescan when it comes due") {
  Fixture f;
  std::vector<Handle> handles;
  for (uint32_t i = 0; i < 100; ++i) handles.push_back(f.put(100 + i));
  uint32_t page = Slab::page_of(handles[0]);
  for (Handle h : handles) {
    if (f.entry(h).expires_at() < 150) f.remove(h);
  }
  for (size_t i = 50; i < 60; ++i) f.rewrite(handles[i], 500);
  CHECK(f.index.chunks_visited() == 0);
  CHECK(f.index.due_page(at_tick(159)) == Slab::kNoPage);
  CHECK(f.index.chunks_visited() <= Slab::kMaxChunksPerPage);
  CHECK(f.index.due_page(at_tick(160)) == page);
}

TEST_CASE("expiry index: randomised against a brute-force model (seed printed)") {
  uint64_t seed = std::random_device{}();
  INFO("seed " << seed);
  std::mt19937_64 random(seed);
  Fixture f;
  std::map<Handle, uint32_t> live;  // chunk -> expiry tick (0: none)
  for (int step = 0; step < 20000; ++step) {
    int op = static_cast<int>(random() % 4);
    uint32_t tick = random() % 3 == 0 ? 0 : static_cast<uint32_t>(1 + random() % 200);
    if (op == 0 || live.size() < 10) {
      Handle handle = f.slab.take(kClass);
      if (handle == kNoHandle) continue;
      f.entry(handle).newer = f.entry(handle).older = kNoHandle;
      f.entry(handle).fill("k", std::string(kValueSize, 'v'), tick);
      f.index.update(handle, 0, tick);
      live[handle] = tick;
    } else {
      auto it = std::next(live.begin(), static_cast<long>(random() % live.size()));
      if (op == 1) {
        f.remove(it->first);
        live.erase(it);
      } else {
        f.rewrite(it->first, tick);  // later, earlier, the same or none
        it->second = tick;
      }
    }
    if (step % 7 != 0) continue;
    // The due page holds the soonest expiry, and nothing is due before it.
    std::map<uint32_t, uint32_t> earliest;
    uint32_t soonest = 0;
    for (auto [handle, t] : live) {
      if (t == 0) continue;
      uint32_t& e = earliest[Slab::page_of(handle)];
      e = e == 0 ? t : std::min(e, t);
      soonest = soonest == 0 ? t : std::min(soonest, t);
    }
    uint64_t visited = f.index.chunks_visited();
    auto due_at = [&](uint64_t now_ms) {
      // Stale pages take rescans, a bounded number per call.
      uint32_t due = f.index.due_page(now_ms);
      for (int calls = 0; calls < 8 && due == Slab::kNoPage && f.index.may_be_due(now_ms); ++calls) {
        due = f.index.due_page(now_ms);
      }
      return due;
    };
    if (soonest == 0) {
      REQUIRE(due_at(at_tick(1000)) == Slab::kNoPage);
    } else {
      REQUIRE(due_at(at_tick(soonest) - 1) == Slab::kNoPage);
      uint32_t due = due_at(at_tick(soonest));
      REQUIRE(due != Slab::kNoPage);
      REQUIRE(earliest[due] == soonest);
    }
    // A due_page call rescans at most kRescansPerCall pages.
    REQUIRE(f.index.chunks_visited() - visited <= 9 * ExpiryIndex::kRescansPerCall * Slab::kMaxChunksPerPage);
  }
}

#include "index.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

using namespace kv;

namespace {

// Keys live in a vector, as entries live in the slab: a handle is the
// position of its key.
struct Keys {
  std::vector<std::string>* keys;
  std::string_view operator()(Handle handle) const { return (*keys)[handle]; }
};

struct Fixture {
  std::vector<std::string> keys;
  HandleIndex<Keys> index{Keys{&keys}};

  Handle add_key(std::string key) {
    keys.push_back(std::move(key));
    return static_cast<Handle>(keys.size() - 1);
  }
  const Handle* find(Handle handle) { return index.find(make_key(keys[handle])); }
};

constexpr size_t kStep = kRehashStepSlots;

}  // namespace

TEST_CASE("index: insert, find, repoint, erase, across many growths") {
  Fixture f;
  const Handle n = 100000;
  for (Handle i = 0; i < n; ++i) {
    Handle h = f.add_key("key:" + std::to_string(i));
    f.index.insert(make_key(f.keys[h]), h);
  }
  CHECK(f.index.size() == n);
  for (Handle i = 0; i < n; ++i) {
    const Handle* slot = f.find(i);
    REQUIRE(slot != nullptr);
    CHECK(*slot == i);
  }
  CHECK(f.index.find(make_key("absent")) == nullptr);
  // Repointing a slot (the shard does it when the slab moves a chunk).
  Handle copy = f.add_key("key:7");
  *f.index.find(make_key("key:7")) = copy;
  CHECK(*f.index.find(make_key("key:7")) == copy);
  for (Handle i = 0; i < n; i += 2) CHECK(f.index.erase(make_key(f.keys[i])));
  CHECK_FALSE(f.index.erase(make_key("key:0")));
  CHECK(f.index.size() == n / 2);
  for (Handle i = 1; i < n; i += 2) CHECK(f.find(i) != nullptr);
}

TEST_CASE("index: no call rehashes more than one step's slots, whatever the size (bounded work)") {
  Fixture f;
  const Handle n = 600000;
  f.keys.reserve(n);
  uint64_t most = 0;
  size_t rebuilds = 0;
  bool was_rebuilding = false;
  for (Handle i = 0; i < n; ++i) {
    Handle h = f.add_key("k" + std::to_string(i));
    uint64_t before = f.index.work();
    f.index.insert(make_key(f.keys[h]), h);
    most = std::max(most, f.index.work() - before);
    if (f.index.rebuilding() && !was_rebuilding) ++rebuilds;
    was_rebuilding = f.index.rebuilding();
    // A rebuild in progress: the key may be in either table, and is found.
    if (i % 4096 == 0) REQUIRE(f.find(i / 2) != nullptr);
  }
  MESSAGE("rebuilds: " << rebuilds << ", capacity " << f.index.capacity() << ", most slots moved by one insert " << most);
  CHECK(rebuilds >= 16);  // 16 slots .. 2^20
  CHECK(most <= kStep);
  // Lookups and erases take one step each at most (the shard calls step()
  // once per call); erasing never rebuilds.
  for (Handle i = 0; i < n; i += 3) {
    uint64_t before = f.index.work();
    f.index.step();
    CHECK(f.index.erase(make_key(f.keys[i])));
    most = std::max(most, f.index.work() - before);
  }
  CHECK(most <= kStep);
}

TEST_CASE("index: churn at a constant size reuses deleted slots without growing") {
  Fixture f;
  const Handle live = 50000;
  for (Handle i = 0; i < live; ++i) f.index.insert(make_key(f.keys.emplace_back("a" + std::to_string(i))), i);
  size_t capacity = f.index.capacity();
  uint64_t most = 0;
  // Delete the oldest, insert a new one, 8 times over: deleted slots pile
  // up and are cleared by same-size rebuilds, each a step at a time.
  for (Handle i = live; i < 9 * live; ++i) {
    CHECK(f.index.erase(make_key(f.keys[i - live])));
    Handle h = f.add_key("a" + std::to_string(i));
    uint64_t before = f.index.work();
    f.index.insert(make_key(f.keys[h]), h);
    most = std::max(most, f.index.work() - before);
  }
  CHECK(f.index.size() == live);
  CHECK(f.index.capacity() <= 2 * capacity);  // room to grow once, then steady
  CHECK(most <= kStep);
  for (Handle i = 8 * live; i < 9 * live; ++i) REQUIRE(f.find(i) != nullptr);
}

TEST_CASE("index: the next table is charged before it is allocated") {
  Fixture f;
  uint64_t most_jump = 0;
  for (Handle i = 0; i < 400000; ++i) {
    Handle h = f.add_key("c" + std::to_string(i));
    uint64_t before = f.index.charged_bytes();
    f.index.insert(make_key(f.keys[h]), h);
    uint64_t after = f.index.charged_bytes();
    if (after > before) most_jump = std::max(most_jump, after - before);
  }
  MESSAGE("largest rise of the charge on one insert: " << most_jump << " bytes");
  // About table / (capacity / 8) = 80 bytes an insert, never a whole table
  // (a table of 2^20 slots is 5 MiB).
  CHECK(most_jump <= 1024);
}

TEST_CASE("index: reserve makes room for a batch without a rebuild during it, finishing a running one within its bound") {
  Fixture f;
  std::mt19937_64 rng(7);
  std::vector<Handle> live;
  size_t finished = 0;
  for (int round = 0; round < 600; ++round) {
    size_t count = 1 + rng() % 1000;
    bool was_rebuilding = f.index.rebuilding();
    uint64_t work = f.index.work();
    // Never false: finish() ends a running rebuild within count + 1 steps
    // (its bound), so reserve never has to give up.
    REQUIRE(f.index.reserve(count));
    CHECK(f.index.work() - work <= (count + 1) * kStep);
    if (was_rebuilding && !f.index.rebuilding()) ++finished;
    uint64_t charged = f.index.charged_bytes();
    size_t capacity = f.index.capacity();
    bool rebuilding = f.index.rebuilding();
    for (size_t j = 0; j < count; ++j) {
      Handle h = f.add_key("b" + std::to_string(f.keys.size()));
      f.index.insert(make_key(f.keys[h]), h);
      live.push_back(h);
    }
    // The same table, so no allocation and no memory beyond what reserve
    // charged (the ramp toward the next table aside).
    CHECK(f.index.capacity() == capacity);
    CHECK((rebuilding || !f.index.rebuilding()));
    CHECK(f.index.charged_bytes() <= charged + count * 128);
    if (round % 3 == 0) {
      // Erase a random half of what is there.
      std::shuffle(live.begin(), live.end(), rng);
      for (size_t j = live.size() / 2; j < live.size(); ++j) REQUIRE(f.index.erase(make_key(f.keys[live[j]])));
      live.resize(live.size() / 2);
    }
    REQUIRE(f.index.size() == live.size());
  }
  MESSAGE("reserves that finished a running rebuild: " << finished);
  for (Handle h : live) REQUIRE(f.find(h) != nullptr);
  // A reserve larger than the running rebuild's spare room finishes it
  // first, within the same bound.
  Fixture g;
  Handle h = 0;
  for (; !g.index.rebuilding() || g.index.size() < 50000; ++h) {
    g.add_key("r" + std::to_string(h));
    REQUIRE(g.index.insert(make_key(g.keys[h]), h));
  }
  uint64_t work = g.index.work();
  size_t count = g.index.size();
  REQUIRE(g.index.reserve(count));
  MESSAGE("reserve(" << count << ") during a rebuild moved " << g.index.work() - work << " slots");
  CHECK(g.index.work() > work);
  CHECK(g.index.work() - work <= (count + 1) * kStep);
  for (Handle i = 0; i < h; ++i) REQUIRE(g.find(i) != nullptr);
}

namespace {
bool fail_allocate = false;
const MemoryCalls kFailable{
    system_memory_calls().reserve,
    system_memory_calls().make_usable,
    system_memory_calls().give_back,
    system_memory_calls().unreserve,
    [](size_t bytes) { return fail_allocate ? nullptr : system_memory_calls().allocate(bytes); },
    [](void* at) { system_memory_calls().deallocate(at); },
};
}  // namespace

TEST_CASE("index: a table that cannot be allocated fails the insert or reserve, and the index stays whole") {
  std::vector<std::string> keys;
  HandleIndex<Keys> index{Keys{&keys}, kFailable};
  auto add = [&](const std::string& name) {
    keys.push_back(name);
    return static_cast<Handle>(keys.size() - 1);
  };
  fail_allocate = true;
  Handle first = add("f0");
  CHECK_FALSE(index.insert(make_key(keys[first]), first));  // not even the first table
  CHECK_FALSE(index.reserve(1));
  CHECK(index.size() == 0);
  fail_allocate = false;
  Handle n = 0;
  // Fill the table to its load limit, then fail the next one.
  for (; index.size() < 14 && index.reserve(1); ++n) {
    Handle h = add("g" + std::to_string(n));
    REQUIRE(index.insert(make_key(keys[h]), h));
  }
  REQUIRE(index.size() == 14);
  REQUIRE(index.capacity() == 16);
  fail_allocate = true;
  Handle extra = add("extra");
  CHECK_FALSE(index.reserve(1));
  CHECK_FALSE(index.insert(make_key(keys[extra]), extra));
  CHECK(index.find(make_key("extra")) == nullptr);
  CHECK(index.size() == 14);
  for (Handle i = 0; i < n; ++i) CHECK(index.find(make_key("g" + std::to_string(i))) != nullptr);
  fail_allocate = false;
  CHECK(index.insert(make_key(keys[extra]), extra));
  CHECK(index.size() == 15);
}

TEST_CASE("index: shrink rebuilds an index sized for entries since removed") {
  Fixture f;
  for (Handle i = 0; i < 100000; ++i) f.index.insert(make_key(f.keys.emplace_back("s" + std::to_string(i))), i);
  for (Handle i = 0; i < 99990; ++i) f.index.erase(make_key(f.keys[i]));
  uint64_t big = f.index.charged_bytes();
  // Bounded: a call may take a few steps; repeated calls finish it.
  int calls = 0;
  while (f.index.shrink(0, 64)) ++calls;
  MESSAGE("shrink calls: " << calls);
  CHECK(calls > 1);
  CHECK(f.index.charged_bytes() < big / 100);
  CHECK_FALSE(f.index.rebuilding());
  for (Handle i = 99990; i < 100000; ++i) CHECK(f.find(i) != nullptr);
  CHECK(f.index.size() == 10);
}

TEST_CASE("index: randomised model test against a reference map") {
  std::random_device device;
  const uint64_t seed = std::getenv("KV_SEED") ? std::stoull(std::getenv("KV_SEED")) : device();
  CAPTURE(seed);  // rerun with KV_SEED=<seed>
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  Fixture f;
  std::unordered_map<std::string, Handle> model;
  // A small key space, so keys come and go many times; phases of mostly
  // inserts and mostly erases grow and shrink the index repeatedly.
  const size_t key_space = 1 + rng() % 20000;
  for (int op = 0; op < 200000; ++op) {
    bool grow = (op / 25000) % 2 == 0;
    std::string name = "m" + std::to_string(rng() % key_space);
    KeyRef key = make_key(name);
    auto it = model.find(name);
    switch (rng() % 8) {
      case 0: case 1: case 2: {  // insert (a new chunk for an existing key: repoint)
        if (!grow && rng() % 2) break;
        Handle h = f.add_key(name);
        if (it == model.end()) {
          f.index.insert(key, h);
          model.emplace(name, h);
        } else {
          Handle* slot = f.index.find(key);
          REQUIRE(slot != nullptr);
          REQUIRE(*slot == it->second);
          *slot = h;
          it->second = h;
        }
        break;
      }
      case 3: case 4: {  // erase
        if (grow && rng() % 2) break;
        f.index.step();
        REQUIRE(f.index.erase(key) == (it != model.end()));
        if (it != model.end()) model.erase(it);
        break;
      }
      case 5: {  // a batch's reserve, then its inserts
        size_t count = rng() % 64;
        f.index.reserve(count);
        for (size_t j = 0; j < count; ++j) {
          std::string other = "m" + std::to_string(rng() % key_space);
          if (model.count(other)) continue;
          Handle h = f.add_key(other);
          f.index.insert(make_key(other), h);
          model.emplace(other, h);
        }
        break;
      }
      case 6: {
        if (rng() % 16 == 0) f.index.shrink(0, rng() % 8);
        break;
      }
      default: {  // lookup
        f.index.step();
        const Handle* slot = f.index.find(key);
        REQUIRE((slot != nullptr) == (it != model.end()));
        if (slot != nullptr) REQUIRE(*slot == it->second);
      }
    }
    REQUIRE(f.index.size() == model.size());
    if (op % 20000 == 0) {
      for (const auto& [name_, handle] : model) {
        const Handle* slot = f.index.find(make_key(name_));
        REQUIRE(slot != nullptr);
        REQUIRE(*slot == handle);
      }
    }
  }
}

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

using Index = HandleIndex<Keys>;

}  // namespace

TEST_CASE("index: insert, find, repoint, erase, across many splits") {
  Fixture f;
  const Handle n = 100000;
  for (Handle i = 0; i < n; ++i) {
    Handle h = f.add_key("key:" + std::to_string(i));
    REQUIRE(f.index.insert(make_key(f.keys[h]), h));
  }
  CHECK(f.index.size() == n);
  CHECK(f.index.segment_count() > 200);
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

TEST_CASE("index: grows a segment at a time: bounded work per insert, bytes per key flat, no second table") {
  Fixture f;
  const Handle n = 1200000;
  f.keys.reserve(n);
  uint64_t most = 0, most_rise = 0;
  double least_per_key = 1e9, most_per_key = 0;
  for (Handle i = 0; i < n; ++i) {
    Handle h = f.add_key("k" + std::to_string(i));
    uint64_t before = f.index.work();
    uint64_t bytes = f.index.charged_bytes();
    unsigned depth = f.index.depth();
    REQUIRE(f.index.insert(make_key(f.keys[h]), h));
    // The directory's doubling aside (counted apart): 2^depth pointers, 8
    // bytes each, once per doubling of the keys.
    uint64_t directory = f.index.depth() > depth ? size_t{1} << depth : 0;
    most = std::max(most, f.index.work() - before);
    if (f.index.charged_bytes() > bytes) {
      most_rise = std::max(most_rise, f.index.charged_bytes() - bytes - directory * sizeof(void*));
    }
    if (i >= 100000 && i % 1000 == 0) {
      double per_key = static_cast<double>(f.index.charged_bytes()) / f.index.size();
      least_per_key = std::min(least_per_key, per_key);
      most_per_key = std::max(most_per_key, per_key);
    }
    if (i % 65536 == 0) REQUIRE(f.find(i / 2) != nullptr);
  }
  MESSAGE("segments " << f.index.segment_count() << ", depth " << f.index.depth() << "; most slots rehashed by one insert "
          << most << "; largest rise of the index's bytes on one insert " << most_rise << "; bytes a key from 100k to "
          << n << " keys: " << least_per_key << " .. " << most_per_key);
  CHECK(most <= Index::kMaxGrowthsPerInsert * Index::kMaxSegmentSlots);
  // One segment's new tables (a split makes two smaller ones) plus the
  // directory's doubling: never a whole second table (6+ MB here).
  CHECK(most_rise <= 2 * Index::kMaxSegmentSlots * 5);
  CHECK(most_per_key <= 7.8);  // with up to kKeptTables freed tables of each size
  CHECK(least_per_key >= 5.7);
  for (Handle i = 0; i < n; i += 7) REQUIRE(f.find(i) != nullptr);
}

TEST_CASE("index: churn at a constant size reuses deleted slots without growing") {
  Fixture f;
  const Handle live = 50000;
  for (Handle i = 0; i < live; ++i) REQUIRE(f.index.insert(make_key(f.keys.emplace_back("a" + std::to_string(i))), i));
  uint64_t bytes = f.index.charged_bytes();
  uint64_t most = 0;
  // Delete the oldest, insert a new one, 8 times over: deleted slots pile
  // up and are cleared by rebuilding a segment at its size.
  for (Handle i = live; i < 9 * live; ++i) {
    CHECK(f.index.erase(make_key(f.keys[i - live])));
    Handle h = f.add_key("a" + std::to_string(i));
    uint64_t before = f.index.work();
    REQUIRE(f.index.insert(make_key(f.keys[h]), h));
    most = std::max(most, f.index.work() - before);
  }
  CHECK(f.index.size() == live);
  MESSAGE("bytes " << bytes << " then " << f.index.charged_bytes());
  // Keys leave some segments and crowd others, which split; emptied ones
  // are rebuilt smaller only at their limit or by shrink(): bounded, not
  // steady growth.
  CHECK(f.index.charged_bytes() <= bytes * 3 / 2);
  CHECK(most <= Index::kMaxGrowthsPerInsert * Index::kMaxSegmentSlots);
  for (Handle i = 8 * live; i < 9 * live; ++i) REQUIRE(f.find(i) != nullptr);
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

TEST_CASE("index: growth that cannot be allocated fails the insert, and the index stays whole") {
  std::vector<std::string> keys;
  HandleIndex<Keys> index{Keys{&keys}, kFailable};
  auto add = [&](const std::string& name) {
    keys.push_back(name);
    return static_cast<Handle>(keys.size() - 1);
  };
  fail_allocate = true;
  Handle first = add("f0");
  CHECK_FALSE(index.insert(make_key(keys[first]), first));  // not even the first segment
  CHECK(index.size() == 0);
  CHECK(index.charged_bytes() == 0);
  fail_allocate = false;
  // Insert until the next insert would need to grow or split, across
  // segments, then fail each kind of growth once.
  std::mt19937_64 rng(11);
  size_t failures = 0;
  for (Handle n = 0; n < 20000; ++n) {
    Handle h = add("g" + std::to_string(n));
    fail_allocate = rng() % 3 == 0;
    uint64_t bytes = index.charged_bytes();
    size_t size = index.size();
    if (!index.insert(make_key(keys[h]), h)) {
      ++failures;
      CHECK(index.size() == size);
      CHECK(index.charged_bytes() == bytes);
      CHECK(index.find(make_key(keys[h])) == nullptr);
      fail_allocate = false;
      REQUIRE(index.insert(make_key(keys[h]), h));
    }
  }
  fail_allocate = false;
  MESSAGE("inserts refused for want of memory: " << failures);
  CHECK(failures > 0);
  CHECK(index.size() == 20000);
  for (Handle h = 1; h < keys.size(); ++h) REQUIRE(index.find(make_key(keys[h])) != nullptr);
}

TEST_CASE("index: shrink rebuilds segments sized for keys since removed") {
  Fixture f;
  for (Handle i = 0; i < 100000; ++i) REQUIRE(f.index.insert(make_key(f.keys.emplace_back("s" + std::to_string(i))), i));
  for (Handle i = 0; i < 99000; ++i) f.index.erase(make_key(f.keys[i]));
  uint64_t big = f.index.charged_bytes();
  // Bounded: a call looks at a few segments; repeated calls finish it.
  int calls = 0;
  while (f.index.shrink(16) && calls < 100000) ++calls;
  MESSAGE("shrink calls: " << calls << ", bytes " << big << " -> " << f.index.charged_bytes());
  CHECK(calls > 1);
  CHECK(f.index.charged_bytes() < big / 4);
  for (Handle i = 99000; i < 100000; ++i) CHECK(f.find(i) != nullptr);
  CHECK(f.index.size() == 1000);
}

TEST_CASE("index: randomised model test against a reference map") {
  std::random_device device;
  const uint64_t seed = std::getenv("KV_SEED") ? std::stoull(std::getenv("KV_SEED")) : device();
  CAPTURE(seed);  // rerun with KV_SEED=<seed>
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  Fixture f;
  std::unordered_map<std::string, Handle> model;
  // A key space of 50k to 200k keys, so keys come and go many times; phases
  // of mostly inserts and mostly erases grow (hundreds of splits) and
  // shrink the index repeatedly.
  const size_t key_space = 50000 + rng() % 150000;
  MESSAGE("seed " << seed << ", key space " << key_space);
  size_t most_segments = 0;
  for (int op = 0; op < 600000; ++op) {
    most_segments = std::max(most_segments, f.index.segment_count());
    bool grow = (op / 25000) % 2 == 0;
    std::string name = "m" + std::to_string(rng() % key_space);
    KeyRef key = make_key(name);
    auto it = model.find(name);
    switch (rng() % 8) {
      case 0: case 1: case 2: {  // insert (a new chunk for an existing key: repoint)
        if (!grow && rng() % 2) break;
        Handle h = f.add_key(name);
        if (it == model.end()) {
          REQUIRE(f.index.insert(key, h));
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
        REQUIRE(f.index.erase(key) == (it != model.end()));
        if (it != model.end()) model.erase(it);
        break;
      }
      case 5: {  // a run of inserts
        size_t count = rng() % 64;
        for (size_t j = 0; j < count; ++j) {
          std::string other = "m" + std::to_string(rng() % key_space);
          if (model.count(other)) continue;
          Handle h = f.add_key(other);
          REQUIRE(f.index.insert(make_key(other), h));
          model.emplace(other, h);
        }
        break;
      }
      case 6: {
        if (rng() % 16 == 0) f.index.shrink(rng() % 8);
        break;
      }
      default: {  // lookup
        const Handle* slot = f.index.find(key);
        REQUIRE((slot != nullptr) == (it != model.end()));
        if (slot != nullptr) REQUIRE(*slot == it->second);
      }
    }
    REQUIRE(f.index.size() == model.size());
    if (op % 50000 == 0) {
      for (const auto& [name_, handle] : model) {
        const Handle* slot = f.index.find(make_key(name_));
        REQUIRE(slot != nullptr);
        REQUIRE(*slot == handle);
      }
    }
  }
  MESSAGE("most segments at once: " << most_segments << ", directory depth " << f.index.depth());
  CHECK(most_segments > 50);  // many splits (segments never merge)
}

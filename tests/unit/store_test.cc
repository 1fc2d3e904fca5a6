#include "store.h"

#include <doctest/doctest.h>
#include <fmt/core.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <mutex>
#include <map>
#include <random>
#include <thread>
#include <optional>
#include <vector>
#include <string>

using namespace kv;

namespace {

class FakeClock final : public Clock {
 public:
  uint64_t now_ms() const override { return now * 1000 + extra_ms; }
  uint64_t now = 1000;  // seconds
  uint64_t extra_ms = 0;
};

std::optional<std::string> lookup(Store& store, std::string_view key) {
  std::optional<std::string> value;
  store.get(make_key(key), [&](std::string_view v) { value = std::string(v); });
  return value;
}

void put(Store& store, std::string_view key, std::string_view value, uint32_t ttl = 0) {
  REQUIRE(store.put(make_key(key), value, ttl) == PutStatus::ok);
}

}  // namespace

TEST_CASE("put, get, overwrite, delete") {
  FakeClock clock;
  Store store(16, 64 << 20, clock);
  CHECK_FALSE(lookup(store, "a"));
  put(store, "a", "1");
  CHECK(lookup(store, "a") == "1");
  put(store, "a", "a much longer value than before");
  CHECK(lookup(store, "a") == "a much longer value than before");
  put(store, "a", "");
  CHECK(lookup(store, "a") == "");
  CHECK(store.stats().entries == 1);
  CHECK(store.erase(make_key("a")));
  CHECK_FALSE(store.erase(make_key("a")));
  CHECK_FALSE(lookup(store, "a"));
  CHECK(store.stats().entries == 0);
}

TEST_CASE("hits and misses are counted") {
  FakeClock clock;
  Store store(4, 64 << 20, clock);
  put(store, "a", "1");
  lookup(store, "a");
  lookup(store, "b");
  lookup(store, "c");
  StoreStats stats = store.stats();
  CHECK(stats.hits == 1);
  CHECK(stats.misses == 2);
}

TEST_CASE("keys with any bytes are distinct") {
  FakeClock clock;
  Store store(16, 64 << 20, clock);
  put(store, std::string("a\0b", 3), "nul");
  put(store, "a", "plain");
  CHECK(lookup(store, std::string("a\0b", 3)) == "nul");
  CHECK(lookup(store, "a") == "plain");
}

TEST_CASE("eviction is exact LRU within a shard") {
  FakeClock clock;
  const uint64_t limit = 3 * Slab::kPageSize;
  Shard shard(limit, clock);
  std::string value(100, 'v');
  auto key_of = [](int i) { return fmt::format("k{}", i); };
  auto put_key = [&](int i) { REQUIRE(shard.put(make_key(key_of(i)), value, 0) == PutStatus::ok); };
  auto present = [&](int i) { return shard.get(make_key(key_of(i)), [](std::string_view) {}); };
  // Fill until the first eviction: k0, the least recently used, is the one to go.
  int next = 0;
  while (shard.stats().evictions == 0 && next < 10000) put_key(next++);
  REQUIRE(next > 3);
  CHECK_FALSE(present(0));
  CHECK(present(1));  // now k2 is the least recently used
  uint64_t evicted = shard.stats().evictions;
  while (shard.stats().evictions == evicted) put_key(next++);
  CHECK_FALSE(present(2));
  CHECK(present(1));
  CHECK(present(3));
  CHECK(present(next - 1));
  CHECK(shard.stats().bytes_used <= limit);
}

TEST_CASE("the store stays within its limit under churn") {
  FakeClock clock;
  const uint64_t limit = 4 << 20;
  Store store(16, limit, clock);
  for (int round = 0; round < 3; ++round) {
    size_t value_size = round == 1 ? 256 : 8;
    std::string value(value_size, 'x');
    for (int i = 0; i < 100000; ++i) {
      put(store, fmt::format("key:{}", i), value);
      if (i % 1000 == 0) REQUIRE(store.stats().bytes_used <= limit);
    }
    // The newest keys are all present.
    for (int i = 99000; i < 100000; ++i) REQUIRE(lookup(store, fmt::format("key:{}", i)) == value);
  }
  CHECK(store.stats().evictions > 0);
}

TEST_CASE("a shard whose budget cannot hold one page refuses puts") {
  FakeClock clock;
  Shard shard(1024, clock);
  CHECK(shard.put(make_key("key"), std::string(200, 'v'), 0) == PutStatus::too_large);
  CHECK(shard.stats().entries == 0);
  CHECK(shard.stats().bytes_used == 0);
}

TEST_CASE("a tiny limit split across many shards still stores") {
  FakeClock clock;
  Store store(64, 1024, clock);
  for (int i = 0; i < 100; ++i) put(store, fmt::format("k{}", i), "v");
  for (int i = 0; i < 100; ++i) CHECK(lookup(store, fmt::format("k{}", i)) == "v");
}

TEST_CASE("TTL: expired entries are never returned and are counted") {
  FakeClock clock;
  Store store(16, 64 << 20, clock);
  put(store, "short", "1", 10);
  put(store, "forever", "2");
  clock.now += 9;
  CHECK(lookup(store, "short") == "1");
  clock.now += 1;
  CHECK_FALSE(lookup(store, "short"));
  CHECK(store.stats().expirations == 1);
  CHECK(lookup(store, "forever") == "2");
  CHECK(store.stats().entries == 1);
}

TEST_CASE("TTL: never early, at most one tick late, whatever the phase within a second") {
  FakeClock clock;
  Store store(1, 64 << 20, clock);
  for (uint64_t phase = 0; phase < 1000; phase += 7) {
    clock.extra_ms = phase;
    put(store, "k", "v", 1);
    clock.extra_ms = phase + 999;
    CHECK(lookup(store, "k") == "v");
    clock.extra_ms = phase + 1000 + kExpiryTickMs;
    CHECK_FALSE(lookup(store, "k"));
  }
}

TEST_CASE("TTL: overwrite replaces the ttl") {
  FakeClock clock;
  Store store(1, 64 << 20, clock);
  put(store, "k", "1", 5);
  put(store, "k", "2");
  clock.now += 100;
  CHECK(lookup(store, "k") == "2");
}

TEST_CASE("TTL: the bounded sweep frees expired entries nobody reads") {
  FakeClock clock;
  Store store(4, 64 << 20, clock);
  const int n = 10000;
  for (int i = 0; i < n; ++i) put(store, fmt::format("k{}", i), std::string(200, 'v'), i < n / 2 ? 5 : 0);
  uint64_t bytes = store.stats().bytes_used;
  clock.now += 6;
  // One page per shard: at most that page's chunks (220-byte entries).
  CHECK(store.sweep_expired(1));
  CHECK(store.stats().expirations <= 4 * Slab::chunks_per_page(Slab::class_for(220)));
  for (int i = 0; i < 1000 && store.sweep_expired(10); ++i) {
  }
  StoreStats stats = store.stats();
  CHECK(stats.expirations == n / 2);
  CHECK(stats.entries == n / 2);
  CHECK(stats.bytes_used < bytes * 3 / 4);
  CHECK(lookup(store, fmt::format("k{}", n - 1)) == std::string(200, 'v'));
}

TEST_CASE("delete frees memory at once") {
  FakeClock clock;
  Store store(1, 64 << 20, clock);
  uint64_t empty = store.stats().bytes_used;
  for (int i = 0; i < 5000; ++i) put(store, fmt::format("k{}", i), std::string(200, 'v'));
  uint64_t full = store.stats().bytes_used;
  CHECK(full >= 5000 * 200);
  for (int i = 0; i < 5000; ++i) CHECK(store.erase(make_key(fmt::format("k{}", i))));
  // At most one empty page stays mapped; the index keeps its segments
  // (and a few freed tables for reuse): about 11 bytes a key at this size.
  CHECK(store.stats().bytes_used <= empty + Slab::kPageSize + 5000 * 12);
  CHECK(store.stats().entries == 0);
}

TEST_CASE("accounting: bytes used covers key, value and a small overhead per entry") {
  FakeClock clock;
  Store store(16, 1ull << 30, clock);
  const int n = 200000;
  for (int i = 0; i < n; ++i) put(store, fmt::format("key:{}", i), std::string(128, 'v'));
  StoreStats stats = store.stats();
  double payload = 128 + 10;
  double per_entry = static_cast<double>(stats.bytes_used) / n;
  MESSAGE("bytes per entry: " << per_entry);
  CHECK(per_entry >= payload);
  // 11-byte header + < 8 bytes of class rounding + the index (5 bytes a slot,
  // 0.76 full at 12,500 entries a shard) + page tails.
  CHECK(per_entry - payload <= 26);
}

TEST_CASE("size changes: pages move between size classes without losing recent keys") {
  FakeClock clock;
  const uint64_t limit = 8 << 20;
  Store store(4, limit, clock);
  int key = 0;
  for (size_t value_size : {8, 256, 8, 100, 256}) {
    std::string value(value_size, 'x');
    int first = key;
    for (int i = 0; i < 300000; ++i, ++key) {
      put(store, fmt::format("key:{}", key), value);
      if (i % 5000 == 0) REQUIRE(store.stats().bytes_used <= limit);
    }
    for (int i = key - 2000; i < key; ++i) REQUIRE(lookup(store, fmt::format("key:{}", i)) == value);
    CHECK_FALSE(lookup(store, fmt::format("key:{}", first)));
  }
}

TEST_CASE("random key and value sizes: within the limit, newest keys kept") {
  FakeClock clock;
  // Each shard holds many more pages than there are size classes, as in
  // any real configuration (recency is coarser when pages are scarce).
  const uint64_t limit = 4 << 20;
  Store store(4, limit, clock);
  uint64_t state = 42;
  auto next_random = [&] {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return state >> 33;
  };
  std::vector<std::pair<std::string, std::string>> recent;
  for (int i = 0; i < 200000; ++i) {
    std::string key = fmt::format("{}:", i);
    key.resize(std::max<size_t>(key.size(), 1 + next_random() % 256), 'k');
    std::string value(next_random() % 257, 'v');
    put(store, key, value);
    if (i >= 200000 - 200) recent.emplace_back(key, value);
    if (i % 5000 == 0) REQUIRE(store.stats().bytes_used <= limit);
  }
  for (const auto& [key, value] : recent) REQUIRE(lookup(store, key) == value);
  CHECK(store.stats().evictions > 0);
}

TEST_CASE("a put that cannot be stored keeps the previous value") {
  FakeClock clock;
  Shard shard(Slab::kPageSize + 64, clock);  // one page, no room for a second size class
  REQUIRE(shard.put(make_key("k"), "small", 0) == PutStatus::ok);
  CHECK(shard.put(make_key("k"), std::string(256, 'v'), 0) == PutStatus::too_large);
  std::optional<std::string> value;
  CHECK(shard.get(make_key("k"), [&](std::string_view v) { value = std::string(v); }));
  CHECK(value == "small");
}

TEST_CASE("overwriting with a new size class moves the key, keeping one entry") {
  FakeClock clock;
  Store store(1, 64 << 20, clock);
  for (size_t size : {1, 40, 256, 0, 100}) {
    put(store, "k", std::string(size, 'x'), size == 40 ? 30 : 0);
    CHECK(lookup(store, "k") == std::string(size, 'x'));
    CHECK(store.stats().entries == 1);
  }
  clock.now += 100;
  CHECK(lookup(store, "k") == std::string(100, 'x'));  // the ttl went with the overwrite
}

namespace {

// A batch of the given keys, each with its value.
std::vector<BatchPut> batch_of(const std::vector<std::string>& keys, const std::vector<std::string>& values,
                               uint32_t ttl = 0) {
  std::vector<BatchPut> batch;
  for (size_t i = 0; i < keys.size(); ++i) batch.push_back({make_key(keys[i]), values[i], ttl});
  return batch;
}

}  // namespace

TEST_CASE("put_batch stores every item, a later item winning over an earlier one with the same key") {
  FakeClock clock;
  Store store(4, 64 << 20, clock);
  put(store, "old", std::string(10, 'o'));
  std::vector<std::string> keys, values;
  for (int i = 0; i < 500; ++i) {
    keys.push_back(fmt::format("k{}", i % 400));  // k0..k99 twice
    values.push_back(fmt::format("{}-{}", i, std::string(i % 257 / 2, 'v')));
  }
  keys.push_back("old");
  values.push_back(std::string(200, 'n'));  // the overwrite changes size class
  auto batch = batch_of(keys, values, 0);
  REQUIRE(store.put_batch(batch) == PutStatus::ok);
  for (int i = 100; i < 500; ++i) CHECK(lookup(store, keys[i]) == values[i]);
  CHECK(lookup(store, "old") == std::string(200, 'n'));
  CHECK(store.stats().entries == 401);
  CHECK(store.stats().evictions == 0);
}

TEST_CASE("put_batch is all or nothing: a batch that runs out of memory changes no value") {
  FakeClock clock;
  // Four pages per shard: room for a little over 200 large entries in all.
  const uint64_t limit = 4 * 4 * Slab::kPageSize;
  Store store(4, limit, clock);
  std::vector<std::string> before;
  for (int i = 0; i < 20; ++i) {
    before.push_back(fmt::format("before:{:02}", i));
    put(store, before.back(), "small");
  }
  // Overwrites of existing keys (into a bigger size class) come first in
  // the request, then more new large entries than all shards can hold.
  std::vector<std::string> keys, values;
  for (int i = 0; i < 10; ++i) {
    keys.push_back(before[i]);
    values.push_back(std::string(256, 'x'));
  }
  for (int i = 0; i < 1000; ++i) {
    keys.push_back(fmt::format("new:{}", i));
    values.push_back(std::string(256, 'y'));
  }
  auto batch = batch_of(keys, values);
  CHECK(store.put_batch(batch) == PutStatus::too_large);
  for (int i = 0; i < 1000; ++i) REQUIRE_FALSE(lookup(store, fmt::format("new:{}", i)));
  // Making room may evict other entries, never one the batch overwrites.
  for (int i = 0; i < 10; ++i) CHECK(lookup(store, before[i]) == "small");
  CHECK(store.stats().bytes_used <= limit);
  // The reserved memory went back: a batch that fits is stored.
  std::vector<std::string> small_keys{"a", "b"}, small_values{"1", "2"};  // the batch points into them
  auto small = batch_of(small_keys, small_values);
  CHECK(store.put_batch(small) == PutStatus::ok);
  CHECK(lookup(store, "a") == "1");
  CHECK(lookup(store, "b") == "2");
}

TEST_CASE("put_batch evicts older entries to make room, never the batch's own") {
  FakeClock clock;
  const uint64_t limit = 8 * Slab::kPageSize;
  Shard shard(limit, clock);
  for (int i = 0; i < 2000; ++i) REQUIRE(shard.put(make_key(fmt::format("old:{}", i)), std::string(100, 'o'), 0) == PutStatus::ok);
  std::vector<std::string> keys, values;
  for (int i = 0; i < 300; ++i) {
    keys.push_back(fmt::format("batch:{}", i));
    values.push_back(std::string(150, 'b'));
  }
  auto batch = batch_of(keys, values);
  for (BatchPut& item : batch) item.expires_at = 0;
  shard.lock();
  REQUIRE(shard.reserve_locked(batch));
  shard.commit_locked(batch);
  shard.unlock();
  for (const std::string& key : keys) REQUIRE(shard.get(make_key(key), [](std::string_view) {}));
  CHECK(shard.stats().evictions > 0);
  CHECK(shard.stats().bytes_used <= limit);
}

TEST_CASE("expired entries are reclaimed before any live entry is evicted") {
  FakeClock clock;
  const uint64_t limit = 16 * Slab::kPageSize;
  std::string value(100, 'v');
  // Alternating live and short-lived entries; the oldest are live.
  auto put_k = [&](Shard& into, int i) {
    uint32_t expires_at = i % 2 ? expiry_tick(clock.now_ms(), 10) : 0;
    return into.put(make_key(fmt::format("k{}", i)), value, expires_at);
  };
  // How many of them fit before the first eviction (the same keys, so the
  // index's segments come out the same).
  int capacity = 0;
  {
    Shard probe(limit, clock);
    while (probe.stats().evictions == 0) REQUIRE(put_k(probe, capacity++) == PutStatus::ok);
    capacity -= 1;
  }
  Shard shard(limit, clock);
  for (int i = 0; i < capacity; ++i) REQUIRE(put_k(shard, i) == PutStatus::ok);
  REQUIRE(shard.stats().evictions == 0);
  clock.now += 11;
  for (int i = 0; i < capacity / 2; ++i) REQUIRE(shard.put(make_key(fmt::format("n{}", i)), value, 0) == PutStatus::ok);
  ShardStats stats = shard.stats();
  // An index segment's growth (its size depends on how the keys hash) may
  // need a whole page back when the expired entries of the due pages a
  // reclaim looks at (kReclaimExpiredPages) do not make one: then at most
  // one page's worth of the oldest live entries goes (architecture.md,
  // known limit 4).
  const uint64_t page = Slab::chunks_per_page(Slab::class_for(Entry::size_for(5, 100, true)));
  CHECK(stats.evictions <= page);
  CHECK(stats.expirations + stats.evictions >= static_cast<uint64_t>(capacity / 2 - 1));
  for (int i = static_cast<int>(stats.evictions) * 2; i < capacity; i += 2) {
    REQUIRE(shard.get(make_key(fmt::format("k{}", i)), [](std::string_view) {}));
  }
  // With the expired ones gone, the LRU tail (n0: the k keys were just read) goes next.
  for (int i = 0; i < 50; ++i) REQUIRE(shard.put(make_key(fmt::format("m{}", i)), value, 0) == PutStatus::ok);
  CHECK(shard.stats().evictions > 0);
  CHECK_FALSE(shard.get(make_key("n0"), [](std::string_view) {}));
  if (stats.evictions == 0) CHECK(shard.get(make_key("k0"), [](std::string_view) {}));
}

TEST_CASE("TTL bookkeeping stays bounded when one key's expiry keeps changing") {
  FakeClock clock;
  Store store(1, 64 << 20, clock);
  put(store, "k", "v", 1);
  uint64_t first = store.stats().bytes_used;
  for (int i = 0; i < 100000; ++i) put(store, "k", "v", 1 + i % 1000);
  // A few thousand 8-byte records at most, not one per put.
  CHECK(store.stats().bytes_used <= first + 64 * 1024);
  clock.now += 2000;
  CHECK_FALSE(lookup(store, "k"));
}

TEST_CASE("a rewrite in the same size class may add or drop the expiry (the key moves)") {
  FakeClock clock;
  Store store(1, 64 << 20, clock);
  // 11 + 1 + 0 and 15 + 1 + 0 bytes: both 16-byte chunks.
  put(store, "k", "");
  put(store, "k", "", 5);
  CHECK(lookup(store, "k") == "");
  put(store, "k", "");
  clock.now += 10;
  CHECK(lookup(store, "k") == "");  // the expiry went with the rewrite
  put(store, "k", "", 5);
  clock.now += 10;
  CHECK_FALSE(lookup(store, "k"));
  CHECK(store.stats().entries == 0);
}

TEST_CASE("TTL model: rewrites to earlier and later times, ttl 0, deletes, eviction and expiry interleaved (seed printed)") {
  uint64_t seed = std::random_device{}();
  INFO("seed " << seed);
  std::mt19937_64 random(seed);
  FakeClock clock;
  // `big` never evicts and must match the model exactly; `small` evicts, so
  // a hit there must be the key's latest accepted value, live.
  Store big(4, 1 << 30, clock);
  Store small(2, 2 * 8 * Slab::kPageSize, clock);
  struct Model {
    std::string value;
    uint32_t expires_at;
  };
  std::map<std::string, Model> model, small_model;
  auto live = [&](const Model& m) { return !is_expired(m.expires_at, clock.now_ms()); };
  const int kKeys = 600;
  for (int step = 0; step < 30000; ++step) {
    std::string key = fmt::format("key:{}", random() % kKeys);
    int op = static_cast<int>(random() % 10);
    if (op < 5) {
      // A TTL from none to 20 s: a rewrite moves the expiry later, earlier or away.
      uint32_t ttl = random() % 3 == 0 ? 0 : static_cast<uint32_t>(1 + random() % 20);
      std::string value = fmt::format("{}:{}", step, std::string(random() % 3 == 0 ? random() % 200 : 40, 'v'));
      REQUIRE(big.put(make_key(key), value, ttl) == PutStatus::ok);
      Model m{value, expiry_tick(clock.now_ms(), ttl)};
      model[key] = m;
      if (small.put(make_key(key), value, ttl) == PutStatus::ok) small_model[key] = m;
    } else if (op == 5) {
      auto it = model.find(key);
      bool expected = it != model.end() && live(it->second);
      REQUIRE(big.erase(make_key(key)) == expected);
      if (it != model.end()) model.erase(it);
      small.erase(make_key(key));
      small_model.erase(key);
    } else if (op == 6) {
      clock.extra_ms += random() % 1500;
    } else if (op == 7) {
      size_t pages = random() % 4;
      big.sweep_expired(pages);
      small.sweep_expired(pages);
    } else {
      auto it = model.find(key);
      std::optional<std::string> expected;
      if (it != model.end() && live(it->second)) expected = it->second.value;
      REQUIRE(lookup(big, key) == expected);
      if (std::optional<std::string> got = lookup(small, key)) {
        auto s = small_model.find(key);
        REQUIRE(s != small_model.end());
        REQUIRE(live(s->second));
        REQUIRE(*got == s->second.value);
      }
    }
    REQUIRE(small.stats().bytes_used <= small.byte_budget());
    REQUIRE(big.stats().evictions == 0);
  }
  REQUIRE(small.stats().evictions > 0);
  REQUIRE(small.stats().expirations > 0);
  // A full sweep leaves exactly the live entries.
  while (big.sweep_expired(1 << 20)) {
  }
  size_t live_count = 0;
  for (const auto& [key, m] : model) live_count += live(m);
  CHECK(big.stats().entries == live_count);
}

TEST_CASE("TTL: concurrent puts, gets, deletes and sweeps keep each thread's latest value (run under TSan too)") {
  struct AtomicClock final : Clock {
    uint64_t now_ms() const override { return now.load(std::memory_order_relaxed); }
    std::atomic<uint64_t> now{1000000};
  } clock;
  Store store(4, 4 * 8 * Slab::kPageSize, clock);
  std::atomic<bool> done{false};
  std::thread sweeper([&] {
    while (!done.load()) {
      clock.now += 37;
      store.sweep_expired(2);
    }
  });
  std::vector<std::thread> threads;
  std::atomic<int> wrong{0};
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 random(t);
      std::map<std::string, std::string> latest;  // this thread's keys only
      for (int i = 0; i < 20000; ++i) {
        std::string key = fmt::format("t{}:{}", t, random() % 300);
        switch (random() % 4) {
          case 0:
          case 1: {
            std::string value = fmt::format("{}:{}", i, std::string(random() % 120, 'v'));
            if (store.put(make_key(key), value, random() % 2 ? 1 + random() % 3 : 0) == PutStatus::ok) {
              latest[key] = value;
            } else {
              latest.erase(key);
            }
            break;
          }
          case 2:
            store.erase(make_key(key));
            latest.erase(key);
            break;
          default:
            if (std::optional<std::string> got = lookup(store, key)) {
              auto it = latest.find(key);
              if (it == latest.end() || it->second != *got) ++wrong;
            }
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  done = true;
  sweeper.join();
  CHECK(wrong.load() == 0);
  CHECK(store.stats().bytes_used <= store.byte_budget());
}

namespace {
// The shard's memory calls with an allocation (index tables, page tables)
// that fails on demand.
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

TEST_CASE("a failed allocation under the lock (index or page tables) fails the put, changes nothing, and never throws") {
  FakeClock clock;
  Shard shard(8 << 20, clock, kFailable);
  // The page tables cannot grow: no page, so nothing fits.
  fail_allocate = true;
  CHECK(shard.put(make_key("a"), "v", 0) == PutStatus::too_large);
  CHECK(shard.stats().entries == 0);
  CHECK(shard.stats().bytes_used == 0);
  fail_allocate = false;
  // 14 keys fill the index's first table (16 slots, 7/8 load).
  for (int i = 0; i < 14; ++i) REQUIRE(shard.put(make_key(fmt::format("k{}", i)), "v", 0) == PutStatus::ok);
  uint64_t used = shard.stats().bytes_used;
  fail_allocate = true;
  // A new key needs the next table: refused, with the chunk it took given back.
  CHECK(shard.put(make_key("new"), "v", 0) == PutStatus::too_large);
  CHECK_FALSE(shard.get(make_key("new"), [](std::string_view) {}));
  CHECK(shard.stats().entries == 14);
  CHECK(shard.stats().bytes_used == used);
  // Rewrites need no allocation.
  CHECK(shard.put(make_key("k3"), "w", 0) == PutStatus::ok);
  CHECK(shard.put(make_key("k4"), std::string(100, 'x'), 0) == PutStatus::ok);
  // A batch with a new key is refused whole.
  std::vector<BatchPut> batch{{make_key("k5"), "changed"}, {make_key("new2"), "v"}};
  for (BatchPut& item : batch) item.chunk = kNoHandle;
  shard.lock();
  bool reserved = shard.reserve_locked(batch);
  shard.unlock();
  CHECK_FALSE(reserved);
  std::string value;
  CHECK(shard.get(make_key("k5"), [&](std::string_view v) { value = std::string(v); }));
  CHECK(value == "v");
  fail_allocate = false;
  CHECK(shard.put(make_key("new"), "v", 0) == PutStatus::ok);
  CHECK(shard.stats().entries == 15);
  for (int i = 0; i < 14; ++i) CHECK(shard.get(make_key(fmt::format("k{}", i)), [](std::string_view) {}));
}

TEST_CASE("bounded work: one call on a large shard does at most a named amount, whatever its size") {
  FakeClock clock;
  Shard shard(96 << 20, clock);
  std::string value(100, 'v');
  // Fill until the shard evicts: ~600k entries, half with distinct TTLs.
  int n = 0;
  while (shard.stats().evictions == 0) {
    uint32_t expires_at = n % 2 ? expiry_tick(clock.now_ms(), 10 + n % 5000) : 0;
    REQUIRE(shard.put(make_key(fmt::format("key:{}", n++)), value, expires_at) == PutStatus::ok);
  }
  REQUIRE(n > 400000);
  auto work_of = [&](auto call) {
    uint64_t before = shard.work_steps();
    call();
    return shard.work_steps() - before;
  };
  // A put of another size class needs a chunk (so reclaims).
  std::string other(180, 'w');
  // What such a put needs is a few pages' worth of steps, whatever the
  // shard's size. Its entries are in at most 4 size classes (key:N with 5
  // to 10 bytes, values of 100 and 180 bytes), of at most `page` chunks a
  // page. Its one reclaim evicts until one of them has a page's worth of
  // free chunks (pigeonhole: at most 4 pages of evictions), then compacts
  // one page; plus two allocation rounds, and, for a key evicted since (a
  // new key again), one insert's index growth (kMaxInsertSlots).
  const uint64_t page = Slab::chunks_per_page(Slab::class_for(Entry::size_for(5, 100, false)));
  const uint64_t put_bound = 4 * page + page + Shard::kMaxAllocateRounds + Shard::kMaxInsertSlots;
  // With expired entries due, the reclaim first frees up to
  // kReclaimExpiredPages pages, each swept and rescanned after at most
  // kRescansPerCall stale rescans.
  const uint64_t expiring_put_bound = put_bound + Shard::kReclaimExpiredPages * (2 + ExpiryIndex::kRescansPerCall) * page;
  const uint64_t page_slice = (2 + ExpiryIndex::kRescansPerCall) * Slab::kMaxChunksPerPage;
  MESSAGE("bound of one put: " << put_bound << " steps, " << expiring_put_bound << " with expired pages due; "
          << shard.stats().entries << " entries");
  REQUIRE(put_bound < shard.stats().entries / 100);  // a put walking the shard fails it
  uint64_t most = 0;
  for (int i = 0; i < 200; ++i) {
    most = std::max(most, work_of([&] { REQUIRE(shard.put(make_key(fmt::format("key:{}", i)), other, 0) == PutStatus::ok); }));
  }
  MESSAGE("most work of one evicting put: " << most);
  CHECK(most <= put_bound);
  // Half the shard expires at once: a sweep call or a put still does one
  // bounded slice, and the sweep finishes the rest over more calls.
  clock.now += 6000;
  uint64_t sweep = work_of([&] { CHECK(shard.sweep_expired(1)); });
  CHECK(sweep <= page_slice);
  most = 0;
  for (int i = 200; i < 400; ++i) {
    most = std::max(most, work_of([&] { REQUIRE(shard.put(make_key(fmt::format("key:{}", i)), other, 7) == PutStatus::ok); }));
  }
  MESSAGE("most work of one put reclaiming expired pages: " << most);
  CHECK(most <= expiring_put_bound);
  // Rewrites that move TTLs earlier and later, deletes and reads of TTL
  // entries: at most one page rescan each.
  most = 0;
  for (int i = 401; i < 2000; i += 2) {
    std::string name = fmt::format("key:{}", i);
    KeyRef key = make_key(name);
    most = std::max(most, work_of([&] { shard.put(key, value, expiry_tick(clock.now_ms(), 1 + i % 7)); }));
    most = std::max(most, work_of([&] { shard.get(key, [](std::string_view) {}); }));
    if (i % 3 == 0) most = std::max(most, work_of([&] { shard.erase(key); }));
  }
  MESSAGE("most work of one rewrite, get or delete of TTL entries: " << most);
  CHECK(most <= expiring_put_bound);
  int calls = 0;
  while (shard.sweep_expired(4)) ++calls;
  MESSAGE("sweep calls for the rest: " << calls);
  CHECK(shard.stats().entries < static_cast<uint64_t>(n) / 2 + 2000);
}

TEST_CASE("bounded work: the index grows a segment at a time, whatever the shard's size") {
  FakeClock clock;
  Shard shard(uint64_t{1} << 30, clock);
  std::string value(20, 'v');
  // 600k keys: the index splits its segments about 2,000 times. No
  // eviction (the limit is far), so all the work a put does under the
  // lock is the index's.
  const int n = 600000;
  uint64_t most = 0, total = 0;
  for (int i = 0; i < n; ++i) {
    std::string name = fmt::format("key:{}", i);
    uint64_t before = shard.work_steps();
    REQUIRE(shard.put(make_key(name), value, i % 2 ? expiry_tick(clock.now_ms(), 100) : 0) == PutStatus::ok);
    uint64_t work = shard.work_steps() - before;
    most = std::max(most, work);
    total += work;
  }
  MESSAGE("index slots rehashed: " << total << " in all, at most " << most << " by one put");
  CHECK(total > n);  // the growth happened, a segment at a time
  CHECK(most <= Shard::kMaxInsertSlots + Shard::kMaxAllocateRounds);  // one insert's growth, and its chunk
  CHECK(shard.stats().evictions == 0);
  // Every key is found, before and after the sweep removes the expired half.
  for (int i = 0; i < n; i += 997) CHECK(shard.get(make_key(fmt::format("key:{}", i)), [](std::string_view) {}));
  int sweeps = 0;
  while (shard.sweep_expired(4) && sweeps < 100000) ++sweeps;
  for (int i = 0; i < n; i += 997) CHECK(shard.get(make_key(fmt::format("key:{}", i)), [](std::string_view) {}));
  CHECK(shard.stats().entries == static_cast<uint64_t>(n));
}

TEST_CASE("TTL: at the main loop's cadence, 300k entries expiring at once are swept in far less than 5 s of waits") {
  FakeClock clock;
  Store store(16, 1 << 30, clock);
  const int n = 300000;
  for (int i = 0; i < n; ++i) put(store, fmt::format("key:{}", i), std::string(100, 'v'), 2);
  clock.now += 3;
  // The waits main.cc makes between calls (the calls' own time comes on top;
  // each is a bounded slice per shard). On 0e59145 (256 entries a shard
  // every 100 ms) this took 7.4 s of waits.
  uint64_t waited_ms = 0;
  bool more = true;
  for (int calls = 0; more && calls < 100000; ++calls) {
    waited_ms += Store::kSweepBacklogIntervalMs;
    more = store.sweep_expired(Store::kSweepPagesPerShard);
  }
  MESSAGE("waits before the last expired entry went: " << waited_ms << " ms");
  CHECK(store.stats().entries == 0);
  CHECK(waited_ms <= 1000);
}

// --- flush, ttl and expire (POST /flush, GET /ttl, POST /expire) ---

namespace {

// The unreserve (munmap) of a flushed slab calls this, if set.
std::function<void()> on_unreserve;
const MemoryCalls kFlushWatched{
    [](size_t bytes) { return system_memory_calls().reserve(bytes); },
    [](void* at, size_t bytes) { return system_memory_calls().make_usable(at, bytes); },
    [](void* at, size_t bytes) { return system_memory_calls().give_back(at, bytes); },
    [](void* at, size_t bytes) {
      if (on_unreserve) on_unreserve();
      return system_memory_calls().unreserve(at, bytes);
    },
    [](size_t bytes) { return system_memory_calls().allocate(bytes); },
    [](void* at) { system_memory_calls().deallocate(at); },
};

std::optional<std::string> shard_lookup(Shard& shard, std::string_view key) {
  std::optional<std::string> value;
  shard.get(make_key(key), [&](std::string_view v) { value = std::string(v); });
  return value;
}

}  // namespace

TEST_CASE("flush empties every shard, charges nothing after, and the store keeps working") {
  FakeClock clock;
  Store store(16, 64 << 20, clock);
  for (int i = 0; i < 20000; ++i) put(store, fmt::format("k{}", i), std::string(i % 200, 'v'), i % 3 == 0 ? 5 : 0);
  REQUIRE(store.stats().bytes_used > 20000 * 100);
  CHECK(store.flush() == 20000);
  StoreStats stats = store.stats();
  CHECK(stats.entries == 0);
  CHECK(stats.bytes_used == 0);
  CHECK(stats.flushes == 1);
  CHECK(stats.evictions == 0);
  CHECK_FALSE(lookup(store, "k0"));
  CHECK_FALSE(lookup(store, "k19999"));
  CHECK_FALSE(store.ttl(make_key("k3")));
  // A new generation: puts, TTLs, sweeps and batches work on the emptied shards.
  put(store, "k1", "again", 5);
  put(store, "k2", "forever");
  CHECK(lookup(store, "k1") == "again");
  std::vector<BatchPut> batch{{make_key("b1"), "x"}, {make_key("b2"), "y", 1}};
  CHECK(store.put_batch(batch) == PutStatus::ok);
  clock.now += 6;
  for (int i = 0; i < 100 && store.sweep_expired(4); ++i) {
  }
  CHECK_FALSE(lookup(store, "k1"));
  CHECK(lookup(store, "k2") == "forever");
  CHECK(lookup(store, "b1") == "x");
  CHECK(store.stats().entries == 2);
  CHECK(store.flush() == 2);
  CHECK(store.flush() == 0);
  CHECK(store.stats().flushes == 3);
  CHECK(store.stats().bytes_used == 0);
}

TEST_CASE("flush of a shard with 2M keys frees its memory after releasing the lock: requests go on meanwhile") {
  FakeClock clock;
  Shard shard(uint64_t{1} << 30, clock, kFlushWatched);
  const int n = 2000000;
  for (int i = 0; i < n; ++i) {
    REQUIRE(shard.put(make_key(fmt::format("key:{}", i)), "value", i % 2 ? expiry_tick(clock.now_ms(), 100) : 0) ==
            PutStatus::ok);
  }
  REQUIRE(shard.stats().entries == n);
  uint64_t full = shard.stats().bytes_used;
  REQUIRE(full > uint64_t{n} * 16);
  // A snapshot walk is half way through.
  shard.copy_start();
  size_t copied = 0;
  shard.copy_batch(1000, [&](std::string_view, std::string_view, uint32_t) { ++copied; });
  REQUIRE(copied > 0);
  int unreserves = 0;
  on_unreserve = [&] {
    // The flush is still running (freeing the old pages), and the shard is
    // not locked: another thread's request is served now.
    ++unreserves;
    std::unique_lock lock(shard, std::try_to_lock);
    CHECK(lock.owns_lock());
    if (lock.owns_lock()) lock.unlock();
    CHECK(shard.stats().bytes_used < full / 100);
    CHECK(shard.put(make_key("during"), "flush", 0) == PutStatus::ok);
    CHECK(shard_lookup(shard, "during") == "flush");
    CHECK_FALSE(shard_lookup(shard, "key:7"));
  };
  CHECK(shard.flush() == n);
  on_unreserve = nullptr;
  CHECK(unreserves == 1);
  // What was put while the old pages were freed stays: it came after the flush.
  CHECK(shard_lookup(shard, "during") == "flush");
  CHECK(shard.stats().entries == 1);
  CHECK(shard.stats().bytes_used < full / 100);
  // The walk that was running is over, with nothing more to copy.
  CHECK_FALSE(shard.copy_batch(1000, [&](std::string_view, std::string_view, uint32_t) { FAIL("copied after flush"); }));
  // Put the whole number again: the same memory, within the same limit.
  for (int i = 0; i < n; ++i) REQUIRE(shard.put(make_key(fmt::format("key:{}", i)), "value", 0) == PutStatus::ok);
  CHECK(shard.stats().entries == n + 1);
  CHECK(shard.stats().evictions == 0);
}

TEST_CASE("ttl: whole seconds left rounded up, -1 without expiry, nullopt for a miss, whatever the phase") {
  FakeClock clock;
  Store store(4, 64 << 20, clock);
  CHECK_FALSE(store.ttl(make_key("absent")));
  put(store, "forever", "v");
  CHECK(store.ttl(make_key("forever")) == -1);
  for (uint64_t phase = 0; phase < 1000; phase += 7) {
    clock.extra_ms = phase;
    put(store, "k", "v", 10);
    CHECK(store.ttl(make_key("k")) == 10);
    clock.extra_ms = phase + 1;
    CHECK(store.ttl(make_key("k")) == 10);
    clock.extra_ms = phase + 9000;
    CHECK(store.ttl(make_key("k")) == 1);
    // Still live up to its end (at most one tick late): never 0.
    clock.extra_ms = phase + 9999;
    CHECK(store.ttl(make_key("k")) == 1);
    clock.extra_ms = phase + 10000 + kExpiryTickMs;
    CHECK_FALSE(store.ttl(make_key("k")));
  }
  // Reading a TTL is no access: no hit or miss, and the expired key found was removed.
  StoreStats stats = store.stats();
  CHECK(stats.hits == 0);
  CHECK(stats.misses == 0);
  CHECK(stats.expirations > 0);
  CHECK(stats.entries == 1);
}

TEST_CASE("expire sets, changes and removes a TTL, the value kept, in place or through a put") {
  FakeClock clock;
  Store store(1, 64 << 20, clock);
  CHECK(store.expire(make_key("absent"), 5) == ExpireStatus::not_found);
  CHECK(store.expire(make_key("absent"), 0) == ExpireStatus::not_found);
  for (size_t size : {0, 1, 3, 4, 5, 100, 252, 256}) {
    std::string value(size, 'v');
    put(store, "k", value);
    CHECK(store.expire(make_key("k"), 30) == ExpireStatus::ok);  // the layout grows by the expiry
    CHECK(store.ttl(make_key("k")) == 30);
    CHECK(lookup(store, "k") == value);
    CHECK(store.expire(make_key("k"), 2) == ExpireStatus::ok);   // in place
    CHECK(store.ttl(make_key("k")) == 2);
    CHECK(store.expire(make_key("k"), 50) == ExpireStatus::ok);  // later, in place
    CHECK(store.ttl(make_key("k")) == 50);
    CHECK(store.expire(make_key("k"), 0) == ExpireStatus::ok);   // persist: the layout shrinks
    CHECK(store.ttl(make_key("k")) == -1);
    CHECK(lookup(store, "k") == value);
    CHECK(store.expire(make_key("k"), 0) == ExpireStatus::ok);   // nothing to remove
    CHECK(store.expire(make_key("k"), 1) == ExpireStatus::ok);
    clock.now += 1;
    clock.extra_ms += kExpiryTickMs;
    CHECK_FALSE(lookup(store, "k"));
    CHECK(store.expire(make_key("k"), 5) == ExpireStatus::not_found);
  }
  CHECK(store.stats().entries == 0);
  // An expired key met by expire is removed and counted.
  put(store, "e", "v", 1);
  clock.now += 2;
  uint64_t expirations = store.stats().expirations;
  CHECK(store.expire(make_key("e"), 0) == ExpireStatus::not_found);
  CHECK(store.stats().expirations == expirations + 1);
  CHECK(store.stats().entries == 0);
}

TEST_CASE("expire keeps the expiry index exact: the sweep removes what expire made expire, and nothing it persisted") {
  FakeClock clock;
  Store store(4, 64 << 20, clock);
  const int n = 20000;
  for (int i = 0; i < n; ++i) put(store, fmt::format("k{}", i), std::string(i % 50, 'v'), i % 2 ? 1000 : 0);
  // Even keys get a short TTL; odd keys lose theirs (the layout changes both ways).
  for (int i = 0; i < n; ++i) REQUIRE(store.expire(make_key(fmt::format("k{}", i)), i % 2 ? 0 : 5) == ExpireStatus::ok);
  clock.now += 6;
  for (int i = 0; i < 10000 && store.sweep_expired(16); ++i) {
  }
  StoreStats stats = store.stats();
  CHECK(stats.expirations == n / 2);
  CHECK(stats.entries == n / 2);
  clock.now += 2000;
  for (int i = 0; i < 10000 && store.sweep_expired(16); ++i) {
  }
  CHECK(store.stats().entries == n / 2);
  for (int i = 1; i < n; i += 998) CHECK(lookup(store, fmt::format("k{}", i)) == std::string(i % 50, 'v'));
}

TEST_CASE("expire is seen by a snapshot walk and makes the entry the most recently used") {
  FakeClock clock;
  Shard shard(64 << 20, clock);
  for (int i = 0; i < 10; ++i) REQUIRE(shard.put(make_key(fmt::format("k{}", i)), "v", 0) == PutStatus::ok);
  uint32_t tick = expiry_tick(clock.now_ms(), 100);
  REQUIRE(shard.expire(make_key("k0"), tick) == ExpireStatus::ok);
  shard.copy_start();
  std::vector<std::pair<std::string, uint32_t>> copied;
  while (shard.copy_batch(3, [&](std::string_view key, std::string_view, uint32_t expires_at) {
    copied.emplace_back(std::string(key), expires_at);
  })) {
  }
  REQUIRE(copied.size() == 10);
  CHECK(copied.back() == std::pair<std::string, uint32_t>("k0", tick));
  CHECK(copied.front().first == "k1");
  uint32_t expires_at = 1;
  CHECK(shard.expiry(make_key("k1"), expires_at));
  CHECK(expires_at == 0);
}

TEST_CASE("bounded work: expire on a full shard does at most what a put may") {
  FakeClock clock;
  Shard shard(16 << 20, clock);
  std::string value(100, 'v');
  int n = 0;
  while (shard.stats().evictions == 0) {
    uint32_t expires_at = n % 2 ? expiry_tick(clock.now_ms(), 10 + n % 500) : 0;
    REQUIRE(shard.put(make_key(fmt::format("key:{}", n++)), value, expires_at) == PutStatus::ok);
  }
  uint64_t most = 0;
  int found = 0;
  for (int i = n - 20000; i < n; ++i) {
    uint64_t before = shard.work_steps();
    ExpireStatus status = shard.expire(make_key(fmt::format("key:{}", i)), i % 3 ? expiry_tick(clock.now_ms(), 1 + i % 7) : 0);
    if (status == ExpireStatus::ok) ++found;
    most = std::max(most, shard.work_steps() - before);
  }
  CHECK(found > 10000);
  MESSAGE("most work of one expire: " << most << " (bound " << Shard::kMaxPutSteps << ")");
  CHECK(most <= Shard::kMaxPutSteps);
}

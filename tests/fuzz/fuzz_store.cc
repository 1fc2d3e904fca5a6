// Model-based fuzz target for kv::Store.
//
// The input is a sequence of operations (put / get / erase / advance the fake
// clock / sweep / atomic batch put; a put may rewrite a key's TTL in place)
// over a small key space, applied to two stores and a simple
// reference model (the last put of each key with its expiry tick, as
// clock.h's expiry_tick / is_expired define it):
//
//  - `small`: a tight memory limit, so entries get evicted and presence cannot
//    be predicted. A get may miss, but must never return anything but the
//    most recent put of that key, and never a key the model says is erased or
//    expired. stats().bytes_used must stay within the memory limit.
//  - `big`: a limit so large nothing is ever evicted. It must match the model
//    exactly (presence and value), and stats().entries must equal the model's
//    count (exactly after a full sweep; between the live count and the count
//    including expired-but-unswept entries otherwise).
//
// A fill op (when bit 7 of the shard-count byte is set) adds hundreds of fresh small keys (or erases the oldest of
// them), so the index's segments grow, split, and are rebuilt from deleted
// slots, between the other ops' lookups, erases and overwrites.
//
// Layout: 3 header bytes (start time, shard count, small memory limit), then
// operations, each one opcode byte plus argument bytes.
#include "store.h"

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <map>
#include <unordered_map>
#include <optional>
#include <string>
#include <string_view>
#include <iterator>
#include <vector>

namespace {

void check(bool ok, int line = __builtin_LINE()) {
  if (!ok) {
    std::fprintf(stderr, "fuzz_store.cc:%d: check failed\n", line);
    __builtin_trap();
  }
}

class FakeClock final : public kv::Clock {
 public:
  uint64_t now_ms() const override { return now; }
  uint64_t now = 0;
};

class Input {
 public:
  Input(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  bool empty() const { return pos_ >= size_; }
  uint8_t byte() { return pos_ < size_ ? data_[pos_++] : 0; }
  uint16_t u16() { return static_cast<uint16_t>(byte() | (byte() << 8)); }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

constexpr size_t kKeys = 64;  // enough small entries to overflow a small limit

std::string key_name(size_t index) {
  if (index == kKeys - 1) return std::string(255, 'L') + "!";  // the longest valid key
  if (index == kKeys - 2) return std::string(1, '\0');         // a NUL byte is a valid ASCII key
  return "k" + std::to_string(index);
}

uint32_t ttl_from(uint8_t b) {
  switch (b % 8) {
    case 0: case 1: case 2: case 3: return 0;  // most entries never expire
    case 4: return 1;
    case 5: return 1 + b / 8 % 4;
    case 6: return 2147483647;  // the API's maximum
    default: return b / 8 * 7;  // 0..217
  }
}

struct ModelEntry {
  std::string value;
  uint32_t expires_at;  // expiry tick, 0 = never
};

std::optional<std::string> lookup(kv::Store& store, const std::string& key) {
  std::optional<std::string> value;
  store.get(kv::make_key(key), [&](std::string_view v) { value = std::string(v); });
  return value;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 4096) return 0;  // keep each run short
  Input in(data, size);
  FakeClock clock;
  clock.now = uint64_t{in.byte()} * 997;  // include 0 and values off the 100 ms grid
  const uint8_t shard_byte = in.byte();
  const size_t shards = 1 + shard_byte % 4;
  // Bit 7 adds the fill op (op % 8 == 7); without it the ops decode as they
  // did before it existed, so saved inputs keep their meaning.
  const uint8_t op_count = (shard_byte & 0x80) ? 8 : 7;
  // Per shard 32 KiB .. 96 KiB: at least the two 16 KiB pages every shard is
  // granted (smaller limits are rounded up to that by design), up to about
  // what all keys with maximal values need, so evictions happen in between.
  const uint64_t small_limit = shards * (32768 + uint64_t{in.byte()} * 256);
  const uint64_t big_limit = uint64_t{1} << 40;
  kv::Store small(shards, small_limit, clock);
  kv::Store big(shards, big_limit, clock);

  // Hash maps, not ordered ones: an ordered lookup is several string
  // compares, each traced by libFuzzer, and was the largest part of an
  // execution (corpus replay ~1.3-2x faster with these).
  std::unordered_map<std::string, ModelEntry> model;  // includes expired entries the big store may still hold
  // What the small store may return: like model, except that a put refused
  // with too_large (507) leaves the previous value in place.
  std::unordered_map<std::string, ModelEntry> small_model;
  uint64_t serial = 0;
  std::vector<std::string> filled;  // keys the fill op added, oldest first
  size_t fill_erased = 0;           // filled[0 .. fill_erased) were erased
  int fills_left = 4;               // keeps a run short

  auto live = [&](const ModelEntry& entry) { return !kv::is_expired(entry.expires_at, clock.now); };
  auto live_count = [&] {
    size_t n = 0;
    for (const auto& [key, entry] : model) n += live(entry);
    return n;
  };

  // A distinct, printable value per put, so a stale one is recognised. A
  // size field of 0xF000 or more rewrites `same_size_as` (if stored) with a
  // value of its current size: the same chunk, so its TTL changes in place
  // (later, earlier, or gone), which random sizes seldom give.
  auto next_value = [&](const std::string& same_size_as) {
    uint16_t size_field = in.u16();
    size_t value_size = size_field % 257;
    if (auto current = model.find(same_size_as); size_field >= 0xF000 && current != model.end()) {
      value_size = current->second.value.size();
    }
    std::string value = "<" + std::to_string(++serial) + ">";
    while (value.size() < value_size) value += static_cast<char>('a' + value.size() % 26);
    value.resize(value_size);
    return value;
  };

  // A hit in the small store must be the latest accepted put, live.
  auto check_small = [&](const std::string& key) {
    std::optional<std::string> got = lookup(small, key);
    if (!got) return;
    auto s = small_model.find(key);
    check(s != small_model.end() && live(s->second) && s->second.value == *got);
  };

  while (!in.empty()) {
    uint8_t op = in.byte();
    std::string key = key_name(in.byte() % kKeys);
    auto it = model.find(key);
    switch (op % op_count) {
      case 0:
      case 1: {  // put
        std::string value = next_value(key);
        uint32_t ttl = ttl_from(in.byte());
        uint32_t expires_at = kv::expiry_tick(clock.now, ttl);
        kv::PutStatus big_status = big.put(kv::make_key(key), value, ttl);
        check(big_status == kv::PutStatus::ok);
        kv::PutStatus small_status = small.put(kv::make_key(key), value, ttl);
        model[key] = {value, expires_at};
        if (small_status == kv::PutStatus::ok) {
          small_model[key] = {value, expires_at};
          // Nothing evicts the newest entry, and a TTL of >= 1 s has not run out yet.
          check(lookup(small, key) == value);
        } else {
          // 507: the put did not happen; the small store may still return the
          // previous value (small_model keeps it), never this one.
          check_small(key);
        }
        break;
      }
      case 2: {  // get
        std::optional<std::string> expected;
        if (it != model.end()) {
          if (live(it->second)) {
            expected = it->second.value;
          } else {
            model.erase(it);  // the store drops an expired entry it is asked for
          }
        }
        check(lookup(big, key) == expected);
        check_small(key);
        break;
      }
      case 3: {  // erase
        bool expected = it != model.end() && live(it->second);
        if (it != model.end()) model.erase(it);
        check(big.erase(kv::make_key(key)) == expected);
        bool erased = small.erase(kv::make_key(key));
        auto s = small_model.find(key);
        if (erased) check(s != small_model.end() && live(s->second));
        if (s != small_model.end()) small_model.erase(s);
        check(!lookup(small, key).has_value());
        check(!lookup(big, key).has_value());
        break;
      }
      case 4: {  // advance the clock
        uint8_t b = in.byte();
        clock.now += (b & 0x80) ? uint64_t(b & 0x7f) * 1000 : uint64_t{b} * 13;
        break;
      }
      case 6: {  // mput: 1..8 items, keys may repeat (the last one wins)
        size_t count = 1 + in.byte() % 8;
        std::vector<std::string> keys{key}, values;
        std::vector<uint32_t> ttls;
        while (keys.size() < count) keys.push_back(key_name(in.byte() % kKeys));
        for (size_t i = 0; i < count; ++i) {
          values.push_back(next_value(keys[i]));
          ttls.push_back(ttl_from(in.byte()));
        }
        auto batch = [&] {
          std::vector<kv::BatchPut> items;
          for (size_t i = 0; i < count; ++i) items.push_back({kv::make_key(keys[i]), values[i], ttls[i]});
          return items;
        };
        auto big_items = batch();
        check(big.put_batch(big_items) == kv::PutStatus::ok);
        auto small_items = batch();
        bool stored = small.put_batch(small_items) == kv::PutStatus::ok;
        for (size_t i = 0; i < count; ++i) {
          ModelEntry entry{values[i], kv::expiry_tick(clock.now, ttls[i])};
          model[keys[i]] = entry;
          if (stored) small_model[keys[i]] = entry;
        }
        // All of it (the batch evicts none of its own entries), or none of it.
        for (size_t i = 0; i < count; ++i) {
          if (stored) {
            check(lookup(small, keys[i]) == small_model[keys[i]].value);
          } else {
            check_small(keys[i]);
          }
        }
        break;
      }
      case 7: {  // fill: 8..262 fresh keys with short values, or erase as many of the oldest
        if (fills_left == 0) break;
        --fills_left;
        uint8_t b = in.byte();
        size_t count = 8 + static_cast<size_t>(b >> 1) * 2;
        if (b & 1) {
          for (size_t i = 0; i < count && fill_erased < filled.size(); ++i) {
            const std::string& name = filled[fill_erased++];
            auto m = model.find(name);
            bool expected = m != model.end() && live(m->second);
            if (m != model.end()) model.erase(m);
            check(big.erase(kv::make_key(name)) == expected);
            small.erase(kv::make_key(name));
            small_model.erase(name);
          }
          break;
        }
        uint32_t ttl = ttl_from(in.byte());
        for (size_t i = 0; i < count; ++i) {
          std::string name = "f" + std::to_string(filled.size());
          std::string value = std::to_string(++serial);
          uint32_t expires_at = kv::expiry_tick(clock.now, ttl);
          check(big.put(kv::make_key(name), value, ttl) == kv::PutStatus::ok);
          model[name] = {value, expires_at};
          if (small.put(kv::make_key(name), value, ttl) == kv::PutStatus::ok) small_model[name] = {value, expires_at};
          filled.push_back(std::move(name));
          // Earlier keys, found in whichever table holds them now.
          const std::string& earlier = filled[fill_erased + (filled.size() * 7919) % (filled.size() - fill_erased)];
          auto m = model.find(earlier);
          std::optional<std::string> expected;
          if (m != model.end() && live(m->second)) {
            expected = m->second.value;
          } else if (m != model.end()) {
            model.erase(m);  // the store drops an expired entry it is asked for
          }
          check(lookup(big, earlier) == expected);
          check_small(earlier);
        }
        break;
      }
      default: {  // sweep
        uint8_t b = in.byte();
        bool full = b & 1;
        // A full sweep: a page budget larger than any shard.
        size_t budget = full ? 1 << 20 : b / 2 % 4;
        small.sweep_expired(budget);
        big.sweep_expired(budget);
        if (full) {
          for (auto m = model.begin(); m != model.end();) m = live(m->second) ? std::next(m) : model.erase(m);
        }
        break;
      }
    }

    kv::StoreStats small_stats = small.stats();
#ifndef FUZZ_STORE_NO_LIMIT_CHECK  // (to explore past a known overshoot: -DFUZZ_STORE_NO_LIMIT_CHECK)
    check(small_stats.bytes_used <= small_limit);
#endif
    check(small_stats.entries <= small_model.size());
    check(small_stats.evictions == 0 || small_stats.bytes_used > 0 || small_stats.entries == 0);
    kv::StoreStats big_stats = big.stats();
    check(big_stats.evictions == 0);
    check(big_stats.entries >= live_count() && big_stats.entries <= model.size());
  }

  // Finally every key, in both stores.
  for (size_t i = 0; i < kKeys; ++i) {
    std::string key = key_name(i);
    auto it = model.find(key);
    std::optional<std::string> expected;
    if (it != model.end() && live(it->second)) expected = it->second.value;
    check(lookup(big, key) == expected);
    check_small(key);
  }
  return 0;
}

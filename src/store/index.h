// A shard's hash index: the slab handle of every key, grown and cleaned
// incrementally so that no call rehashes more than a fixed number of slots
// (Redis's dict does the same with its two tables and dictRehash(d, n)).
//
// The table is open addressing in SwissTable's layout (abseil's
// flat_hash_set, which this replaces): one control byte per slot (7 bits of
// the hash, or empty, or deleted) and a 4-byte handle, probed 16 control
// bytes at a time (one SSE2 compare), groups visited in triangular order.
// Lookups compare keys only for slots whose 7 bits match; the key lives in
// the entry the handle names (KeyOf resolves it), so a slot costs 5 bytes.
//
//   rebuild: when an insert finds no empty slot left within the load limit
//   (7/8, counting deleted slots), or a batch reserves more room than is
//   left, a second table is allocated, sized for the live entries (twice
//   the room when mostly live; the same or smaller when mostly deleted
//   slots), new keys go to it, and every insert (and every shard call, and
//   the sweep) moves the live entries of the next kRehashStepSlots slots of
//   the old table into it. Lookups and erases look in both. When the old
//   table holds nothing it is freed.
//
// The new table has room for all the old entries plus as many inserts as
// steps the move needs, so a rebuild always ends before another one is due
// (the argument is at plan()). Erasing keeps lookups correct without
// rehashing: a slot becomes empty only in a group that already has an empty
// slot (no probe went past that group), else deleted.
//
// Memory: both tables while a rebuild runs, and before it the next table's
// size is charged gradually over the last inserts before it is due
// (charged_bytes()), so the shard pays for it by evicting a little on each
// put instead of all at once when it is allocated.
//
// Not thread-safe: guarded by the owning shard's lock.
#pragma once

#include "slab.h"

#include <absl/hash/hash.h>

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <utility>

#ifdef __SSE2__
#include <emmintrin.h>
#endif

namespace kv {

// A key with its hash, computed once per request outside any lock.
struct KeyRef {
  std::string_view key;
  size_t hash;
};

inline size_t hash_key(std::string_view key) { return absl::Hash<std::string_view>{}(key); }
inline KeyRef make_key(std::string_view key) { return {key, hash_key(key)}; }

// Old-table slots one rebuild step looks at (each live one is rehashed from
// its key and moved): the bound of the index work per step.
inline constexpr size_t kRehashStepSlots = 64;

// KeyOf: a callable std::string_view(Handle), the key stored under a handle.
template <class KeyOf>
class HandleIndex {
 public:
  static constexpr size_t kGroupSize = 16;

  explicit HandleIndex(KeyOf key_of, const MemoryCalls& calls = system_memory_calls())
      : key_of_(std::move(key_of)), calls_(calls) {}
  ~HandleIndex() {
    release(cur_);
    release(old_);
  }
  HandleIndex(const HandleIndex&) = delete;
  HandleIndex& operator=(const HandleIndex&) = delete;

  // The key's slot (its handle may be changed in place), or nullptr. Valid
  // until the next insert, erase, reserve or step.
  Handle* find(const KeyRef& key) {
    Handle* slot = find_in(cur_, key);
    if (slot != nullptr || old_.ctrl == nullptr) [[likely]] return slot;
    return find_in(old_, key);
  }

  // Adds a key that is in neither table (one rebuild step first). False,
  // with nothing changed, when the index is full and the next table cannot
  // be allocated (reserve(1) first makes it infallible).
  bool insert(const KeyRef& key, Handle handle) {
    step();
    if (cur_.growth_left == 0 && !reserve(1)) return false;
    place(cur_, key.hash, handle);
    return true;
  }

  // Removes the key; false when absent.
  bool erase(const KeyRef& key) {
    if (Handle* slot = find_in(cur_, key)) {
      erase_slot(cur_, static_cast<size_t>(slot - cur_.slots));
      return true;
    }
    if (old_.ctrl == nullptr) return false;
    Handle* slot = find_in(old_, key);
    if (slot == nullptr) return false;
    erase_slot(old_, static_cast<size_t>(slot - old_.slots));
    release_old_if_empty();
    return true;
  }

  // One bounded step of a running rebuild (nothing otherwise): moves the
  // live entries among the next kRehashStepSlots slots of the old table.
  void step() {
    if (old_.ctrl == nullptr) [[likely]] return;
    size_t end = std::min(cursor_ + kRehashStepSlots, old_.capacity);
    for (; cursor_ < end; ++cursor_) {
      ++work_;
      if (old_.ctrl[cursor_] < 0) continue;  // empty or deleted
      Handle handle = old_.slots[cursor_];
      place(cur_, hash_key(key_of_(handle)), handle);
      erase_slot(old_, cursor_);
    }
    release_old_if_empty();
  }

  // Room for `count` inserts that start no rebuild (a put of a new key and
  // a batch reserve before they allocate, so the index's memory is charged
  // first). False, with nothing changed, when the next table cannot be
  // allocated or a running rebuild cannot end within finish()'s bound.
  bool reserve(size_t count) {
    if (old_.ctrl != nullptr) {
      if (cur_.growth_left >= old_.size + count) return true;
      if (!finish(count + 1)) return false;
    }
    return cur_.growth_left >= count || start_rebuild(count);
  }

  // When nothing is left to evict and the shard is over its limit: up to
  // `steps` steps of the running rebuild, or of a new one into a table
  // sized for the entries left (plus `pending` inserts) when that is
  // smaller. False when there was nothing to do.
  bool shrink(size_t pending, size_t steps) {
    size_t taken = 0;
    for (; taken < steps; ++taken) {
      if (old_.ctrl == nullptr) {
        if (plan(cur_.size + pending, cur_.capacity) >= cur_.capacity || !start_rebuild(pending)) break;
      }
      step();
    }
    return taken > 0;
  }

  // Exchanges the tables (Shard::flush swaps in an empty index and frees the
  // old tables outside its lock). O(1).
  void swap_tables(HandleIndex& other) noexcept {
    std::swap(cur_, other.cur_);
    std::swap(old_, other.old_);
    std::swap(cursor_, other.cursor_);
  }

  size_t size() const { return cur_.size + old_.size; }
  bool rebuilding() const { return old_.ctrl != nullptr; }
  size_t capacity() const { return cur_.capacity; }
  // The tables' memory (one control byte and one handle per slot), plus,
  // when the next rebuild is near (growth_left below capacity / 8), the
  // same fraction of the table it will allocate.
  uint64_t charged_bytes() const {
    uint64_t bytes = table_bytes(cur_.capacity) + table_bytes(old_.capacity);
    size_t ramp = cur_.capacity / 8;
    if (old_.ctrl == nullptr && cur_.growth_left < ramp) {
      bytes += table_bytes(plan(cur_.size, cur_.capacity)) * (ramp - cur_.growth_left) / ramp;
    }
    return bytes;
  }
  // For tests: old-table slots visited by rebuild steps so far.
  uint64_t work() const { return work_; }

 private:
  static constexpr int8_t kEmpty = -128;
  static constexpr int8_t kDeleted = -2;
  // A table with capacity 0 probes this group (all empty) and holds nothing.
  alignas(16) static constexpr int8_t kEmptyGroup[kGroupSize] = {
      kEmpty, kEmpty, kEmpty, kEmpty, kEmpty, kEmpty, kEmpty, kEmpty,
      kEmpty, kEmpty, kEmpty, kEmpty, kEmpty, kEmpty, kEmpty, kEmpty};

  struct Table {
    int8_t* ctrl = nullptr;   // capacity bytes (kEmptyGroup for cur_ while unallocated)
    Handle* slots = nullptr;  // capacity handles, after the control bytes
    size_t capacity = 0;      // 0 or a power of two >= kGroupSize
    size_t group_mask = 0;    // groups - 1
    size_t size = 0;          // live entries
    size_t growth_left = 0;   // empty slots that may still be filled within the load limit
  };

  static uint64_t table_bytes(size_t capacity) { return capacity * (sizeof(Handle) + 1); }
  static size_t max_load(size_t capacity) { return capacity - capacity / 8; }

  // The capacity of a rebuild's table for `live` entries plus `extra`
  // inserts, from a table of old_capacity slots. It must hold every old
  // entry and every insert made while the old table is moved: at most one
  // insert per step, and ceil(old_capacity / kRehashStepSlots) steps move
  // it all; live / 2 more leaves room to grow (a full table doubles), and
  // a table mostly of deleted slots is rebuilt the same size or smaller.
  static size_t plan(size_t live, size_t old_capacity, size_t extra = 0) {
    size_t need = live + extra + std::max(live / 2, old_capacity / kRehashStepSlots + 1);
    size_t capacity = kGroupSize;
    while (max_load(capacity) < need) capacity *= 2;
    return capacity;
  }

  static uint32_t match_byte(const int8_t* group, int8_t value) {
#ifdef __SSE2__
    __m128i ctrl = _mm_load_si128(reinterpret_cast<const __m128i*>(group));
    return static_cast<uint32_t>(_mm_movemask_epi8(_mm_cmpeq_epi8(ctrl, _mm_set1_epi8(value))));
#else
    uint32_t mask = 0;
    for (size_t i = 0; i < kGroupSize; ++i) mask |= uint32_t{group[i] == value} << i;
    return mask;
#endif
  }
  // Empty or deleted: both have the high bit set.
  static uint32_t match_free(const int8_t* group) {
#ifdef __SSE2__
    return static_cast<uint32_t>(_mm_movemask_epi8(_mm_load_si128(reinterpret_cast<const __m128i*>(group))));
#else
    uint32_t mask = 0;
    for (size_t i = 0; i < kGroupSize; ++i) mask |= uint32_t{group[i] < 0} << i;
    return mask;
#endif
  }
  static int8_t h2(size_t hash) { return static_cast<int8_t>(hash & 0x7F); }
  static size_t first_group(const Table& table, size_t hash) { return (hash >> 7) & table.group_mask; }

  Handle* find_in(Table& table, const KeyRef& key) const {
    int8_t tag = h2(key.hash);
    size_t group = first_group(table, key.hash);
    for (size_t probe = 1;; ++probe) {
      const int8_t* ctrl = table.ctrl + group * kGroupSize;
      for (uint32_t match = match_byte(ctrl, tag); match != 0; match &= match - 1) {
        size_t slot = group * kGroupSize + static_cast<size_t>(std::countr_zero(match));
        if (key_of_(table.slots[slot]) == key.key) return &table.slots[slot];
      }
      if (match_byte(ctrl, kEmpty) != 0) return nullptr;
      group = (group + probe) & table.group_mask;
    }
  }

  // Into the first free slot of the key's probe sequence (the table has
  // one: growth_left > 0 or a deleted slot).
  static void place(Table& table, size_t hash, Handle handle) {
    size_t group = first_group(table, hash);
    for (size_t probe = 1;; ++probe) {
      const int8_t* ctrl = table.ctrl + group * kGroupSize;
      if (uint32_t free = match_free(ctrl); free != 0) {
        size_t slot = group * kGroupSize + static_cast<size_t>(std::countr_zero(free));
        if (table.ctrl[slot] == kEmpty) --table.growth_left;
        table.ctrl[slot] = h2(hash);
        table.slots[slot] = handle;
        ++table.size;
        return;
      }
      group = (group + probe) & table.group_mask;
    }
  }

  static void erase_slot(Table& table, size_t slot) {
    --table.size;
    const int8_t* group = table.ctrl + slot / kGroupSize * kGroupSize;
    // A group with an empty slot ends every probe that reaches it, so no key
    // lies beyond it on a probe through it: this slot may become empty.
    if (match_byte(group, kEmpty) != 0) {
      table.ctrl[slot] = kEmpty;
      ++table.growth_left;
    } else {
      table.ctrl[slot] = kDeleted;
    }
  }

  // False, with nothing changed, when the allocation fails.
  bool start_rebuild(size_t extra) {
    size_t capacity = plan(cur_.size, cur_.capacity, extra);
    char* memory = static_cast<char*>(calls_.allocate(table_bytes(capacity)));
    if (memory == nullptr) return false;
    old_ = cur_;
    cursor_ = 0;
    cur_ = Table{};
    cur_.ctrl = reinterpret_cast<int8_t*>(memory);
    cur_.slots = reinterpret_cast<Handle*>(memory + capacity);
    cur_.capacity = capacity;
    cur_.group_mask = capacity / kGroupSize - 1;
    cur_.growth_left = max_load(capacity);
    std::memset(cur_.ctrl, kEmpty, capacity);
    release_old_if_empty();
    return true;
  }

  // Ends the running rebuild within max_steps steps, else false (the rest
  // stays for later steps). reserve(count) needs at most count + 1: the new
  // table was planned with room for the old entries plus one insert per
  // step the move takes (plan()), so while fewer than count inserts are
  // left of that room, fewer than count steps' slots are left to move.
  bool finish(size_t max_steps) {
    for (size_t steps = 0; old_.ctrl != nullptr && steps < max_steps; ++steps) step();
    return old_.ctrl == nullptr;
  }

  void release_old_if_empty() {
    if (old_.ctrl == nullptr || old_.size > 0) return;
    release(old_);
    old_ = Table{};
  }

  void release(Table& table) {
    if (table.capacity > 0) calls_.deallocate(table.ctrl);
  }

  KeyOf key_of_;
  const MemoryCalls& calls_;
  Table cur_{const_cast<int8_t*>(kEmptyGroup)};
  Table old_;          // the table being moved out of (ctrl nullptr: no rebuild)
  size_t cursor_ = 0;  // old_'s next slot to move
  uint64_t work_ = 0;
};

}  // namespace kv

// A shard's hash index: the slab handle of every key, in segments that grow
// one at a time, so the index never holds a second whole table and no call
// touches more than one segment's slots (extendible hashing, as Dragonfly's
// Dashtable after Dash, VLDB 2020).
//
// A directory of 2^depth pointers, indexed by hash bits 7.., names the
// segments; a segment of local depth d owns every directory slot whose low d
// bits are its own. Each segment is a small open-addressing table in
// SwissTable's layout: one control byte per slot (7 bits of the hash, or
// empty, or deleted) and a 4-byte handle, probed 16 control bytes at a time
// (one SSE2 compare) from a group picked by the hash's upper bits, groups in
// order. Lookups compare keys only for slots whose 7 bits match; the key
// lives in the entry the handle names (KeyOf resolves it), so a slot costs
// 5 bytes.
//
//   growth: a segment at its load limit (7/8) is rebuilt with the next
//   number of groups on a ladder (x1.25 a rung, up to kMaxGroups); a full
//   segment at the top rung splits in two by the next hash bit, each half
//   sized to about 0.7 of its limit (the directory doubles first when the
//   segment's depth is the directory's). Either way every live entry of
//   that one segment is rehashed from its key and placed, at most
//   kMaxSegmentSlots, and its old table is freed at once: the index grows
//   by at most one segment's table at a time.
//
//   load: a segment's load stays between about 0.68 and 0.875 as it grows
//   (a rung up from full, or a split), so a slot costs 5.7 to 7.4 bytes a
//   key whatever the count, where a doubling table saws between 5.7 and 11.
//
// Erasing keeps lookups correct without rehashing: a slot becomes empty
// only in a group that already has an empty slot (no probe went past that
// group), else deleted; a segment whose limit is reached mostly by deleted
// slots is rebuilt at its size or smaller. shrink() rebuilds sparse
// segments smaller, a few a call.
//
// Memory: allocated through MemoryCalls::allocate (never throwing); an
// insert whose growth cannot be allocated fails, with nothing changed.
//
// Not thread-safe: guarded by the owning shard's lock.
#pragma once

#include "slab.h"

#include <absl/hash/hash.h>

#include <algorithm>
#include <array>
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

// KeyOf: a callable std::string_view(Handle), the key stored under a handle.
template <class KeyOf>
class HandleIndex {
 public:
  static constexpr size_t kGroupSize = 16;
  // A segment's group counts, each about 1.25x the one before: a full
  // segment moves one rung up; at the top it splits.
  static constexpr std::array<uint16_t, 13> kLadder{1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 25, 32};
  static constexpr size_t kMaxGroups = 32;
  // The most slots one segment has: the bound of a probe (kMaxGroups
  // groups) and of one growth step's rehashing.
  static constexpr size_t kMaxSegmentSlots = kMaxGroups * kGroupSize;
  // The directory's largest depth: 2^22 segments of up to 448 keys, far
  // past any shard (a shard holds at most 2^32 / 8 chunks).
  static constexpr unsigned kMaxDepth = 22;
  // Growth steps one insert may take (each at most kMaxSegmentSlots slots).
  static constexpr size_t kMaxGrowthsPerInsert = 2;
  // Freed tables kept for reuse, per size (see free_table).
  static constexpr size_t kKeptTables = 4;

  explicit HandleIndex(KeyOf key_of, const MemoryCalls& calls = system_memory_calls())
      : key_of_(std::move(key_of)), calls_(calls) {}
  ~HandleIndex() {
    for_each_segment([&](Segment* segment) {
      calls_.deallocate(segment->ctrl);
      calls_.deallocate(segment);
    });
    calls_.deallocate(directory_);
    for (char* memory : kept_) {
      while (memory != nullptr) {
        char* next;
        std::memcpy(&next, memory, sizeof next);
        calls_.deallocate(memory);
        memory = next;
      }
    }
  }
  HandleIndex(const HandleIndex&) = delete;
  HandleIndex& operator=(const HandleIndex&) = delete;

  // The key's slot (its handle may be changed in place), or nullptr. Valid
  // until the next insert, erase or shrink.
  Handle* find(const KeyRef& key) {
    if (directory_ == nullptr) [[unlikely]] return nullptr;
    Segment& segment = *segment_for(key.hash);
    size_t slot = find_slot(segment, key);
    return slot == kNotFound ? nullptr : &segment.slots[slot];
  }

  // Adds a key that is not in the index. May grow the key's segment (or
  // split it, or double the directory): at most kMaxSegmentSlots entries
  // rehashed. False, with nothing changed, when that memory cannot be
  // allocated.
  bool insert(const KeyRef& key, Handle handle) {
    if (directory_ == nullptr && !start()) return false;
    Segment* segment = segment_for(key.hash);
    for (size_t growths = 0; segment->growth_left == 0; ++growths) {
      // A second growth only if a split left this key's half full, which
      // needs every key of the segment on one side of the bit.
      if (growths == kMaxGrowthsPerInsert || !grow(segment, key.hash)) return false;
      segment = segment_for(key.hash);
    }
    place(*segment, key.hash, handle);
    ++size_;
    return true;
  }

  // Removes the key; false when absent.
  bool erase(const KeyRef& key) {
    if (directory_ == nullptr) return false;
    Segment& segment = *segment_for(key.hash);
    size_t slot = find_slot(segment, key);
    if (slot == kNotFound) return false;
    erase_slot(segment, slot);
    --size_;
    return true;
  }

  // When nothing is left to evict and the shard is over its limit: looks at
  // up to `segments` segments (round robin) and rebuilds those sized for
  // many more keys than they hold smaller. False when none was.
  bool shrink(size_t segments) {
    if (directory_ == nullptr) return false;
    bool shrunk = false;
    for (size_t looked = 0; looked < segments; ++looked) {
      shrink_cursor_ &= directory_mask();
      Segment* segment = directory_[shrink_cursor_];
      // Each segment once: at the directory slot equal to its own low bits.
      if ((shrink_cursor_ & low_mask(segment->depth)) == shrink_cursor_) {
        uint16_t groups = groups_for(segment->size);
        if (groups < segment->groups && rebuild(*segment, groups)) shrunk = true;
      }
      ++shrink_cursor_;
    }
    return shrunk;
  }

  // Exchanges the contents (Shard::flush swaps in an empty index and frees
  // the old segments outside its lock). O(1).
  void swap_tables(HandleIndex& other) noexcept {
    std::swap(directory_, other.directory_);
    std::swap(depth_, other.depth_);
    std::swap(size_, other.size_);
    std::swap(segments_, other.segments_);
    std::swap(bytes_, other.bytes_);
    std::swap(shrink_cursor_, other.shrink_cursor_);
    std::swap(kept_, other.kept_);
    std::swap(kept_count_, other.kept_count_);
  }

  size_t size() const { return size_; }
  size_t segment_count() const { return segments_; }
  unsigned depth() const { return depth_; }
  // Every byte the index allocated: segment tables and headers, and the
  // directory.
  uint64_t charged_bytes() const { return bytes_; }
  // The most one insert may add to charged_bytes() once the index has a
  // segment: a split's two tables and header, and a directory doubling.
  uint64_t growth_bytes() const {
    if (directory_ == nullptr) return 0;
    return 2 * table_bytes(kMaxGroups) + sizeof(Segment) + (sizeof(Segment*) << depth_);
  }
  // For tests: slots visited by growth (rehashing) and directory slots
  // written by splits so far; and pointers copied by the directory's
  // doublings (a memcpy of 2^depth, once each time the keys double).
  uint64_t work() const { return work_; }
  uint64_t directory_copies() const { return directory_copies_; }

 private:
  static constexpr int8_t kEmpty = -128;
  static constexpr int8_t kDeleted = -2;
  static constexpr size_t kNotFound = SIZE_MAX;

  struct Segment {
    int8_t* ctrl;             // groups * 16 control bytes, then the handles (one allocation)
    Handle* slots;
    uint16_t groups;
    uint16_t size;            // live keys
    uint16_t growth_left;     // empty slots that may still be filled within the load limit
    uint8_t depth;            // hash bits (from bit 7) all its keys share
  };

  static size_t slot_count(size_t groups) { return groups * kGroupSize; }
  static size_t max_load(size_t groups) { return slot_count(groups) - slot_count(groups) / 8; }
  static size_t table_bytes(size_t groups) { return slot_count(groups) * (1 + sizeof(Handle)); }
  static size_t low_mask(unsigned bits) { return (size_t{1} << bits) - 1; }
  size_t directory_mask() const { return low_mask(depth_); }
  // The smallest rung whose limit leaves a fifth of it free with `keys` in
  // it (about 0.7 full), so a rebuilt or split segment has room to grow.
  static uint16_t groups_for(size_t keys) {
    for (uint16_t groups : kLadder) {
      if (keys + max_load(groups) / 5 <= max_load(groups)) return groups;
    }
    return kLadder.back();
  }
  static uint16_t next_rung(uint16_t groups) {
    for (uint16_t rung : kLadder) {
      if (rung > groups) return rung;
    }
    return groups;
  }

  Segment* segment_for(size_t hash) const { return directory_[(hash >> 7) & directory_mask()]; }
  static int8_t h2(size_t hash) { return static_cast<int8_t>(hash & 0x7F); }
  // The first group probed: the hash's upper bits, remixed (the shard took
  // the top ones) and scaled to the segment's group count.
  static size_t first_group(const Segment& segment, size_t hash) {
    uint64_t mixed = static_cast<uint64_t>(hash) * 0x9E3779B97F4A7C15ull;
    return static_cast<size_t>(((mixed >> 32) * segment.groups) >> 32);
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

  // At most segment.groups (<= kMaxGroups) groups: the limit keeps an
  // empty slot in the segment, and a probe stops at the first group with one.
  size_t find_slot(const Segment& segment, const KeyRef& key) const {
    int8_t tag = h2(key.hash);
    size_t group = first_group(segment, key.hash);
    for (size_t probes = 0; probes < segment.groups; ++probes) {
      const int8_t* ctrl = segment.ctrl + group * kGroupSize;
      for (uint32_t match = match_byte(ctrl, tag); match != 0; match &= match - 1) {
        size_t slot = group * kGroupSize + static_cast<size_t>(std::countr_zero(match));
        if (key_of_(segment.slots[slot]) == key.key) return slot;
      }
      if (match_byte(ctrl, kEmpty) != 0) return kNotFound;
      if (++group == segment.groups) group = 0;
    }
    return kNotFound;
  }

  // Into the first free slot of the key's probe sequence (the segment has
  // one: growth_left > 0 or a deleted slot).
  static void place(Segment& segment, size_t hash, Handle handle) {
    size_t group = first_group(segment, hash);
    for (size_t probes = 0; probes < segment.groups; ++probes) {
      const int8_t* ctrl = segment.ctrl + group * kGroupSize;
      if (uint32_t free = match_free(ctrl); free != 0) {
        size_t slot = group * kGroupSize + static_cast<size_t>(std::countr_zero(free));
        if (segment.ctrl[slot] == kEmpty) --segment.growth_left;
        segment.ctrl[slot] = h2(hash);
        segment.slots[slot] = handle;
        ++segment.size;
        return;
      }
      if (++group == segment.groups) group = 0;
    }
  }

  static void erase_slot(Segment& segment, size_t slot) {
    --segment.size;
    const int8_t* group = segment.ctrl + slot / kGroupSize * kGroupSize;
    // A group with an empty slot ends every probe that reaches it, so no key
    // lies beyond it on a probe through it: this slot may become empty.
    if (match_byte(group, kEmpty) != 0) {
      segment.ctrl[slot] = kEmpty;
      ++segment.growth_left;
    } else {
      segment.ctrl[slot] = kDeleted;
    }
  }

  static size_t rung_of(uint16_t groups) {
    return static_cast<size_t>(std::find(kLadder.begin(), kLadder.end(), groups) - kLadder.begin());
  }

  // A table of `groups` groups, all empty, or false: a kept one of that
  // size if there is one, else a new allocation.
  bool allocate_table(Segment& segment, uint16_t groups) {
    size_t rung = rung_of(groups);
    char* memory = kept_[rung];
    if (memory != nullptr) {
      std::memcpy(&kept_[rung], memory, sizeof(char*));
      --kept_count_[rung];
      bytes_ -= table_bytes(groups);  // counted again below
    } else {
      memory = static_cast<char*>(calls_.allocate(table_bytes(groups)));
    }
    if (memory == nullptr) return false;
    segment.ctrl = reinterpret_cast<int8_t*>(memory);
    segment.slots = reinterpret_cast<Handle*>(memory + slot_count(groups));
    segment.groups = groups;
    segment.size = 0;
    segment.growth_left = static_cast<uint16_t>(max_load(groups));
    std::memset(segment.ctrl, kEmpty, slot_count(groups));
    bytes_ += table_bytes(groups);
    return true;
  }
  // Keeps up to kKeptTables freed tables of each size for the next growth
  // to that size (still charged), so growing segments reuse each other's
  // tables instead of fragmenting the heap; frees the rest.
  void free_table(const Segment& segment) {
    size_t rung = rung_of(segment.groups);
    if (kept_count_[rung] < kKeptTables) {
      char* memory = reinterpret_cast<char*>(segment.ctrl);
      std::memcpy(memory, &kept_[rung], sizeof(char*));
      kept_[rung] = memory;
      ++kept_count_[rung];
      return;
    }
    calls_.deallocate(segment.ctrl);
    bytes_ -= table_bytes(segment.groups);
  }
  Segment* new_segment() {
    auto* segment = static_cast<Segment*>(calls_.allocate(sizeof(Segment)));
    if (segment != nullptr) bytes_ += sizeof(Segment);
    return segment;
  }
  void free_segment(Segment* segment) {
    calls_.deallocate(segment);
    bytes_ -= sizeof(Segment);
  }

  // The first segment, one group, behind a directory of one.
  bool start() {
    directory_ = static_cast<Segment**>(calls_.allocate(sizeof(Segment*)));
    if (directory_ == nullptr) return false;
    Segment* segment = new_segment();
    if (segment == nullptr || !allocate_table(*segment, 1)) {
      if (segment != nullptr) free_segment(segment);
      calls_.deallocate(directory_);
      directory_ = nullptr;
      return false;
    }
    segment->depth = 0;
    directory_[0] = segment;
    depth_ = 0;
    segments_ = 1;
    bytes_ += sizeof(Segment*);
    return true;
  }

  // Room in a segment at its limit: rebuilt at a size for its keys (most
  // of its used slots were deleted ones), one rung up, or split.
  bool grow(Segment* segment, size_t hash) {
    // At the limit, every used slot is live or deleted.
    size_t deleted = max_load(segment->groups) - segment->size;
    if (deleted >= max_load(segment->groups) / 5) {
      return rebuild(*segment, std::min(groups_for(segment->size + 1), segment->groups));
    }
    if (segment->groups < kMaxGroups) return rebuild(*segment, next_rung(segment->groups));
    return split(segment, hash);
  }

  // Moves every key of the segment into a new table of `groups` groups.
  bool rebuild(Segment& segment, uint16_t groups) {
    Segment old = segment;
    if (!allocate_table(segment, groups)) {
      segment = old;
      return false;
    }
    for (size_t slot = 0; slot < slot_count(old.groups); ++slot) {
      ++work_;
      if (old.ctrl[slot] < 0) continue;
      Handle handle = old.slots[slot];
      place(segment, hash_key(key_of_(handle)), handle);
    }
    free_table(old);
    return true;
  }

  // Splits a full segment by hash bit 7 + depth into itself and a new one,
  // each sized for its half (the keys' hashes are computed once, on the
  // stack). The directory doubles first if the segment's depth is its own.
  bool split(Segment* segment, size_t hash) {
    if (segment->depth == depth_ && !double_directory()) return false;
    const unsigned bit = 7 + segment->depth;
    std::array<uint64_t, kMaxSegmentSlots> hashes;
    size_t upper = 0;
    for (size_t slot = 0; slot < slot_count(segment->groups); ++slot) {
      ++work_;
      if (segment->ctrl[slot] < 0) continue;
      hashes[slot] = hash_key(key_of_(segment->slots[slot]));
      upper += (hashes[slot] >> bit) & 1;
    }
    size_t lower = segment->size - upper;
    Segment* high = new_segment();
    if (high == nullptr) return false;
    Segment old = *segment;
    if (!allocate_table(*high, groups_for(upper))) {
      free_segment(high);
      return false;
    }
    if (!allocate_table(*segment, groups_for(lower))) {
      calls_.deallocate(high->ctrl);
      bytes_ -= table_bytes(high->groups);
      free_segment(high);
      *segment = old;
      return false;
    }
    for (size_t slot = 0; slot < slot_count(old.groups); ++slot) {
      if (old.ctrl[slot] < 0) continue;
      place((hashes[slot] >> bit) & 1 ? *high : *segment, hashes[slot], old.slots[slot]);
    }
    free_table(old);
    segment->depth = high->depth = static_cast<uint8_t>(old.depth + 1);
    ++segments_;
    // Every directory slot of the segment's with the new bit set: 2^(depth
    // - segment depth - 1) of them, strided.
    size_t own = (hash >> 7) & low_mask(old.depth);
    for (size_t i = own | (size_t{1} << old.depth); i <= directory_mask(); i += size_t{1} << (old.depth + 1)) {
      ++work_;
      directory_[i] = high;
    }
    return true;
  }

  // Twice the directory, each slot copied: 2^depth pointers.
  bool double_directory() {
    if (depth_ == kMaxDepth) return false;
    size_t count = size_t{1} << depth_;
    auto* grown = static_cast<Segment**>(calls_.allocate(2 * count * sizeof(Segment*)));
    if (grown == nullptr) return false;
    std::memcpy(grown, directory_, count * sizeof(Segment*));
    std::memcpy(grown + count, directory_, count * sizeof(Segment*));
    directory_copies_ += count;
    calls_.deallocate(directory_);
    directory_ = grown;
    ++depth_;
    bytes_ += count * sizeof(Segment*);
    return true;
  }

  // Each segment once, at its lowest directory slot; from the top down, so
  // visit may free the segment (no lower slot names it).
  template <class Visit>
  void for_each_segment(Visit visit) {
    if (directory_ == nullptr) return;
    for (size_t i = directory_mask() + 1; i-- > 0;) {
      Segment* segment = directory_[i];
      if ((i & low_mask(segment->depth)) == i) visit(segment);
    }
  }

  KeyOf key_of_;
  const MemoryCalls& calls_;
  Segment** directory_ = nullptr;  // 2^depth_ segment pointers
  unsigned depth_ = 0;
  size_t size_ = 0;
  size_t segments_ = 0;
  uint64_t bytes_ = 0;
  size_t shrink_cursor_ = 0;
  std::array<char*, kLadder.size()> kept_{};  // freed tables by rung, linked through their first bytes
  std::array<size_t, kLadder.size()> kept_count_{};
  uint64_t work_ = 0;
  uint64_t directory_copies_ = 0;
};

}  // namespace kv

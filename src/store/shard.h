// One independently locked part of the store: a hash index of slab handles,
// an exact LRU list through the entries, and its own byte budget.
#pragma once

#include "clock.h"
#include "entry.h"
#include "expiry.h"
#include "index.h"
#include "slab.h"
#include "validation.h"

#include <absl/functional/function_ref.h>

#include <cassert>
#include <cstdint>
#include <mutex>
#include <span>
#include <string_view>
#include <vector>

namespace kv {

enum class PutStatus { ok, too_large };
enum class ExpireStatus { ok, not_found, too_large };

// One item of an atomic batch (Store::put_batch). The caller sets key, value
// and ttl_seconds; the store fills in the rest.
struct BatchPut {
  KeyRef key;
  std::string_view value;
  uint32_t ttl_seconds = 0;
  uint32_t expires_at = 0;     // expiry tick (clock.h); 0 = never
  uint32_t order = 0;          // position in the request: a later item wins
  uint32_t shard = 0;
  Handle chunk = kNoHandle;    // reserved by Shard::reserve_locked; kNoHandle: rewrite in place
};

// A value copied out of the store.
struct ValueCopy {
  static constexpr size_t kCapacity = kMaxValueBytes;
  char bytes[kCapacity];
  size_t size = 0;
  std::string_view view() const { return {bytes, size}; }
};

struct ShardStats {
  uint64_t entries = 0;
  uint64_t bytes_used = 0;
  uint64_t hits = 0;
  uint64_t misses = 0;
  uint64_t evictions = 0;
  uint64_t expirations = 0;
};

class Shard {
  // The index resolves a handle's key through the slab.
  struct EntryKey {
    const Slab* slab;
    std::string_view operator()(Handle handle) const { return Entry::at(*slab, handle).key(); }
  };
  using Index = HandleIndex<EntryKey>;

 public:
  Shard(uint64_t byte_limit, const Clock& clock, const MemoryCalls& calls = system_memory_calls());
  Shard(const Shard&) = delete;
  Shard& operator=(const Shard&) = delete;

  // Inserts or replaces. Evicts least recently used entries (after first
  // trying to compact) until the entry and the index fit the byte limit.
  // too_large when it cannot: the shard is too small, or the memory for
  // the index or the page tables could not be allocated (nothing changed).
  PutStatus put(const KeyRef& key, std::string_view value, uint32_t expires_at);
  // Copies the value out under the lock (at most ValueCopy::kCapacity
  // bytes); false when absent or expired.
  bool get(const KeyRef& key, ValueCopy& out);
  // The same, then calls on_value with the copy after unlocking, so
  // whatever the caller does with it (formatting a response) runs outside
  // the lock.
  bool get(const KeyRef& key, absl::FunctionRef<void(std::string_view)> on_value);
  bool erase(const KeyRef& key);
  // The key's expiry tick (0: none) into expires_at; false for a miss. Not
  // an access: no hit or miss counted, the LRU order kept.
  bool expiry(const KeyRef& key, uint32_t& expires_at);
  // Sets (expires_at != 0) or removes (0) the key's expiry, the value kept,
  // and makes it the most recently used. In place (four bytes and the
  // expiry index) when the entry keeps its layout; when the expiry comes or
  // goes, the key and value bytes shift, so it is a put of the same value
  // (a put's bound). too_large when that put cannot be stored (the entry
  // stays as it was).
  ExpireStatus expire(const KeyRef& key, uint32_t expires_at);
  // Removes every entry (flush_all): the slab, the index and the expiry
  // index are swapped for empty ones under the lock, O(Slab::kClassCount)
  // work whatever the shard holds, and the old ones are freed (munmap)
  // after it is released. The charged bytes drop at the swap and the
  // memory leaves the RSS when the call returns. A running snapshot walk
  // ends (nothing is left to copy). Returns the entries removed.
  size_t flush();
  // Removes the expired entries of up to max_pages slab pages, soonest
  // first: at most max_pages * (2 + ExpiryIndex::kRescansPerCall) *
  // Slab::kMaxChunksPerPage chunk visits under the lock. Returns whether
  // expired entries may remain (call again soon).
  bool sweep_expired(size_t max_pages);
  ShardStats stats() const;
  // For tests: loop steps taken under the lock so far (every loop in the
  // table of docs/architecture.md: chunks visited by sweeps and rescans,
  // expired pages looked at, entries evicted, chunks moved, allocation and
  // trim rounds, index slots moved), to show the work of one call is
  // bounded whatever the shard's size.
  uint64_t work_steps() const;

  // Bounds of the work one call does under the lock (docs/architecture.md
  // lists every loop). Reclaiming looks at the expired entries of at most
  // kReclaimExpiredPages pages before evicting live ones.
  static constexpr size_t kReclaimExpiredPages = 4;
  // LRU evictions in one reclaim: before it, no class has a page's worth of
  // free chunks (else it would compact first), and each eviction frees one
  // chunk, so some class has a page's worth after at most this many.
  // The loop stops there too (a reclaim that would need more fails).
  static constexpr size_t kMaxEvictionsPerReclaim = [] {
    size_t sum = 0;
    for (size_t c = 0; c < Slab::kClassCount; ++c) sum += Slab::chunks_per_page(c) - 1;
    return sum + 1;
  }();
  // Rounds of allocate_locked: a take that fails is followed by a mapped
  // page or a reclaim that leaves a free page or a free chunk of the class,
  // so the second take succeeds; the third round is never reached.
  static constexpr size_t kMaxAllocateRounds = 2;
  // All the loop steps of one reclaim: each expired page found (after at
  // most kRescansPerCall stale ones), swept, rescanned, and maybe a page
  // compacted after it; the evictions; one last compaction.
  static constexpr size_t kMaxReclaimSteps =
      kReclaimExpiredPages * (ExpiryIndex::kRescansPerCall + 3) * Slab::kMaxChunksPerPage + kMaxEvictionsPerReclaim +
      Slab::kMaxChunksPerPage;
  // Pages one call gives back to get within its limit, each after at most
  // one reclaim. An insert grows the index by at most one segment's table
  // (HandleIndex::kMaxSegmentSlots * 5 bytes, under a page), so a put
  // needs at most one; a batch's inserts may need more, which later calls
  // repay.
  static constexpr size_t kMaxTrimPages = 8;
  // Index segments a call may look at to shrink an index sized for entries
  // since evicted (each rebuilt with at most kMaxSegmentSlots slots).
  static constexpr size_t kShrinkSegments = 16;
  // The index work of one insert: its growth steps, each rehashing one
  // segment and writing its half of the directory, or doubling the
  // directory (at most 2^depth slots; depth grows by one each time the
  // keys double, see HandleIndex::kMaxDepth).
  static constexpr size_t kMaxInsertSlots = Index::kMaxGrowthsPerInsert * Index::kMaxSegmentSlots;
  // All the loop steps of one put (or get, erase), the directory's doubling
  // aside: allocation rounds and one reclaim, kMaxTrimPages more to get
  // within the limit, one insert, and a shrink's segments.
  static constexpr size_t kMaxPutSteps = kMaxAllocateRounds + kMaxTrimPages +
                                         (1 + kMaxTrimPages) * kMaxReclaimSteps + kMaxInsertSlots +
                                         kShrinkSegments * Index::kMaxSegmentSlots;

  // Snapshot walk over the LRU list, oldest to newest, a bounded batch per
  // call, which copies every entry present at copy_start() exactly once
  // unless it is removed first: each entry carries a mark, and the entries
  // whose mark differs from copy_mark_ are the walk's to copy (pending).
  // Starting a walk flips copy_mark_, so every entry becomes pending; the
  // walk marks what it copies, and entries created meanwhile are born
  // marked. A pending entry that is read or written moves to the newest
  // end, ahead of the cursor, where the walk still reaches it (with its
  // newer value); the walk ends when nothing is pending. The argument and
  // why it terminates: docs/architecture.md, "Snapshots". The position is
  // the shard's own, so there is one walk at a time.
  // Returns the entries the walk starts with.
  size_t copy_start();
  // Visits up to max_entries entries (the bounded work under the lock) and
  // calls out(key, value, expires_at) for the pending live ones. Returns
  // false once the walk is over. A walk abandoned before its end is closed
  // by the next one (marking without copying) before it starts its own.
  bool copy_batch(size_t max_entries,
                  absl::FunctionRef<void(std::string_view key, std::string_view value, uint32_t expires_at)> out);

  // Atomic batches across shards (Store::put_batch): the store locks every
  // shard a batch touches in ascending shard order, calls reserve_locked with
  // that shard's items (distinct keys), then commit_locked in every shard if
  // all reservations succeeded, else cancel_locked in those that did.
  void lock() { mutex_.lock(); }
  void unlock() { mutex_.unlock(); }
  bool try_lock() { return mutex_.try_lock(); }  // for tests
  // Makes room for every item: evicts and compacts as a put would, but never
  // an entry the batch overwrites, and changes no value. False (with its own
  // reservations already cancelled) when the shard cannot hold them all.
  bool reserve_locked(std::span<BatchPut> items);
  // Stores the reserved items; cannot fail.
  void commit_locked(std::span<BatchPut> items);
  // Returns the reserved chunks (and any memory over the limit); no stored
  // value has changed.
  void cancel_locked(std::span<BatchPut> items);

 private:

  // The *_locked functions expect mutex_ to be held.
  Entry& entry_locked(Handle handle) const { return Entry::at(slab_, handle); }
  // One step of a loop under the lock: counted (work_steps()), and in debug
  // builds checked against that loop's named bound.
  void count_step_locked(size_t& steps, size_t bound) {
    ++steps;
    ++work_steps_;
    assert(steps <= bound);
    (void)bound;
  }
  // Looks the key up; expired entries are removed (and counted). The live
  // entry becomes the newest. kNoHandle when there is none.
  Handle find_live_locked(const KeyRef& key);
  void link_newest_locked(Handle handle);
  bool copy_pending_locked(const Entry& entry) const { return copy_pending_ > 0 && entry.copy_mark() != copy_mark_; }
  void start_walk_locked();
  void unlink_locked(Handle handle);
  void remove_locked(Handle handle);
  // The same, given the entry's key with its hash (saves hashing it again).
  void remove_locked(Handle handle, const KeyRef& key);
  // A chunk of the size class: from a mapped page, a new page within the
  // limit, or reclaimed memory. kNoHandle when the shard cannot hold it.
  Handle allocate_locked(size_t size_class);
  // Makes room without mapping: compacts a sparse page if one can be
  // emptied, else removes the expired entries of up to
  // kReclaimExpiredPages pages (soonest first), else evicts LRU entries
  // (at most kMaxEvictionsPerReclaim), until a chunk of wanted_class (or,
  // for Slab::kClassCount, a whole page) is free. False when nothing is left.
  bool reclaim_locked(size_t wanted_class);
  // Whether a chunk of wanted_class (or, for Slab::kClassCount, a page) is
  // free.
  bool has_room_locked(size_t wanted_class) const;
  // Empties the sparsest page of size_class into the class's other pages
  // when its free chunks make a page (at most Slab::kMaxChunksPerPage
  // moves); false when they do not.
  bool compact_locked(size_t size_class);
  // After removing an entry of victim_class while reclaiming: has_room, else
  // compact_locked(victim_class) (which frees a page).
  bool room_after_removal_locked(size_t victim_class, size_t wanted_class) {
    return has_room_locked(wanted_class) || compact_locked(victim_class);
  }
  // Removes the expired entries of a page expiry_ says is due (its chunks
  // visited twice: the sweep and the rescan).
  void expire_page_locked(uint32_t page);
  // Finds the key's entry (dropping it if expired) and makes it the newest;
  // item.chunk becomes kNoHandle when that entry's chunk fits the new value,
  // else kNeedsChunk. Returns the entry or kNoHandle.
  Handle touch_locked(BatchPut& item);
  // Allocates the chunk a touched item needs, marked as reserved for
  // batch_[index]. False when the shard cannot hold it.
  bool reserve_chunk_locked(BatchPut& item, uint32_t index);
  void rewrite_locked(Handle handle, const BatchPut& item);
  // put() with the lock held and now_ms_ read.
  PutStatus put_locked(BatchPut& item);
  void commit_one_locked(const BatchPut& item);
  // Gives memory back until the shard is within its limit, never evicting
  // protected_ or anything newer, at most kMaxTrimPages pages a call.
  // False when nothing is left to give back and the shard is over.
  bool trim_locked();
  // Re-points the index and LRU neighbours (or a reservation) after the
  // slab moved a chunk.
  void moved_locked(Handle from, Handle to);
  uint64_t bytes_used_locked() const { return slab_.charged_bytes() + index_.charged_bytes(); }
  bool expired_locked(const Entry& entry) const { return is_expired(entry.expires_at(), now_ms_); }
  static size_t class_of(const BatchPut& item) {
    return Slab::class_for(Entry::size_for(item.key.key.size(), item.value.size(), item.expires_at != 0));
  }

  // BatchPut::chunk between touch_locked and reserve_chunk_locked: the item
  // needs a chunk of its own (never a valid handle).
  static constexpr Handle kNeedsChunk = kNoHandle - 1;

  const uint64_t byte_limit_;
  const Clock& clock_;
  mutable std::mutex mutex_;
  // Rest are protected by mutex_.
  Slab slab_;
  Index index_;
  Handle newest_ = kNoHandle;
  Handle oldest_ = kNoHandle;
  // Neither this entry nor any newer one is evicted or expired: the entries
  // a put or batch is completing.
  Handle protected_ = kNoHandle;
  // The snapshot walk (copy_batch). Every pending entry is at or ahead of
  // the cursor, so it is never kNoHandle while copy_pending_ > 0.
  Handle copy_cursor_ = kNoHandle;   // next entry the walk visits, toward newer
  uint64_t copy_pending_ = 0;        // entries whose mark differs from copy_mark_ (0: all equal)
  bool copy_mark_ = false;
  bool copy_closing_ = false;        // finishing an abandoned walk: marking, not copying
  uint64_t now_ms_ = 0;          // the clock, read once per operation
  std::span<BatchPut> batch_;    // items being reserved (their chunks may move)
  ExpiryIndex expiry_{slab_};
  uint64_t hits_ = 0, misses_ = 0, evictions_ = 0, expirations_ = 0;
  uint64_t work_steps_ = 0;       // chunks swept, evictions, moves (expiry_ counts its rescans)
};

}  // namespace kv

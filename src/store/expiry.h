// A shard's expiry index: which slab pages hold an expired entry, found
// without scanning the shard, updated in place (no records go stale, nothing
// needs compacting).
//
// The unit is the slab page (as Segcache's unit is its segment): for every
// page the index keeps a lower bound of its entries' expiry ticks and how
// many entries have exactly that tick, and an indexed min-heap orders the
// pages that hold TTL entries by that bound (each page knows its heap
// position). An entry only keeps its own 4-byte expiry (entry.h); a TTL
// costs it nothing more.
//
//   put / rewrite / remove / move of a TTL entry  ->  update(handle, before, after), O(1)
//     earlier than the page's bound: the new bound, count 1, sift up (log pages)
//     equal to it: count + 1; leaving it: count - 1 (at 0 the bound is stale:
//     still a lower bound, exact again after a rescan)
//   due_page(now): the heap's top if its bound has passed and is exact (so the
//     page holds an expired entry); a stale top is rescanned first (one page
//     of chunks, at most kRescansPerCall of them).
//
// Per page: 12 bytes here and 4 in the heap, about 0.1% of a 16 KiB page, not
// charged to the shard (like the slab's own page table). Guarded by the
// owning shard's lock.
#pragma once

#include "entry.h"
#include "slab.h"

#include <cstdint>

namespace kv {

class ExpiryIndex {
  struct PageExpiry;  // below

 public:
  explicit ExpiryIndex(const Slab& slab) : slab_(slab) {}
  // Room for pages numbered below `pages` (the shard calls it before the
  // slab maps a page, so update and rescan never allocate). Grows by
  // doubling; false when the allocation fails (nothing changes then).
  bool reserve_pages(size_t pages);
  ExpiryIndex(const ExpiryIndex&) = delete;
  ExpiryIndex& operator=(const ExpiryIndex&) = delete;

  // The entry in chunk `handle` went from expiry tick `before` to `after`
  // (0 = none): put or moved here (before 0), rewritten, or removed (after
  // 0). Call it once the chunk holds its new state (freed when removed), so
  // a rescan sees what is there now.
  void update(Handle handle, uint32_t before, uint32_t after);
  // A page holding an entry expired at now_ms (the soonest), or
  // Slab::kNoPage: none, or kRescansPerCall stale pages were rescanned
  // first (then may_be_due still says so; call again).
  static constexpr size_t kRescansPerCall = 4;
  uint32_t due_page(uint64_t now_ms);
  // Whether a page's bound has passed: due_page may find an expired entry.
  bool may_be_due(uint64_t now_ms) const;
  // Recomputes a page's bound from its chunks: at most
  // Slab::kMaxChunksPerPage visits. Also drops a page the slab freed.
  void rescan(uint32_t page);

  // Forgets every page (their slab was emptied at once: Slab::detach),
  // handing its tables to `into` (empty, of the slab's calls), which frees
  // them when destroyed.
  struct Tables {
    explicit Tables(const MemoryCalls& calls) : pages(calls), heap(calls) {}
    PageTable<PageExpiry> pages;
    PageTable<uint32_t> heap;
  };
  void clear(Tables& into) {
    pages_.swap(into.pages);
    heap_.swap(into.heap);
  }

  // For tests: the chunk visits made by rescans so far.
  uint64_t chunks_visited() const { return chunks_visited_; }

 private:
  static constexpr uint32_t kNotQueued = UINT32_MAX;
  struct PageExpiry {
    uint32_t earliest = 0;      // <= every expiry tick of its entries; 0: none has a TTL
    uint32_t at_earliest = 0;   // entries with that tick; 0: stale (rescan to know)
    uint32_t heap_position = kNotQueued;
  };

  PageExpiry& page_state(uint32_t page);
  // Sets a page's earliest tick and re-positions it in the heap.
  void set_earliest(uint32_t page, uint32_t earliest, uint32_t count);
  bool before(uint32_t a, uint32_t b) const { return pages_[a].earliest < pages_[b].earliest; }
  void place(uint32_t position, uint32_t page);
  void sift_up(uint32_t position);
  void sift_down(uint32_t position);

  const Slab& slab_;
  PageTable<PageExpiry> pages_{slab_.calls()};  // by page number
  PageTable<uint32_t> heap_{slab_.calls()};     // page numbers, min-heap on earliest
  uint64_t chunks_visited_ = 0;
};

}  // namespace kv

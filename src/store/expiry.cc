#include "expiry.h"

#include "clock.h"

#include <algorithm>

namespace kv {

bool ExpiryIndex::reserve_pages(size_t pages) {
  if (pages <= pages_.capacity()) return true;
  size_t count = std::max({pages, 2 * pages_.capacity(), size_t{64}});
  return pages_.reserve(count) && heap_.reserve(count);
}

ExpiryIndex::PageExpiry& ExpiryIndex::page_state(uint32_t page) {
  // Within the room reserve_pages made before the slab mapped the page.
  if (page >= pages_.size()) pages_.resize(page + 1);
  return pages_[page];
}

void ExpiryIndex::update(Handle handle, uint32_t before, uint32_t after) {
  if (before == after) return;
  uint32_t page = Slab::page_of(handle);
  PageExpiry& state = page_state(page);
  // The last entry at the bound leaving makes the bound stale, not wrong: it
  // is still below every entry's tick, and due_page rescans the page if it
  // ever reaches the heap's top, due.
  if (before != 0 && before == state.earliest && state.at_earliest > 0) --state.at_earliest;
  if (after == 0) return;
  if (state.earliest == 0 || after < state.earliest) {
    set_earliest(page, after, 1);
  } else if (after == state.earliest) {
    ++state.at_earliest;
  }
}

bool ExpiryIndex::may_be_due(uint64_t now_ms) const {
  return !heap_.empty() && is_expired(pages_[heap_.front()].earliest, now_ms);
}

uint32_t ExpiryIndex::due_page(uint64_t now_ms) {
  for (size_t rescans = 0; may_be_due(now_ms); ++rescans) {
    uint32_t page = heap_.front();
    // An exact bound is an entry's tick: that entry has expired.
    if (pages_[page].at_earliest > 0) return page;
    if (rescans == kRescansPerCall) break;
    rescan(page);
  }
  return Slab::kNoPage;
}

void ExpiryIndex::rescan(uint32_t page) {
  uint32_t earliest = 0, count = 0;
  slab_.for_each_in_use(page, [&](Handle handle) {
    ++chunks_visited_;
    const Entry& entry = Entry::at(slab_, handle);
    uint32_t tick = entry.is_batch_chunk() ? 0 : entry.expires_at();
    if (tick == 0) return;
    if (earliest == 0 || tick < earliest) {
      earliest = tick;
      count = 1;
    } else if (tick == earliest) {
      ++count;
    }
  });
  page_state(page);
  set_earliest(page, earliest, count);
}

void ExpiryIndex::set_earliest(uint32_t page, uint32_t earliest, uint32_t count) {
  PageExpiry& state = pages_[page];
  uint32_t previous = state.earliest;
  state.earliest = earliest;
  state.at_earliest = count;
  uint32_t position = state.heap_position;
  if (earliest == 0) {
    if (position == kNotQueued) return;
    // Out of the heap: the last page takes its place.
    state.heap_position = kNotQueued;
    uint32_t last = heap_.back();
    heap_.pop_back();
    if (last == page) return;
    place(position, last);
    sift_up(position);
    sift_down(pages_[last].heap_position);
  } else if (position == kNotQueued) {
    heap_.push_back(page);
    place(static_cast<uint32_t>(heap_.size() - 1), page);
    sift_up(state.heap_position);
  } else if (earliest < previous) {
    sift_up(position);
  } else {
    sift_down(position);
  }
}

void ExpiryIndex::place(uint32_t position, uint32_t page) {
  heap_[position] = page;
  pages_[page].heap_position = position;
}

void ExpiryIndex::sift_up(uint32_t position) {
  uint32_t page = heap_[position];
  while (position > 0) {
    uint32_t parent = (position - 1) / 2;
    if (!before(page, heap_[parent])) break;
    place(position, heap_[parent]);
    position = parent;
  }
  place(position, page);
}

void ExpiryIndex::sift_down(uint32_t position) {
  uint32_t page = heap_[position];
  const uint32_t size = static_cast<uint32_t>(heap_.size());
  for (;;) {
    uint32_t child = 2 * position + 1;
    if (child >= size) break;
    if (child + 1 < size && before(heap_[child + 1], heap_[child])) ++child;
    if (!before(heap_[child], page)) break;
    place(position, heap_[child]);
    position = child;
  }
  place(position, page);
}

}  // namespace kv

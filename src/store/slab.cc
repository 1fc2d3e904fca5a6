#include "slab.h"

#include "log.h"

#include <sys/mman.h>

#include <algorithm>
#include <bitset>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <utility>

namespace kv {

const MemoryCalls& system_memory_calls() {
  static const MemoryCalls calls{
      [](size_t bytes) {
        void* at = mmap(nullptr, bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        // 16 KiB pages are handed back one by one: a transparent huge page
        // behind them would keep 2 MiB resident for one live page.
        if (at != MAP_FAILED && madvise(at, bytes, MADV_NOHUGEPAGE) != 0 && errno != EINVAL) {
          log(LogLevel::warn, "madvise(MADV_NOHUGEPAGE): {}", std::strerror(errno));
        }
        return at;
      },
      [](void* at, size_t bytes) { return mprotect(at, bytes, PROT_READ | PROT_WRITE); },
      [](void* at, size_t bytes) { return madvise(at, bytes, MADV_DONTNEED); },
      [](void* at, size_t bytes) { return munmap(at, bytes); },
      [](size_t bytes) { return std::aligned_alloc(16, (bytes + 15) / 16 * 16); },
      [](void* at) { std::free(at); },
  };
  return calls;
}

Slab::Slab(size_t max_pages, const MemoryCalls& calls)
    : calls_(calls), max_pages_(std::min(max_pages, kMaxPages)) {
  for (uint32_t& head : partial_) head = kNoPage;
}

Slab::~Slab() {
  if (base_ != nullptr && calls_.unreserve(base_, max_pages_ * kPageSize) != 0) {
    log(LogLevel::warn, "munmap of a slab: {}", std::strerror(errno));
  }
}

Slab::Detached::~Detached() {
  if (base_ != nullptr && calls_.unreserve(base_, bytes_) != 0) {
    log(LogLevel::warn, "munmap of a flushed slab: {}", std::strerror(errno));
  }
}

void Slab::detach(Detached& into) {
  assert(&into.calls_ == &calls_ && into.base_ == nullptr && into.pages_.capacity() == 0);
  into.base_ = std::exchange(base_, nullptr);
  into.bytes_ = max_pages_ * kPageSize;
  into.pages_.swap(pages_);
  into.free_pages_.swap(free_pages_);
  into.given_back_.swap(given_back_);
  usable_pages_ = 0;
  charged_pages_ = 0;
  for (uint32_t& head : partial_) head = kNoPage;
  for (size_t& count : free_chunks_) count = 0;
}

uint16_t& Slab::next_free(uint32_t number, uint16_t chunk) const {
  return *reinterpret_cast<uint16_t*>(page_memory(number) + chunk * chunk_size(pages_[number].size_class));
}

bool Slab::map_page() {
  if (!given_back_.empty()) {
    // Its memory comes back zero-filled on first touch, with no system call.
    free_pages_.push_back(given_back_.back());
    given_back_.pop_back();
    ++charged_pages_;
    return true;
  }
  if (pages_.size() == max_pages_) return false;
  if (pages_.size() == pages_.capacity()) {
    size_t count = std::min(std::max<size_t>(2 * pages_.capacity(), 64), max_pages_);
    if (!pages_.reserve(count) || !free_pages_.reserve(count) || !given_back_.reserve(count)) return false;
  }
  if (base_ == nullptr) {
    void* at = calls_.reserve(max_pages_ * kPageSize);
    if (at == MAP_FAILED) return false;
    base_ = static_cast<char*>(at);
  }
  if (pages_.size() == usable_pages_) {
    size_t arena = std::min(kArenaPages, max_pages_ - usable_pages_);
    if (calls_.make_usable(page_memory(static_cast<uint32_t>(usable_pages_)), arena * kPageSize) != 0) return false;
    usable_pages_ += arena;
  }
  free_pages_.push_back(static_cast<uint32_t>(pages_.size()));
  pages_.push_back(Page{});
  ++charged_pages_;
  return true;
}

bool Slab::give_back_free_page() {
  if (free_pages_.empty()) return false;
  uint32_t number = free_pages_.back();
  if (calls_.give_back(page_memory(number), kPageSize) != 0) return false;
  free_pages_.pop_back();
  given_back_.push_back(number);
  --charged_pages_;
  return true;
}

void Slab::link_partial(uint32_t number) {
  Page& page = pages_[number];
  uint32_t& head = partial_[page.size_class];
  page.prev = kNoPage;
  page.next = head;
  if (head != kNoPage) pages_[head].prev = number;
  head = number;
}

void Slab::unlink_partial(uint32_t number) {
  Page& page = pages_[number];
  (page.prev != kNoPage ? pages_[page.prev].next : partial_[page.size_class]) = page.next;
  if (page.next != kNoPage) pages_[page.next].prev = page.prev;
  page.prev = page.next = kNoPage;
}

void Slab::push_free(uint32_t number, uint16_t chunk) {
  Page& page = pages_[number];
  next_free(number, chunk) = page.free_head;
  std::memcpy(page_memory(number) + chunk * chunk_size(page.size_class) + 4, &kFreeMark, sizeof kFreeMark);
  page.free_head = chunk;
}

void Slab::for_each_in_use(uint32_t number, absl::FunctionRef<void(Handle)> visit) const {
  size_t size_class = page_class(number);
  if (size_class == kClassCount) return;
  size_t size = chunk_size(size_class);
  // A release by visit may empty the page (its class is then gone).
  for (size_t chunk = 0; chunk < pages_[number].untouched && pages_[number].size_class == size_class; ++chunk) {
    Handle handle = make_handle(number, chunk * size);
    uint32_t mark;
    std::memcpy(&mark, at(handle) + 4, sizeof mark);
    if (mark != kFreeMark) visit(handle);
  }
}

void Slab::assign(uint32_t number, size_t size_class) {
  Page& page = pages_[number];
  page.size_class = static_cast<uint16_t>(size_class);
  uint16_t count = static_cast<uint16_t>(chunks_per_page(size_class));
  // Chunks are handed out from `untouched` on, so assigning a page writes
  // none of them (and leaves its memory untouched until used).
  page.free_head = kNoChunk;
  page.untouched = 0;
  page.free_count = count;
  free_chunks_[size_class] += count;
  link_partial(number);
}

Handle Slab::take_from(uint32_t number) {
  Page& page = pages_[number];
  uint16_t chunk = page.free_head;
  if (chunk != kNoChunk) {
    page.free_head = next_free(number, chunk);
  } else {
    chunk = page.untouched++;
  }
  --free_chunks_[page.size_class];
  if (--page.free_count == 0) unlink_partial(number);
  return make_handle(number, chunk * chunk_size(page.size_class));
}

Handle Slab::take(size_t size_class) {
  if (partial_[size_class] == kNoPage) {
    if (free_pages_.empty()) return kNoHandle;
    uint32_t number = free_pages_.back();
    free_pages_.pop_back();
    assign(number, size_class);
  }
  return take_from(partial_[size_class]);
}

void Slab::release(Handle handle) {
  uint32_t number = handle >> kPageShift;
  Page& page = pages_[number];
  uint16_t chunk = static_cast<uint16_t>((size_t{handle & kOffsetMask} << 3) / chunk_size(page.size_class));
  push_free(number, chunk);
  ++free_chunks_[page.size_class];
  if (page.free_count++ == 0) link_partial(number);
  size_t count = chunks_per_page(page.size_class);
  if (page.free_count == count) {
    // Empty: keep one page for the next allocation of any class, give the
    // rest back (if madvise fails, the page just stays free and charged).
    unlink_partial(number);
    free_chunks_[page.size_class] -= count;
    unassign(number);
    if (free_pages_.size() > 1) give_back_free_page();
  }
}

void Slab::unassign(uint32_t number) {
  Page& page = pages_[number];
  page.size_class = kUnassigned;
  page.free_head = kNoChunk;
  page.free_count = 0;
  page.untouched = 0;
  free_pages_.push_back(number);
}

size_t Slab::evacuable_class() const {
  for (size_t c = 0; c < kClassCount; ++c) {
    if (can_evacuate(c)) return c;
  }
  return kClassCount;
}

uint32_t Slab::sparsest_page(size_t size_class) const {
  uint32_t best = kNoPage;
  size_t scanned = 0;
  for (uint32_t number = partial_[size_class]; number != kNoPage && scanned++ < kSparsestScan;
       number = pages_[number].next) {
    if (best == kNoPage || pages_[number].free_count > pages_[best].free_count) best = number;
  }
  return best;
}

void Slab::evacuate(uint32_t number, absl::FunctionRef<void(Handle from, Handle to)> moved) {
  Page& page = pages_[number];
  size_t size_class = page.size_class;
  size_t size = chunk_size(size_class);
  std::bitset<kPageSize / kGranularity> is_free;
  for (uint16_t chunk = page.free_head; chunk != kNoChunk; chunk = next_free(number, chunk)) is_free.set(chunk);
  uint16_t untouched = page.untouched;
  // Keep new chunks out of this page while it is emptied.
  unlink_partial(number);
  free_chunks_[size_class] -= page.free_count;
  for (uint16_t chunk = 0; chunk < untouched; ++chunk) {
    if (is_free.test(chunk)) continue;
    Handle to = take_from(partial_[size_class]);
    Handle from = make_handle(number, chunk * size);
    std::memcpy(at(to), at(from), size);
    moved(from, to);
  }
  unassign(number);
}

}  // namespace kv

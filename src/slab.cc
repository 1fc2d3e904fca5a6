#include "slab.h"

#include <sys/mman.h>

#include <bitset>
#include <cstring>

namespace kv {

Slab::Slab() {
  for (uint32_t& head : partial_) head = kNoPage;
}

Slab::~Slab() {
  for (Page& page : pages_) {
    if (page.memory != nullptr) munmap(page.memory, kPageSize);
  }
}

uint16_t& Slab::next_free(const Page& page, uint16_t chunk) const {
  return *reinterpret_cast<uint16_t*>(page.memory + chunk * chunk_size(page.size_class));
}

bool Slab::map_page() {
  // Page numbers have 21 bits in a handle (32 GiB of pages per shard).
  if (unmapped_slots_.empty() && pages_.size() >= (size_t{1} << (32 - kPageShift)) - 1) return false;
  void* memory = mmap(nullptr, kPageSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (memory == MAP_FAILED) return false;
  uint32_t number;
  if (!unmapped_slots_.empty()) {
    number = unmapped_slots_.back();
    unmapped_slots_.pop_back();
  } else {
    number = static_cast<uint32_t>(pages_.size());
    pages_.emplace_back();
  }
  pages_[number] = Page{};
  pages_[number].memory = static_cast<char*>(memory);
  free_pages_.push_back(number);
  ++mapped_pages_;
  return true;
}

bool Slab::unmap_free_page() {
  if (free_pages_.empty()) return false;
  uint32_t number = free_pages_.back();
  free_pages_.pop_back();
  munmap(pages_[number].memory, kPageSize);
  pages_[number] = Page{};
  unmapped_slots_.push_back(number);
  --mapped_pages_;
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

void Slab::push_free(Page& page, uint16_t chunk) {
  next_free(page, chunk) = page.free_head;
  std::memcpy(page.memory + chunk * chunk_size(page.size_class) + 4, &kFreeMark, sizeof kFreeMark);
  page.free_head = chunk;
}

bool Slab::in_use(Handle handle) const {
  uint32_t number = handle >> kPageShift;
  if (number >= pages_.size() || pages_[number].size_class == kUnassigned) return false;
  const Page& page = pages_[number];
  size_t offset = size_t{handle & kOffsetMask} << 3;
  size_t size = chunk_size(page.size_class);
  if (offset % size != 0 || offset / size >= chunks_per_page(page.size_class)) return false;
  uint32_t mark;
  std::memcpy(&mark, page.memory + offset + 4, sizeof mark);
  return mark != kFreeMark;
}

void Slab::assign(uint32_t number, size_t size_class) {
  Page& page = pages_[number];
  page.size_class = static_cast<uint16_t>(size_class);
  uint16_t count = static_cast<uint16_t>(chunks_per_page(size_class));
  page.free_head = kNoChunk;
  for (uint16_t chunk = count; chunk-- > 0;) push_free(page, chunk);
  page.free_count = count;
  free_chunks_[size_class] += count;
  link_partial(number);
}

Handle Slab::take_from(uint32_t number) {
  Page& page = pages_[number];
  uint16_t chunk = page.free_head;
  page.free_head = next_free(page, chunk);
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
  push_free(page, chunk);
  ++free_chunks_[page.size_class];
  if (page.free_count++ == 0) link_partial(number);
  size_t count = chunks_per_page(page.size_class);
  if (page.free_count == count) {
    // Empty: keep one page for the next allocation of any class, return the rest.
    unlink_partial(number);
    free_chunks_[page.size_class] -= count;
    page.size_class = kUnassigned;
    page.free_head = kNoChunk;
    page.free_count = 0;
    free_pages_.push_back(number);
    if (free_pages_.size() > 1) unmap_free_page();
  }
}

size_t Slab::evacuable_class() const {
  for (size_t c = 0; c < kClassCount; ++c) {
    if (can_evacuate(c)) return c;
  }
  return kClassCount;
}

uint32_t Slab::sparsest_page(size_t size_class) const {
  uint32_t best = kNoPage;
  for (uint32_t number = partial_[size_class]; number != kNoPage; number = pages_[number].next) {
    if (best == kNoPage || pages_[number].free_count > pages_[best].free_count) best = number;
  }
  return best;
}

void Slab::evacuate(uint32_t number, absl::FunctionRef<void(Handle from, Handle to)> moved) {
  Page& page = pages_[number];
  size_t size_class = page.size_class;
  size_t size = chunk_size(size_class);
  size_t count = chunks_per_page(size_class);
  std::bitset<kPageSize / kGranularity> is_free;
  for (uint16_t chunk = page.free_head; chunk != kNoChunk; chunk = next_free(page, chunk)) is_free.set(chunk);
  // Keep new chunks out of this page while it is emptied.
  unlink_partial(number);
  free_chunks_[size_class] -= page.free_count;
  for (uint16_t chunk = 0; chunk < count; ++chunk) {
    if (is_free.test(chunk)) continue;
    Handle to = take_from(partial_[size_class]);
    Handle from = make_handle(number, chunk * size);
    std::memcpy(at(to), page.memory + chunk * size, size);
    moved(from, to);
  }
  page.size_class = kUnassigned;
  page.free_head = kNoChunk;
  page.free_count = 0;
  free_pages_.push_back(number);
}

}  // namespace kv

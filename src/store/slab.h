// Per-shard memory for entries: 16 KiB pages carved into chunks of one size
// class each (sizes in steps of 8 bytes), addressed by 32-bit handles.
//
//   handle = page number << 11 | (offset in page / 8)   so   at(handle) = base + handle * 8
//
// A slab reserves its whole address space once (PROT_NONE, no memory behind
// it) and makes it usable in arenas of kArenaPages pages as it grows, so a
// shard is at most two mappings whatever the workload. A page that falls
// empty is handed back with madvise(MADV_DONTNEED): its memory leaves the
// RSS, the mapping stays, and the page is reused before the slab grows.
//
// Small pages keep the memory a shard needs before every class has a page
// small (66 classes x 16 KiB), so small limits work too; 8-byte steps waste
// under 8 bytes per entry.
//
// Why not malloc: a handle is half a pointer (the index and LRU links store
// handles), chunks carry no allocator header, and every byte the shard is
// charged is a page it holds, so the shard's accounting is its memory.
// Pages move between size classes: an empty page returns to a free pool, and
// evacuate() empties a sparse page by moving its chunks into free chunks of
// the same class elsewhere (the owner re-points its references).
#pragma once

#include <absl/functional/function_ref.h>

#include <cassert>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace kv {

using Handle = uint32_t;
constexpr Handle kNoHandle = UINT32_MAX;

// The memory calls a shard makes under its lock, replaceable so tests can
// make them fail. The first four return what the system call does (mmap:
// MAP_FAILED on error); allocate returns nullptr on failure (never throws),
// 16-byte aligned, and is how the index's tables and the page tables grow.
struct MemoryCalls {
  void* (*reserve)(size_t bytes);             // mmap, PROT_NONE
  int (*make_usable)(void* at, size_t bytes);  // mprotect to read + write
  int (*give_back)(void* at, size_t bytes);    // madvise MADV_DONTNEED
  int (*unreserve)(void* at, size_t bytes);    // munmap
  void* (*allocate)(size_t bytes);            // aligned_alloc(16, ...)
  void (*deallocate)(void* at);               // free
};
const MemoryCalls& system_memory_calls();

// An array of trivially copyable T that grows only through reserve(), which
// allocates through MemoryCalls and reports failure: the page tables a
// shard grows under its lock, so no growth there can throw. push_back and
// resize stay within the reserved capacity.
template <class T>
class PageTable {
 public:
  explicit PageTable(const MemoryCalls& calls) : calls_(calls) {}
  ~PageTable() { calls_.deallocate(data_); }
  PageTable(const PageTable&) = delete;
  PageTable& operator=(const PageTable&) = delete;

  // Room for `count` elements; false (nothing changed) when the allocation fails.
  bool reserve(size_t count) {
    if (count <= capacity_) return true;
    T* grown = static_cast<T*>(calls_.allocate(count * sizeof(T)));
    if (grown == nullptr) return false;
    if (size_ > 0) std::memcpy(static_cast<void*>(grown), data_, size_ * sizeof(T));
    calls_.deallocate(data_);
    data_ = grown;
    capacity_ = count;
    return true;
  }
  size_t size() const { return size_; }
  size_t capacity() const { return capacity_; }
  bool empty() const { return size_ == 0; }
  T& operator[](size_t i) { return data_[i]; }
  const T& operator[](size_t i) const { return data_[i]; }
  T& front() { return data_[0]; }
  const T& front() const { return data_[0]; }
  T& back() { return data_[size_ - 1]; }
  void push_back(const T& value) {
    assert(size_ < capacity_);
    data_[size_++] = value;
  }
  void pop_back() { --size_; }
  // Exchanges the contents of two tables of the same MemoryCalls. O(1).
  void swap(PageTable& other) noexcept {
    assert(&calls_ == &other.calls_);
    std::swap(data_, other.data_);
    std::swap(size_, other.size_);
    std::swap(capacity_, other.capacity_);
  }
  // New elements are value-initialised (T{}).
  void resize(size_t count) {
    assert(count <= capacity_);
    for (size_t i = size_; i < count; ++i) data_[i] = T{};
    size_ = count;
  }

 private:
  const MemoryCalls& calls_;
  T* data_ = nullptr;
  size_t size_ = 0;
  size_t capacity_ = 0;
};

class Slab {
  struct Page;  // below, with the rest of the page table

 public:
  static constexpr size_t kPageSize = 16 * 1024;
  static constexpr size_t kArenaPages = 128;  // 2 MiB made usable at a time
  static constexpr size_t kGranularity = 8;
  static constexpr size_t kMaxChunk = 528;
  static constexpr size_t kClassCount = kMaxChunk / kGranularity;
  static constexpr uint32_t kNoPage = UINT32_MAX;
  // Page numbers have 21 bits in a handle; the last one would make
  // kNoHandle a valid handle.
  static constexpr size_t kMaxPages = (size_t{1} << 21) - 1;

  // Room for max_pages pages (at most kMaxPages), reserved at the first map_page().
  explicit Slab(size_t max_pages, const MemoryCalls& calls = system_memory_calls());
  ~Slab();
  Slab(const Slab&) = delete;
  Slab& operator=(const Slab&) = delete;

  // The class whose chunks hold `bytes` (1..kMaxChunk).
  static constexpr size_t class_for(size_t bytes) { return (bytes + kGranularity - 1) / kGranularity - 1; }
  static constexpr size_t chunk_size(size_t size_class) { return (size_class + 1) * kGranularity; }
  static constexpr size_t chunks_per_page(size_t size_class) { return kPageSize / chunk_size(size_class); }

  char* at(Handle handle) const { return base_ + (size_t{handle} << 3); }
  static uint32_t page_of(Handle handle) { return handle >> kPageShift; }
  // The most chunks a page holds (of the smallest class): the bound of every
  // walk over one page.
  static constexpr size_t kMaxChunksPerPage = kPageSize / kGranularity;
  // The page's size class, kClassCount when it holds no chunks.
  size_t page_class(uint32_t page) const {
    return page < pages_.size() && pages_[page].size_class != kUnassigned ? pages_[page].size_class : kClassCount;
  }
  // Calls visit for each chunk of the page that is in use, in address order.
  // visit may release the chunk it is given (the walk stops if the page
  // falls empty), but must not take chunks.
  void for_each_in_use(uint32_t page, absl::FunctionRef<void(Handle)> visit) const;

  // A free chunk of the class from its partly used pages, else from a free
  // page; kNoHandle when neither exists (map or reclaim a page, then retry).
  Handle take(size_t size_class);
  // A user of a chunk must overwrite its bytes 4..7, where a free chunk
  // holds kFreeMark (for_each_in_use tells used chunks by it).
  static constexpr uint32_t kFreeMark = UINT32_MAX - 1;
  // Returns a chunk. A page left empty becomes the free page, or is given
  // back when there already is one, so deleted data gives memory back.
  void release(Handle handle);

  // Adds a free page: a given-back one, else the next untouched one, making
  // another arena usable if needed (and growing the page tables ahead, a
  // doubling at a time). False when the reservation is full, a system call
  // or the page tables' growth fails (nothing changes then).
  bool map_page();
  // Pages touched so far: page numbers are below this; map_page may add one.
  size_t page_count() const { return pages_.size(); }
  const MemoryCalls& calls() const { return calls_; }
  // Gives a free page's memory back. False when no page is free or madvise
  // fails (the page then stays free and charged).
  bool give_back_free_page();
  bool has_free_page() const { return !free_pages_.empty(); }
  // Pages that hold memory: in use or free, not given back.
  size_t charged_pages() const { return charged_pages_; }
  size_t charged_bytes() const { return charged_pages_ * kPageSize; }

  bool has_free_chunk(size_t size_class) const { return partial_[size_class] != kNoPage; }
  // Whether the class's free chunks add up to a page: then its sparsest page
  // can be emptied into the others.
  bool can_evacuate(size_t size_class) const { return free_chunks_[size_class] >= chunks_per_page(size_class); }
  // The page with the most free chunks among the first kSparsestScan pages
  // of the class's list of pages with free chunks (bounded work; any page
  // of an evacuable class can be emptied).
  static constexpr size_t kSparsestScan = 16;
  uint32_t sparsest_page(size_t size_class) const;
  // A class that can_evacuate(), or kClassCount.
  size_t evacuable_class() const;
  // Moves every used chunk out of `page` into other pages of its class,
  // calling moved(from, to) after each copy, then frees the page.
  void evacuate(uint32_t page, absl::FunctionRef<void(Handle from, Handle to)> moved);

  // Every page of a slab taken out at once (Shard::flush): the reservation
  // and the page tables, unmapped when this is destroyed, so the owner frees
  // the memory after it lets go of its lock.
  class Detached {
   public:
    explicit Detached(const MemoryCalls& calls) : calls_(calls) {}
    Detached(const Detached&) = delete;
    Detached& operator=(const Detached&) = delete;
    ~Detached();

   private:
    friend class Slab;
    const MemoryCalls& calls_;
    char* base_ = nullptr;
    size_t bytes_ = 0;
    PageTable<Page> pages_{calls_};
    PageTable<uint32_t> free_pages_{calls_};
    PageTable<uint32_t> given_back_{calls_};
  };
  // Empties the slab into `into` (made with calls(), holding nothing) in
  // O(kClassCount), whatever it holds: every handle is invalid after it;
  // the slab is as new (charged nothing; it reserves its address space and
  // page tables again at the next map_page()).
  void detach(Detached& into);

 private:
  static constexpr unsigned kPageShift = 11;  // kPageSize / 8 offsets
  static constexpr Handle kOffsetMask = (Handle{1} << kPageShift) - 1;
  static constexpr uint16_t kNoChunk = UINT16_MAX;
  static Handle make_handle(uint32_t page, size_t offset) { return page << kPageShift | static_cast<Handle>(offset >> 3); }
  static constexpr uint16_t kUnassigned = UINT16_MAX;

  struct Page {
    uint16_t size_class = kUnassigned;
    uint16_t free_count = 0;
    uint16_t free_head = kNoChunk;  // chunk index; released chunks link through their first 2 bytes
    uint16_t untouched = 0;         // chunks from here on were never taken (free, in no list)
    uint32_t prev = kNoPage;        // in its class's list of pages with free chunks
    uint32_t next = kNoPage;
  };

  char* page_memory(uint32_t number) const { return base_ + size_t{number} * kPageSize; }
  void assign(uint32_t page, size_t size_class);
  void unassign(uint32_t page);
  void link_partial(uint32_t page);
  void unlink_partial(uint32_t page);
  Handle take_from(uint32_t page);
  uint16_t& next_free(uint32_t page, uint16_t chunk) const;
  // Links the chunk in front of the page's free list, marked free.
  void push_free(uint32_t page, uint16_t chunk);

  const MemoryCalls& calls_;
  const size_t max_pages_;
  char* base_ = nullptr;          // the reservation, max_pages_ pages
  size_t usable_pages_ = 0;       // readable and writable: whole arenas from base_
  // Each holds at most one element a page: all three are reserved together.
  PageTable<Page> pages_{calls_};           // every page touched so far
  PageTable<uint32_t> free_pages_{calls_};  // charged, no class
  PageTable<uint32_t> given_back_{calls_};  // memory handed back, not charged, reused first
  uint32_t partial_[kClassCount];      // head of each class's pages-with-free-chunks list
  size_t free_chunks_[kClassCount] = {};  // free chunks in each class's pages
  size_t charged_pages_ = 0;
};

}  // namespace kv

// Per-shard memory for entries: 16 KiB pages carved into chunks of one size
// class each (sizes in steps of 16 bytes), addressed by 32-bit handles.
//
//   handle = page number << 11 | (offset in page / 8)
//
// Small pages and few classes keep the memory a shard needs before every
// class has a page small (33 classes x 16 KiB), so small limits work too.
//
// Why not malloc: a handle is half a pointer (the index and LRU links store
// handles), chunks carry no allocator header, and every byte the shard holds
// is a page it mapped, so the shard's accounting is exactly its memory.
// Pages move between size classes: an empty page returns to a free pool, and
// evacuate() empties a sparse page by moving its chunks into free chunks of
// the same class elsewhere (the owner re-points its references).
#pragma once

#include <absl/functional/function_ref.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace kv {

using Handle = uint32_t;
constexpr Handle kNoHandle = UINT32_MAX;

class Slab {
 public:
  static constexpr size_t kPageSize = 16 * 1024;
  static constexpr size_t kGranularity = 16;
  static constexpr size_t kMaxChunk = 528;
  static constexpr size_t kClassCount = kMaxChunk / kGranularity;
  static constexpr uint32_t kNoPage = UINT32_MAX;

  Slab();
  ~Slab();
  Slab(const Slab&) = delete;
  Slab& operator=(const Slab&) = delete;

  // The class whose chunks hold `bytes` (1..kMaxChunk).
  static size_t class_for(size_t bytes) { return (bytes + kGranularity - 1) / kGranularity - 1; }
  static size_t chunk_size(size_t size_class) { return (size_class + 1) * kGranularity; }
  static size_t chunks_per_page(size_t size_class) { return kPageSize / chunk_size(size_class); }

  char* at(Handle handle) const { return pages_[handle >> kPageShift].memory + (size_t{handle & kOffsetMask} << 3); }

  // A free chunk of the class from its partly used pages, else from a free
  // page; kNoHandle when neither exists (map or reclaim a page, then retry).
  Handle take(size_t size_class);
  // Whether the handle is the start of a chunk that take() handed out and
  // release() has not taken back (for records that may be stale). A user of
  // a chunk must overwrite its bytes 4..7, where a free chunk holds kFreeMark.
  bool in_use(Handle handle) const;
  static constexpr uint32_t kFreeMark = UINT32_MAX - 1;
  // Returns a chunk. A page left empty becomes the free page, or is unmapped
  // when there already is one, so deleted data gives memory back.
  void release(Handle handle);

  bool map_page();            // adds a free page; false when mmap fails
  bool unmap_free_page();     // false when no page is free
  bool has_free_page() const { return !free_pages_.empty(); }
  size_t mapped_bytes() const { return mapped_pages_ * kPageSize; }

  bool has_free_chunk(size_t size_class) const { return partial_[size_class] != kNoPage; }
  // Whether the class's free chunks add up to a page: then its sparsest page
  // can be emptied into the others.
  bool can_evacuate(size_t size_class) const { return free_chunks_[size_class] >= chunks_per_page(size_class); }
  // The page with the most free chunks of the class.
  uint32_t sparsest_page(size_t size_class) const;
  // A class that can_evacuate(), or kClassCount.
  size_t evacuable_class() const;
  // Moves every used chunk out of `page` into other pages of its class,
  // calling moved(from, to) after each copy, then frees the page.
  void evacuate(uint32_t page, absl::FunctionRef<void(Handle from, Handle to)> moved);

 private:
  static constexpr unsigned kPageShift = 11;  // kPageSize / 8 offsets
  static constexpr Handle kOffsetMask = (Handle{1} << kPageShift) - 1;
  static constexpr uint16_t kNoChunk = UINT16_MAX;
  static Handle make_handle(uint32_t page, size_t offset) { return page << kPageShift | static_cast<Handle>(offset >> 3); }
  static constexpr uint16_t kUnassigned = UINT16_MAX;

  struct Page {
    char* memory = nullptr;
    uint16_t size_class = kUnassigned;
    uint16_t free_count = 0;
    uint16_t free_head = kNoChunk;  // chunk index; free chunks link through their first 2 bytes
    uint32_t prev = kNoPage;        // in its class's list of pages with free chunks
    uint32_t next = kNoPage;
  };

  void assign(uint32_t page, size_t size_class);
  void link_partial(uint32_t page);
  void unlink_partial(uint32_t page);
  Handle take_from(uint32_t page);
  uint16_t& next_free(const Page& page, uint16_t chunk) const;
  // Links the chunk in front of the page's free list, marked free.
  void push_free(Page& page, uint16_t chunk);

  std::vector<Page> pages_;
  std::vector<uint32_t> free_pages_;      // mapped, no class
  std::vector<uint32_t> unmapped_slots_;  // page numbers whose memory was returned
  uint32_t partial_[kClassCount];         // head of each class's pages-with-free-chunks list
  size_t free_chunks_[kClassCount] = {};  // free chunks in each class's pages
  size_t mapped_pages_ = 0;
};

}  // namespace kv

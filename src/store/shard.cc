#include "shard.h"

#include <cstring>

namespace kv {

Shard::Shard(uint64_t byte_limit, const Clock& clock, const MemoryCalls& calls)
    : byte_limit_(byte_limit),
      clock_(clock),
      slab_(byte_limit / Slab::kPageSize, calls),
      index_(EntryKey{&slab_}, calls) {}

void Shard::link_newest_locked(Handle handle) {
  Entry& entry = entry_locked(handle);
  entry.newer = kNoHandle;
  entry.older = newest_;
  if (newest_ != kNoHandle) entry_locked(newest_).newer = handle;
  newest_ = handle;
  if (oldest_ == kNoHandle) oldest_ = handle;
  // The cursor ran off the end as this (pending) entry was unlinked there.
  if (copy_cursor_ == kNoHandle && copy_pending_ > 0) copy_cursor_ = handle;
}

void Shard::unlink_locked(Handle handle) {
  Entry& entry = entry_locked(handle);
  if (copy_cursor_ == handle) copy_cursor_ = entry.newer;
  (entry.newer != kNoHandle ? entry_locked(entry.newer).older : newest_) = entry.older;
  (entry.older != kNoHandle ? entry_locked(entry.older).newer : oldest_) = entry.newer;
}

void Shard::remove_locked(Handle handle) { remove_locked(handle, make_key(entry_locked(handle).key())); }

void Shard::remove_locked(Handle handle, const KeyRef& key) {
  uint32_t expires_at = entry_locked(handle).expires_at();
  if (copy_pending_locked(entry_locked(handle))) --copy_pending_;
  index_.erase(key);
  unlink_locked(handle);
  slab_.release(handle);
  expiry_.update(handle, expires_at, 0);
}

void Shard::moved_locked(Handle from, Handle to) {
  Entry& entry = entry_locked(to);
  if (entry.is_batch_chunk()) {
    batch_[entry.older].chunk = to;
    // A new key's chunk is in the index already (the old chunk still holds the key).
    Handle* slot = index_.find(make_key(entry.key()));
    if (slot != nullptr && *slot == from) *slot = to;
    return;
  }
  (entry.newer != kNoHandle ? entry_locked(entry.newer).older : newest_) = to;
  (entry.older != kNoHandle ? entry_locked(entry.older).newer : oldest_) = to;
  if (copy_cursor_ == from) copy_cursor_ = to;
  if (protected_ == from) protected_ = to;
  // Its old page is emptied and rescanned by compact_locked.
  expiry_.update(to, 0, entry.expires_at());
  // The old chunk still holds the same key, so the lookup finds its slot.
  *index_.find(make_key(entry.key())) = to;
}

void Shard::expire_page_locked(uint32_t page) {
  size_t visits = 0;
  slab_.for_each_in_use(page, [&](Handle handle) {
    count_step_locked(visits, Slab::kMaxChunksPerPage);
    const Entry& entry = entry_locked(handle);
    // Never protected_ or newer: those were touched (so live) or just put.
    if (!entry.is_batch_chunk() && expired_locked(entry)) {
      remove_locked(handle);
      ++expirations_;
    }
  });
  expiry_.rescan(page);  // its bound is stale now
}

bool Shard::has_room_locked(size_t wanted_class) const {
  return slab_.has_free_page() || (wanted_class < Slab::kClassCount && slab_.has_free_chunk(wanted_class));
}

bool Shard::compact_locked(size_t size_class) {
  if (!slab_.can_evacuate(size_class)) return false;
  uint32_t page = slab_.sparsest_page(size_class);
  size_t moves = 0;
  slab_.evacuate(page, [&](Handle from, Handle to) {
    count_step_locked(moves, Slab::kMaxChunksPerPage);
    moved_locked(from, to);
  });
  expiry_.rescan(page);  // now free: drops out of the expiry index
  return true;
}

bool Shard::reclaim_locked(size_t wanted_class) {
  if (size_t size_class = slab_.evacuable_class(); size_class != Slab::kClassCount) {
    return room_after_removal_locked(size_class, wanted_class);
  }
  // Expired entries first: they are dead weight, whatever their recency. A
  // due page holds at least one (the expiry index is exact).
  size_t pages = 0;
  while (pages < kReclaimExpiredPages && expiry_.may_be_due(now_ms_)) {
    count_step_locked(pages, kReclaimExpiredPages);
    uint32_t page = expiry_.due_page(now_ms_);
    if (page == Slab::kNoPage) continue;  // it rescanned stale pages
    size_t size_class = slab_.page_class(page);
    expire_page_locked(page);
    if (room_after_removal_locked(size_class, wanted_class)) return true;
  }
  // Then exact LRU order until the freed chunks make room: a chunk of the
  // wanted class, an empty page, or a class with a page's worth to compact.
  size_t evictions = 0;
  while (oldest_ != kNoHandle && oldest_ != protected_ && evictions < kMaxEvictionsPerReclaim) {
    count_step_locked(evictions, kMaxEvictionsPerReclaim);
    size_t size_class = Slab::class_for(entry_locked(oldest_).size());
    remove_locked(oldest_);
    ++evictions_;
    if (room_after_removal_locked(size_class, wanted_class)) return true;
  }
  return false;
}

Handle Shard::allocate_locked(size_t size_class) {
  for (size_t rounds = 0; rounds < kMaxAllocateRounds;) {
    count_step_locked(rounds, kMaxAllocateRounds);
    Handle handle = slab_.take(size_class);
    if (handle != kNoHandle) return handle;
    assert(rounds < kMaxAllocateRounds);  // the second take always succeeds
    // A new page leaves room for the index's next growth (so the index
    // grows into memory the slab left it, not over the limit). The expiry
    // index's page table grows first, so a page the slab maps is always
    // one it can track.
    if (bytes_used_locked() + Slab::kPageSize + index_.growth_bytes() <= byte_limit_ &&
        expiry_.reserve_pages(slab_.page_count() + 1) && slab_.map_page()) {
      continue;
    }
    if (!reclaim_locked(size_class)) return kNoHandle;
  }
  return kNoHandle;
}

Handle Shard::touch_locked(BatchPut& item) {
  size_t size_class = class_of(item);
  item.chunk = kNeedsChunk;
  const Handle* slot = index_.find(item.key);
  if (slot == nullptr) return kNoHandle;
  Handle existing = *slot;
  if (expired_locked(entry_locked(existing))) {
    remove_locked(existing, item.key);
    ++expirations_;
    return kNoHandle;
  }
  // The newest now, so protected_ (the first entry touched) covers it.
  unlink_locked(existing);
  link_newest_locked(existing);
  if (protected_ == kNoHandle) protected_ = existing;
  if (Slab::class_for(entry_locked(existing).size()) == size_class) item.chunk = kNoHandle;
  return existing;
}

bool Shard::reserve_chunk_locked(BatchPut& item, uint32_t index) {
  if (item.chunk != kNeedsChunk) return true;
  item.chunk = kNoHandle;
  Handle chunk = allocate_locked(class_of(item));
  if (chunk == kNoHandle) return false;
  Entry& entry = entry_locked(chunk);
  entry.newer = Entry::kBatchChunk;
  entry.older = index;
  // The key now (the value at commit), so the index and compaction can read it.
  entry.fill(item.key.key, {}, item.expires_at);
  // A new key takes its index slot now, so commit cannot fail: the slot
  // names this chunk until then (lookups see it only under this lock).
  if (index_.find(item.key) == nullptr && !index_.insert(item.key, chunk)) {
    slab_.release(chunk);
    return false;
  }
  item.chunk = chunk;
  return true;
}

bool Shard::reserve_locked(std::span<BatchPut> items) {
  now_ms_ = clock_.now_ms();
  protected_ = kNoHandle;
  // Every entry the batch overwrites is protected before anything is evicted.
  for (BatchPut& item : items) touch_locked(item);
  batch_ = items;
  bool ok = true;
  for (uint32_t i = 0; i < items.size() && ok; ++i) {
    ok = reserve_chunk_locked(items[i], i);
    if (!ok) {
      for (BatchPut& rest : items.subspan(i)) rest.chunk = kNoHandle;
    }
  }
  // Then make room for the grown index (new keys took their slots).
  if (ok) ok = trim_locked();
  batch_ = {};
  // On success protected_ stays, for commit_locked or cancel_locked.
  if (!ok) cancel_locked(items);
  return ok;
}

void Shard::cancel_locked(std::span<BatchPut> items) {
  for (BatchPut& item : items) {
    if (item.chunk != kNoHandle) {
      // A new key's slot names its reserved chunk: the key goes too.
      const Handle* slot = index_.find(item.key);
      if (slot != nullptr && *slot == item.chunk) index_.erase(item.key);
      slab_.release(item.chunk);
    }
    item.chunk = kNoHandle;
  }
  trim_locked();
  protected_ = kNoHandle;
}

void Shard::rewrite_locked(Handle handle, const BatchPut& item) {
  Entry& entry = entry_locked(handle);
  uint32_t before = entry.expires_at();
  // The same size class, not always the same layout (an expiry may come or go).
  entry.fill(item.key.key, item.value, item.expires_at);
  expiry_.update(handle, before, item.expires_at);
  if (handle != newest_) {
    unlink_locked(handle);
    link_newest_locked(handle);
  }
}

void Shard::commit_one_locked(const BatchPut& item) {
  Handle handle = item.chunk;
  if (handle == kNoHandle) {
    // Reserved as a rewrite: the entry exists and its chunk fits.
    rewrite_locked(*index_.find(item.key), item);
  } else {
    Entry& entry = entry_locked(handle);
    entry.fill(item.key.key, item.value, item.expires_at);
    // A new key is not the running walk's to copy; a new chunk for an
    // existing key is, if the old one was (same mark, same count).
    entry.set_copy_mark(copy_mark_);
    Handle* slot = index_.find(item.key);
    assert(slot != nullptr);  // a new key's slot was taken with its chunk
    if (*slot != handle) {
      // Replaces an entry in another size class.
      Handle previous = *slot;
      *slot = handle;
      uint32_t previous_expiry = entry_locked(previous).expires_at();
      entry.set_copy_mark(entry_locked(previous).copy_mark());
      unlink_locked(previous);
      slab_.release(previous);
      expiry_.update(previous, previous_expiry, 0);
    }
    link_newest_locked(handle);  // no longer marked reserved, so the expiry index sees it
    expiry_.update(handle, 0, item.expires_at);
  }
  if (protected_ == kNoHandle) protected_ = newest_;
}

void Shard::commit_locked(std::span<BatchPut> items) {
  protected_ = kNoHandle;
  for (const BatchPut& item : items) commit_one_locked(item);
  trim_locked();
  protected_ = kNoHandle;
}

bool Shard::trim_locked() {
  // A growing index takes memory too.
  bool index_shrunk = false;
  for (size_t pages = 0; bytes_used_locked() > byte_limit_;) {
    // The rest next time: only an index rebuild larger than the one charged
    // ahead gets here (see kMaxTrimPages).
    if (pages == kMaxTrimPages) return true;
    count_step_locked(pages, kMaxTrimPages);
    if (!slab_.has_free_page() && !reclaim_locked(Slab::kClassCount)) {
      // Nothing left to evict. The index may still be sized for entries
      // evicted since it grew (a batch reserves its room before evicting):
      // rebuild it smaller, a bounded part of that once.
      if (index_shrunk || !index_.shrink(kShrinkSegments)) return false;
      index_shrunk = true;
      continue;
    }
    if (slab_.has_free_page() && !slab_.give_back_free_page()) return false;
  }
  return true;
}

PutStatus Shard::put(const KeyRef& key, std::string_view value, uint32_t expires_at) {
  BatchPut item{key, value, 0, expires_at};
  std::lock_guard lock(mutex_);
  now_ms_ = clock_.now_ms();
  return put_locked(item);
}

PutStatus Shard::put_locked(BatchPut& item) {
  protected_ = kNoHandle;
  Handle existing = touch_locked(item);
  bool ok = reserve_chunk_locked(item, 0);
  if (ok && item.chunk == kNoHandle) {
    // Same chunk size, nothing allocated (so nothing moved): rewrite in place.
    rewrite_locked(existing, item);
  } else if (ok) {
    // A new size: the old entry (if any) stayed until the new chunk existed,
    // so a put that cannot be stored loses nothing.
    protected_ = kNoHandle;
    commit_one_locked(item);
  }
  // Index growth may need pages given back.
  trim_locked();
  protected_ = kNoHandle;
  return ok ? PutStatus::ok : PutStatus::too_large;
}

Handle Shard::find_live_locked(const KeyRef& key) {
  const Handle* slot = index_.find(key);
  if (slot == nullptr) return kNoHandle;
  Handle handle = *slot;
  if (expired_locked(entry_locked(handle))) {
    remove_locked(handle, key);
    ++expirations_;
    return kNoHandle;
  }
  if (handle != newest_) {
    unlink_locked(handle);
    link_newest_locked(handle);
  }
  return handle;
}

bool Shard::get(const KeyRef& key, ValueCopy& out) {
  std::lock_guard lock(mutex_);
  now_ms_ = clock_.now_ms();
  Handle handle = find_live_locked(key);
  if (handle == kNoHandle) {
    ++misses_;
    return false;
  }
  ++hits_;
  std::string_view value = entry_locked(handle).value();
  assert(value.size() <= ValueCopy::kCapacity);
  out.size = value.size();
  std::memcpy(out.bytes, value.data(), value.size());
  return true;
}

bool Shard::get(const KeyRef& key, absl::FunctionRef<void(std::string_view)> on_value) {
  ValueCopy copy;
  if (!get(key, copy)) return false;
  on_value(copy.view());
  return true;
}

bool Shard::erase(const KeyRef& key) {
  std::lock_guard lock(mutex_);
  now_ms_ = clock_.now_ms();
  const Handle* slot = index_.find(key);
  if (slot == nullptr) return false;
  Handle handle = *slot;
  bool live = !expired_locked(entry_locked(handle));
  if (!live) ++expirations_;
  remove_locked(handle, key);
  return live;
}

bool Shard::expiry(const KeyRef& key, uint32_t& expires_at) {
  std::lock_guard lock(mutex_);
  now_ms_ = clock_.now_ms();
  const Handle* slot = index_.find(key);
  if (slot == nullptr) return false;
  Handle handle = *slot;
  if (expired_locked(entry_locked(handle))) {
    remove_locked(handle, key);
    ++expirations_;
    return false;
  }
  expires_at = entry_locked(handle).expires_at();
  return true;
}

ExpireStatus Shard::expire(const KeyRef& key, uint32_t expires_at) {
  std::lock_guard lock(mutex_);
  now_ms_ = clock_.now_ms();
  Handle handle = find_live_locked(key);  // the newest now
  if (handle == kNoHandle) return ExpireStatus::not_found;
  Entry& entry = entry_locked(handle);
  if (entry.has_expiry() == (expires_at != 0)) {
    uint32_t before = entry.expires_at();
    if (expires_at != 0) entry.set_expiry(expires_at);
    expiry_.update(handle, before, expires_at);
    return ExpireStatus::ok;
  }
  // The layout changes: the same value, copied out first (the put may move chunks).
  char value[Slab::kMaxChunk];
  std::string_view current = entry.value();
  std::memcpy(value, current.data(), current.size());
  BatchPut item{key, std::string_view(value, current.size()), 0, expires_at};
  return put_locked(item) == PutStatus::ok ? ExpireStatus::ok : ExpireStatus::too_large;
}

size_t Shard::flush() {
  // Declared before the lock, so destroyed (freed) after it is released.
  const MemoryCalls& calls = slab_.calls();
  Index old_index(EntryKey{&slab_}, calls);
  Slab::Detached old_pages(calls);
  ExpiryIndex::Tables old_expiry(calls);
  std::lock_guard lock(mutex_);
  size_t removed = index_.size();
  index_.swap_tables(old_index);
  slab_.detach(old_pages);
  expiry_.clear(old_expiry);
  newest_ = oldest_ = protected_ = copy_cursor_ = kNoHandle;
  copy_pending_ = 0;
  copy_closing_ = false;
  return removed;
}

bool Shard::sweep_expired(size_t max_pages) {
  std::lock_guard lock(mutex_);
  now_ms_ = clock_.now_ms();
  for (size_t pages = 0; pages < max_pages && expiry_.may_be_due(now_ms_);) {
    count_step_locked(pages, max_pages);
    uint32_t page = expiry_.due_page(now_ms_);
    if (page != Slab::kNoPage) expire_page_locked(page);  // else it rescanned stale pages
  }
  return expiry_.may_be_due(now_ms_);
}

void Shard::start_walk_locked() {
  copy_mark_ = !copy_mark_;
  copy_pending_ = index_.size();
  copy_cursor_ = oldest_;
  copy_closing_ = false;
}

size_t Shard::copy_start() {
  std::lock_guard lock(mutex_);
  // Marks are all equal only once a walk has ended: close an abandoned one first.
  if (copy_pending_ > 0) {
    copy_closing_ = true;
  } else {
    start_walk_locked();
  }
  return index_.size();
}

bool Shard::copy_batch(size_t max_entries,
                       absl::FunctionRef<void(std::string_view key, std::string_view value, uint32_t expires_at)> out) {
  std::lock_guard lock(mutex_);
  now_ms_ = clock_.now_ms();
  for (size_t visited = 0; visited < max_entries;) {
    count_step_locked(visited, max_entries);
    // The abandoned walk is closed (by visits or by removals): this one starts.
    if (copy_pending_ == 0 && copy_closing_) start_walk_locked();
    if (copy_pending_ == 0) break;
    Entry& entry = entry_locked(copy_cursor_);
    copy_cursor_ = entry.newer;
    if (entry.copy_mark() == copy_mark_) continue;  // copied, or created, during this walk
    entry.set_copy_mark(copy_mark_);
    --copy_pending_;
    if (!copy_closing_ && !expired_locked(entry)) out(entry.key(), entry.value(), entry.expires_at());
  }
  return copy_pending_ > 0 || copy_closing_;
}

uint64_t Shard::work_steps() const {
  std::lock_guard lock(mutex_);
  return work_steps_ + expiry_.chunks_visited() + index_.work();
}

ShardStats Shard::stats() const {
  std::lock_guard lock(mutex_);
  return {index_.size(), bytes_used_locked(), hits_, misses_, evictions_, expirations_};
}

}  // namespace kv

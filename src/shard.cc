#include "shard.h"

namespace kv {

size_t Shard::IndexHash::operator()(Handle handle) const {
  return absl::Hash<std::string_view>{}(reinterpret_cast<const Entry*>(slab->at(handle))->key());
}

bool Shard::IndexEq::operator()(const KeyRef& a, Handle b) const {
  return a.key == reinterpret_cast<const Entry*>(slab->at(b))->key();
}

Shard::Shard(uint64_t byte_limit, const Clock& clock)
    : byte_limit_(byte_limit), clock_(clock), index_(0, IndexHash{&slab_}, IndexEq{&slab_}) {}

uint64_t Shard::index_bytes_locked() const {
  // One handle slot and one control byte per bucket.
  return index_.capacity() * (sizeof(Handle) + 1);
}

void Shard::link_newest_locked(Handle handle) {
  Entry& entry = entry_locked(handle);
  entry.newer = kNoHandle;
  entry.older = newest_;
  if (newest_ != kNoHandle) entry_locked(newest_).newer = handle;
  newest_ = handle;
  if (oldest_ == kNoHandle) oldest_ = handle;
}

void Shard::unlink_locked(Handle handle) {
  Entry& entry = entry_locked(handle);
  if (sweep_cursor_ == handle) sweep_cursor_ = entry.newer;
  if (copy_cursor_ == handle) copy_cursor_ = entry.newer;
  (entry.newer != kNoHandle ? entry_locked(entry.newer).older : newest_) = entry.older;
  (entry.older != kNoHandle ? entry_locked(entry.older).newer : oldest_) = entry.newer;
}

void Shard::remove_locked(Handle handle) { remove_locked(handle, make_key(entry_locked(handle).key())); }

void Shard::remove_locked(Handle handle, const KeyRef& key) {
  if (entry_locked(handle).expires_at != 0) --ttl_entries_;
  index_.erase(key);
  unlink_locked(handle);
  slab_.release(handle);
}

void Shard::evict_oldest_locked() {
  remove_locked(oldest_);
  ++evictions_;
}

void Shard::moved_locked(Handle from, Handle to) {
  Entry& entry = entry_locked(to);
  (entry.newer != kNoHandle ? entry_locked(entry.newer).older : newest_) = to;
  (entry.older != kNoHandle ? entry_locked(entry.older).newer : oldest_) = to;
  if (sweep_cursor_ == from) sweep_cursor_ = to;
  if (copy_cursor_ == from) copy_cursor_ = to;
  if (pinned_ == from) pinned_ = to;
  // The old chunk still holds the same key, so the lookup finds its slot.
  auto it = index_.find(make_key(entry.key()));
  const_cast<Handle&>(*it) = to;
}

bool Shard::reclaim_locked(size_t wanted_class) {
  auto evacuate = [&](size_t size_class) {
    slab_.evacuate(slab_.sparsest_page(size_class), [&](Handle from, Handle to) { moved_locked(from, to); });
  };
  if (size_t size_class = slab_.evacuable_class(); size_class != Slab::kClassCount) {
    evacuate(size_class);
    return true;
  }
  // Evict in exact LRU order until the freed chunks make room: a chunk of the
  // wanted class, an empty page, or a class with a page's worth to compact.
  while (oldest_ != kNoHandle && oldest_ != pinned_) {
    size_t size_class = Slab::class_for(entry_locked(oldest_).size());
    evict_oldest_locked();
    if (slab_.has_free_page() || (wanted_class < Slab::kClassCount && slab_.has_free_chunk(wanted_class))) return true;
    if (slab_.can_evacuate(size_class)) {
      evacuate(size_class);
      return true;
    }
  }
  return false;
}

Handle Shard::allocate_locked(size_t size_class) {
  for (;;) {
    Handle handle = slab_.take(size_class);
    if (handle != kNoHandle) return handle;
    if (bytes_used_locked() + Slab::kPageSize <= byte_limit_ && slab_.map_page()) continue;
    if (!reclaim_locked(size_class)) return kNoHandle;
  }
}

PutStatus Shard::put(const KeyRef& key, std::string_view value, uint32_t expires_at) {
  size_t size_class = Slab::class_for(Entry::size_for(key.key.size(), value.size()));
  std::lock_guard lock(mutex_);
  Handle previous = kNoHandle;
  if (auto it = index_.find(key); it != index_.end()) {
    previous = *it;
    Entry& entry = entry_locked(previous);
    unlink_locked(previous);
    link_newest_locked(previous);
    if (Slab::class_for(entry.size()) == size_class) {
      // Same chunk size: rewrite in place.
      entry.store_value(value);
      ttl_entries_ += (expires_at != 0) - (entry.expires_at != 0);
      entry.expires_at = expires_at;
      return PutStatus::ok;
    }
  }
  // A new size: the old entry (now the newest, and pinned) stays until the
  // new one has a chunk, so a put that cannot be stored loses nothing.
  pinned_ = previous;
  Handle handle = allocate_locked(size_class);
  previous = pinned_;  // allocation may have moved it
  pinned_ = kNoHandle;
  if (handle == kNoHandle) return PutStatus::too_large;
  if (previous != kNoHandle) remove_locked(previous, key);
  entry_locked(handle).fill(key.key, value, expires_at);
  if (expires_at != 0) ++ttl_entries_;
  link_newest_locked(handle);
  index_.lazy_emplace(key, [&](const auto& construct) { construct(handle); });
  // A grown index takes memory too: hand pages back until within the limit,
  // never evicting the entry just written.
  pinned_ = handle;
  while (bytes_used_locked() > byte_limit_ && (slab_.has_free_page() || reclaim_locked(Slab::kClassCount))) {
    slab_.unmap_free_page();
  }
  pinned_ = kNoHandle;
  return PutStatus::ok;
}

bool Shard::get(const KeyRef& key, absl::FunctionRef<void(std::string_view)> on_value) {
  std::lock_guard lock(mutex_);
  auto it = index_.find(key);
  if (it != index_.end()) {
    Handle handle = *it;
    Entry& entry = entry_locked(handle);
    if (!expired_locked(entry)) {
      if (handle != newest_) {
        unlink_locked(handle);
        link_newest_locked(handle);
      }
      ++hits_;
      on_value(entry.value());
      return true;
    }
    remove_locked(handle, key);
    ++expirations_;
  }
  ++misses_;
  return false;
}

bool Shard::erase(const KeyRef& key) {
  std::lock_guard lock(mutex_);
  auto it = index_.find(key);
  if (it == index_.end()) return false;
  Handle handle = *it;
  bool live = !expired_locked(entry_locked(handle));
  if (!live) ++expirations_;
  remove_locked(handle, key);
  return live;
}

void Shard::sweep_expired(size_t budget) {
  std::lock_guard lock(mutex_);
  if (ttl_entries_ == 0) return;
  for (size_t visited = 0; visited < budget && newest_ != kNoHandle; ++visited) {
    if (sweep_cursor_ == kNoHandle) sweep_cursor_ = oldest_;  // wrap around
    Handle handle = sweep_cursor_;
    sweep_cursor_ = entry_locked(handle).newer;
    if (expired_locked(entry_locked(handle))) {
      remove_locked(handle);
      ++expirations_;
    }
  }
}

size_t Shard::copy_start() {
  std::lock_guard lock(mutex_);
  copy_cursor_ = oldest_;
  copy_budget_ = 2 * index_.size();
  return index_.size();
}

bool Shard::copy_batch(size_t max_entries,
                       absl::FunctionRef<void(std::string_view key, std::string_view value, uint32_t expires_at)> out) {
  std::lock_guard lock(mutex_);
  for (size_t visited = 0; visited < max_entries && copy_cursor_ != kNoHandle && copy_budget_ > 0; ++visited) {
    const Entry& entry = entry_locked(copy_cursor_);
    copy_cursor_ = entry.newer;
    --copy_budget_;
    if (!expired_locked(entry)) out(entry.key(), entry.value(), entry.expires_at);
  }
  return copy_cursor_ != kNoHandle && copy_budget_ > 0;
}

ShardStats Shard::stats() const {
  std::lock_guard lock(mutex_);
  return {index_.size(), bytes_used_locked(), hits_, misses_, evictions_, expirations_};
}

}  // namespace kv

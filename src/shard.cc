#include "shard.h"

namespace kv {
namespace {

// glibc malloc: usable size rounded up to 16 bytes plus an 8-byte chunk header, 32 minimum.
constexpr uint64_t malloc_chunk_size(uint64_t request) {
  uint64_t chunk = (request + 8 + 15) & ~uint64_t{15};
  return chunk < 32 ? 32 : chunk;
}

}  // namespace

Shard::Shard(uint64_t byte_limit, const Clock& clock) : byte_limit_(byte_limit), clock_(clock) {}

Shard::~Shard() {
  for (Entry* entry = newest_; entry != nullptr;) {
    Entry* next = entry->older;
    std::free(entry);
    entry = next;
  }
}

uint64_t Shard::entry_cost(size_t key_size, size_t value_size) {
  return malloc_chunk_size(sizeof(Entry) + key_size + value_size);
}

void Shard::link_newest_locked(Entry* entry) {
  entry->newer = nullptr;
  entry->older = newest_;
  if (newest_ != nullptr) newest_->newer = entry;
  newest_ = entry;
  if (oldest_ == nullptr) oldest_ = entry;
}

void Shard::unlink_locked(Entry* entry) {
  if (sweep_cursor_ == entry) sweep_cursor_ = entry->newer;
  (entry->newer ? entry->newer->older : newest_) = entry->older;
  (entry->older ? entry->older->newer : oldest_) = entry->newer;
  entry->newer = entry->older = nullptr;
}

void Shard::remove_locked(Entry* entry, Entry*& garbage) {
  index_.erase(make_key(entry->key()));
  unlink_locked(entry);
  entry_bytes_ -= entry_cost(entry->key_size, entry->value_size);
  entry->older = garbage;
  garbage = entry;
}

uint64_t Shard::bytes_used_locked() const {
  // The index: one pointer slot and one control byte per bucket.
  return entry_bytes_ + index_.capacity() * (sizeof(Entry*) + 1);
}

bool Shard::expired_locked(const Entry* entry) const {
  return entry->expires_at != 0 && is_expired(entry->expires_at, clock_.now_ms());
}

PutStatus Shard::put(const KeyRef& key, Entry* entry) {
  uint64_t cost = entry_cost(entry->key_size, entry->value_size);
  if (cost > byte_limit_) {
    std::free(entry);
    return PutStatus::too_large;
  }
  Entry* garbage = nullptr;
  {
    std::lock_guard lock(mutex_);
    bool inserted = false;
    auto it = index_.lazy_emplace(key, [&](const auto& construct) {
      construct(entry);
      inserted = true;
    });
    if (!inserted) {
      Entry* old = *it;
      // Same key, so same hash and equality: replacing the pointer in place is safe.
      const_cast<Entry*&>(*it) = entry;
      unlink_locked(old);
      entry_bytes_ -= entry_cost(old->key_size, old->value_size);
      old->older = garbage;
      garbage = old;
    }
    link_newest_locked(entry);
    entry_bytes_ += cost;
    while (bytes_used_locked() > byte_limit_ && oldest_ != entry) {
      remove_locked(oldest_, garbage);
      ++evictions_;
    }
  }
  Entry::destroy_chain(garbage);
  return PutStatus::ok;
}

bool Shard::get(const KeyRef& key, absl::FunctionRef<void(std::string_view)> on_value) {
  Entry* garbage = nullptr;
  {
    std::lock_guard lock(mutex_);
    auto it = index_.find(key);
    if (it != index_.end()) {
      Entry* entry = *it;
      if (!expired_locked(entry)) {
        if (entry != newest_) {
          unlink_locked(entry);
          link_newest_locked(entry);
        }
        ++hits_;
        on_value(entry->value());
        return true;
      }
      remove_locked(entry, garbage);
      ++expirations_;
    }
    ++misses_;
  }
  Entry::destroy_chain(garbage);
  return false;
}

bool Shard::erase(const KeyRef& key) {
  Entry* garbage = nullptr;
  bool found = false;
  {
    std::lock_guard lock(mutex_);
    auto it = index_.find(key);
    if (it != index_.end()) {
      Entry* entry = *it;
      found = !expired_locked(entry);
      if (!found) ++expirations_;
      remove_locked(entry, garbage);
    }
  }
  Entry::destroy_chain(garbage);
  return found;
}

void Shard::sweep_expired(size_t budget) {
  Entry* garbage = nullptr;
  {
    std::lock_guard lock(mutex_);
    for (size_t visited = 0; visited < budget && newest_ != nullptr; ++visited) {
      if (sweep_cursor_ == nullptr) sweep_cursor_ = oldest_;  // wrap around
      Entry* entry = sweep_cursor_;
      sweep_cursor_ = entry->newer;
      if (expired_locked(entry)) {
        remove_locked(entry, garbage);
        ++expirations_;
      }
    }
  }
  Entry::destroy_chain(garbage);
}

ShardStats Shard::stats() const {
  std::lock_guard lock(mutex_);
  return {index_.size(), bytes_used_locked(), hits_, misses_, evictions_, expirations_};
}

}  // namespace kv

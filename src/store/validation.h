// What keys and values may be, whichever way they arrive (JSON body or query).
#pragma once

#include <cstddef>
#include <string_view>

namespace kv {

constexpr size_t kMaxKeyBytes = 256;
constexpr size_t kMaxValueBytes = 256;
constexpr size_t kMaxBatchItems = 1000;
constexpr long long kMaxTtlSeconds = 2147483647;

inline bool is_ascii(std::string_view text) {
  unsigned char any = 0;
  for (unsigned char c : text) any |= c;  // vectorizes
  return (any & 0x80) == 0;
}

// Returns the error message for an invalid key, or nullptr.
inline const char* key_error(std::string_view key) {
  if (key.empty()) return "key must not be empty";
  if (key.size() > kMaxKeyBytes) return "key exceeds 256 characters";
  if (!is_ascii(key)) return "key must be ASCII";
  return nullptr;
}

inline const char* value_error(std::string_view value) {
  if (value.size() > kMaxValueBytes) return "value exceeds 256 characters";
  if (!is_ascii(value)) return "value must be ASCII";
  return nullptr;
}

}  // namespace kv

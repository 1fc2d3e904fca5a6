// The default memory limit: 70% of the memory available to the process, taken
// from the cgroup (v2, then v1) when one limits it, else from MemTotal.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace kv {

struct AvailableMemory {
  uint64_t bytes = 0;
  std::string source;  // "cgroup v2", "cgroup v1" or "MemTotal"
};

// Parsers for the individual files, exposed for tests. Each returns nullopt
// when the file says "no limit" ("max", huge sentinels) or is malformed.
std::optional<uint64_t> parse_cgroup_limit(std::string_view content);
std::optional<uint64_t> parse_meminfo_total(std::string_view content);

// Reads the files under `root` ("/" in production, a fixture directory in tests).
AvailableMemory detect_available_memory(const std::string& root = "/");

uint64_t default_memory_limit(const AvailableMemory& available);

// The process's resident set size now (from /proc/self/statm), 0 if unknown.
uint64_t resident_bytes();

// What the store may use of `limit`: the limit covers the whole process, so
// the memory the process holds besides the store (code, libraries, buffers
// each loop thread allocates) comes off the top.
uint64_t store_budget(uint64_t limit, uint64_t process_overhead);

}  // namespace kv

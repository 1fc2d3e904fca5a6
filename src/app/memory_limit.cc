#include "memory_limit.h"

#include "ascii.h"

#include <unistd.h>

#include <charconv>
#include <fstream>
#include <sstream>

namespace kv {
namespace {

// cgroup v1 reports "unlimited" as a page-rounded LONG_MAX; anything this big is no limit.
constexpr uint64_t kNoLimitThreshold = 1ull << 60;
constexpr uint64_t kBytesPerKib = 1024;

std::optional<std::string> read_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

std::string_view trim(std::string_view text) { return kv::trim(text, " \t\r\n"); }

// The cgroup path of this process for a hierarchy: "0::/x" for v2, "N:memory:/x" for v1.
std::optional<std::string> cgroup_path(std::string_view proc_self_cgroup, bool v2) {
  while (!proc_self_cgroup.empty()) {
    size_t end = proc_self_cgroup.find('\n');
    std::string_view line = proc_self_cgroup.substr(0, end);
    proc_self_cgroup = end == std::string_view::npos ? std::string_view() : proc_self_cgroup.substr(end + 1);
    size_t first = line.find(':');
    size_t second = first == std::string_view::npos ? first : line.find(':', first + 1);
    if (second == std::string_view::npos) continue;
    std::string_view controllers = line.substr(first + 1, second - first - 1);
    bool match = v2 ? (line.substr(0, first) == "0" && controllers.empty())
                    : (controllers.find("memory") != std::string_view::npos);
    if (match) return std::string(trim(line.substr(second + 1)));
  }
  return std::nullopt;
}

// The smallest limit from the process's cgroup up to the hierarchy root.
std::optional<uint64_t> min_limit_up_the_tree(const std::string& mount, std::string path, const char* file) {
  std::optional<uint64_t> best;
  for (;;) {
    std::string dir = mount + (path == "/" ? "" : path);
    if (auto content = read_file(dir + "/" + file)) {
      if (auto limit = parse_cgroup_limit(*content); limit && (!best || *limit < *best)) best = limit;
    }
    if (path.empty() || path == "/") break;
    size_t slash = path.rfind('/');
    path = slash == 0 || slash == std::string::npos ? "/" : path.substr(0, slash);
  }
  return best;
}

}  // namespace

std::optional<uint64_t> parse_cgroup_limit(std::string_view content) {
  content = trim(content);
  uint64_t value = 0;
  auto [end, ec] = std::from_chars(content.data(), content.data() + content.size(), value);
  if (ec != std::errc{} || end != content.data() + content.size() || value == 0 || value >= kNoLimitThreshold) {
    return std::nullopt;
  }
  return value;
}

std::optional<uint64_t> parse_meminfo_total(std::string_view content) {
  size_t at = content.find("MemTotal:");
  if (at == std::string_view::npos) return std::nullopt;
  std::string_view rest = content.substr(at + 9);
  rest = trim(rest.substr(0, rest.find('\n')));
  uint64_t kib = 0;
  auto [end, ec] = std::from_chars(rest.data(), rest.data() + rest.size(), kib);
  if (ec != std::errc{} || kib == 0 || trim(std::string_view(end, rest.data() + rest.size() - end)) != "kB") {
    return std::nullopt;
  }
  return kib * kBytesPerKib;
}

AvailableMemory detect_available_memory(const std::string& root) {
  std::string base = root.empty() || root.back() != '/' ? root + "/" : root;
  std::optional<uint64_t> total;
  if (auto content = read_file(base + "proc/meminfo")) total = parse_meminfo_total(*content);
  AvailableMemory result{total.value_or(0), "MemTotal"};
  if (result.bytes == 0 && root == "/") {
    // /proc hidden (a sandbox): ask the kernel for physical memory instead.
    result = {static_cast<uint64_t>(sysconf(_SC_PHYS_PAGES)) * static_cast<uint64_t>(sysconf(_SC_PAGESIZE)),
              "physical pages"};
  }
  auto consider = [&](std::optional<uint64_t> limit, const char* source) {
    if (limit && (result.bytes == 0 || *limit < result.bytes)) result = {*limit, source};
  };
  if (auto self = read_file(base + "proc/self/cgroup")) {
    if (auto path = cgroup_path(*self, true)) {
      consider(min_limit_up_the_tree(base + "sys/fs/cgroup", *path, "memory.max"), "cgroup v2");
    }
    if (auto path = cgroup_path(*self, false)) {
      consider(min_limit_up_the_tree(base + "sys/fs/cgroup/memory", *path, "memory.limit_in_bytes"), "cgroup v1");
    }
  }
  return result;
}

// 70% of what is available leaves the rest of the host (and the kernel's socket buffers) room.
uint64_t default_memory_limit(const AvailableMemory& available) { return available.bytes / 10 * 7; }

uint64_t resident_bytes() {
  auto statm = read_file("/proc/self/statm");
  if (!statm) return 0;
  std::string_view text = *statm;
  size_t space = text.find(' ');
  if (space == std::string_view::npos) return 0;
  text.remove_prefix(space + 1);
  uint64_t pages = 0;
  std::from_chars(text.data(), text.data() + text.size(), pages);
  return pages * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
}

uint64_t store_budget(uint64_t limit, uint64_t process_overhead) {
  // A limit too small for the overhead still gives the store this share to work with.
  constexpr uint64_t kMinStoreShareDivisor = 4;
  uint64_t floor = limit / kMinStoreShareDivisor;
  return process_overhead < limit - floor ? limit - process_overhead : floor;
}

}  // namespace kv

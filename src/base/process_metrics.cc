#include "process_metrics.h"

#include "version.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace kv {
namespace {

constexpr std::string_view kVersions[] = {KVCACHE_VERSION};
constexpr MetricLabel kVersionLabel[] = {label<kVersions>("version")};

// Reads a small /proc file whole into buf (NUL-terminated); its length, 0 on failure.
size_t read_small_file(const char* path, char* buf, size_t size) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  size_t used = 0;
  while (used + 1 < size) {
    ssize_t n = read(fd, buf + used, size - 1 - used);
    if (n <= 0) break;
    used += static_cast<size_t>(n);
  }
  close(fd);
  buf[used] = '\0';
  return used;
}

}  // namespace

// /proc/stat's btime, read line by line: it follows the intr line, which
// alone can be tens of KiB on a host with many CPUs.
uint64_t read_boot_time_seconds(const char* proc_stat) {
  FILE* file = std::fopen(proc_stat, "re");
  if (file == nullptr) return 0;
  uint64_t seconds = 0;
  char chunk[256];  // a long line comes in several chunks; only a line's first starts with a letter
  while (std::fgets(chunk, sizeof chunk, file) != nullptr) {
    if (std::strncmp(chunk, "btime ", 6) == 0) {
      seconds = std::strtoull(chunk + 6, nullptr, 10);
      break;
    }
  }
  std::fclose(file);
  return seconds;
}

namespace {

// The boot time does not change: read once, at the first scrape.
uint64_t boot_time_seconds() {
  static const uint64_t seconds = read_boot_time_seconds("/proc/stat");
  return seconds;
}

uint64_t count_open_fds() {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return 0;
  uint64_t n = 0;
  while (dirent* entry = readdir(dir)) {
    if (entry->d_name[0] != '.') ++n;
  }
  closedir(dir);
  return n > 0 ? n - 1 : 0;  // less the directory being read
}

}  // namespace

const MetricDecl kProcessMetricDecls[] = {
    {"kvcache_memory_limit_bytes", MetricType::gauge, "The memory limit of the whole process."},
    {"kvcache_build_info", MetricType::gauge, "Build information.", kVersionLabel},
    {"process_resident_memory_bytes", MetricType::gauge, "Resident memory size in bytes."},
    {"process_virtual_memory_bytes", MetricType::gauge, "Virtual memory size in bytes."},
    {"process_start_time_seconds", MetricType::gauge, "Start time of the process since unix epoch in seconds.", {},
     {}, 1000},
    {"process_open_fds", MetricType::gauge, "Number of open file descriptors."},
    {"process_max_fds", MetricType::gauge, "Maximum number of open file descriptors."},
    {"process_cpu_seconds_total", MetricType::counter, "Total user and system CPU time spent in seconds.", {}, {},
     1000000},
};
const MetricTable kProcessMetrics(kProcessMetricDecls, std::size(kProcessMetricDecls));

ProcessStats read_process_stats() {
  ProcessStats stats;
  char buf[1024];
  if (read_small_file("/proc/self/stat", buf, sizeof buf) > 0) {
    // The command name may hold spaces and parentheses: fields count from the last ')'.
    if (const char* p = std::strrchr(buf, ')')) {
      // Field 3 (state) follows; utime is field 14, stime 15, starttime 22, vsize 23, rss 24.
      unsigned long long field[25] = {};
      char* cursor = const_cast<char*>(p + 2);
      for (int f = 3; f <= 24 && *cursor; ++f) {
        while (*cursor == ' ') ++cursor;
        field[f] = std::strtoull(cursor, &cursor, 10);
        if (f == 3) {  // the state is a letter
          while (*cursor && *cursor != ' ') ++cursor;
        }
      }
      const uint64_t ticks = static_cast<uint64_t>(sysconf(_SC_CLK_TCK));
      const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
      if (ticks > 0) {
        stats.cpu_us = (field[14] + field[15]) * 1000000 / ticks;
        stats.start_time_ms = boot_time_seconds() * 1000 + field[22] * 1000 / ticks;
      }
      stats.virtual_bytes = field[23];
      stats.resident_bytes = field[24] * page;
    }
  }
  stats.open_fds = count_open_fds();
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0) stats.max_fds = limit.rlim_cur;
  return stats;
}

ProcessMetrics::ProcessMetrics(uint64_t memory_limit) : MetricSource(kProcessMetrics), memory_limit_(memory_limit) {}

void ProcessMetrics::collect(std::span<uint64_t> values) const {
  ProcessStats stats = read_process_stats();
  const uint64_t row[] = {memory_limit_,      1,
                          stats.resident_bytes, stats.virtual_bytes,
                          stats.start_time_ms,  stats.open_fds,
                          stats.max_fds,        stats.cpu_us};
  static_assert(std::size(row) == std::size(kProcessMetricDecls));
  std::copy(std::begin(row), std::end(row), values.begin());
}

}  // namespace kv

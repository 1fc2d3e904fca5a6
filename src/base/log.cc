#include "log.h"

#include <fmt/chrono.h>

#include <cstdio>
#include <new>

#include <chrono>
#include <cstdio>

namespace kv {
namespace {
std::atomic<LogLevel> current_level{LogLevel::info};
}

std::optional<LogLevel> parse_log_level(std::string_view name) {
  if (name == "debug") return LogLevel::debug;
  if (name == "info") return LogLevel::info;
  if (name == "warn" || name == "warning") return LogLevel::warn;
  if (name == "error") return LogLevel::error;
  return std::nullopt;
}

std::string_view log_level_name(LogLevel level) {
  switch (level) {
    case LogLevel::debug: return "debug";
    case LogLevel::info: return "info";
    case LogLevel::warn: return "warn";
    case LogLevel::error: return "error";
  }
  return "?";
}

void set_log_level(LogLevel level) { current_level.store(level, std::memory_order_relaxed); }

bool log_enabled(LogLevel level) { return level >= current_level.load(std::memory_order_relaxed); }

void log_line(LogLevel level, std::string_view message) {
  auto now = std::chrono::time_point_cast<std::chrono::milliseconds>(std::chrono::system_clock::now());
  // One fwrite per line so lines from different threads never interleave.
  try {
    std::string line = fmt::format("{:%Y-%m-%dT%H:%M:%S}Z {} {}\n", now, log_level_name(level), message);
    std::fwrite(line.data(), 1, line.size(), stderr);
  } catch (const std::bad_alloc&) {
    // Out of memory: the line without its time stamp, in one go of stdio's own buffer.
    std::fprintf(stderr, "%s %.*s\n", log_level_name(level).data(), static_cast<int>(message.size()), message.data());
  }
}

bool LogThrottle::allow(uint64_t now_ms, uint64_t& suppressed) {
  uint64_t next = next_ms_.load(std::memory_order_relaxed);
  if (now_ms < next || !next_ms_.compare_exchange_strong(next, now_ms + interval_ms_, std::memory_order_relaxed)) {
    suppressed_.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  suppressed = suppressed_.exchange(0, std::memory_order_relaxed);
  return true;
}

bool LogThrottle::allow_warning(uint64_t& suppressed) {
  auto now = std::chrono::steady_clock::now().time_since_epoch();
  return log_enabled(LogLevel::warn) &&
         allow(std::chrono::duration_cast<std::chrono::milliseconds>(now).count(), suppressed);
}
void log_dropped(LogLevel level) { log_line(level, "(a log line was dropped: out of memory)"); }

}  // namespace kv

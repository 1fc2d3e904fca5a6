// Logging: one line per event on stderr, formatted with fmt.
#pragma once

#include <fmt/core.h>

#include <atomic>
#include <cstdint>
#include <new>
#include <optional>
#include <string_view>

namespace kv {

enum class LogLevel { debug = 0, info = 1, warn = 2, error = 3 };

std::optional<LogLevel> parse_log_level(std::string_view name);
std::string_view log_level_name(LogLevel level);
void set_log_level(LogLevel level);
bool log_enabled(LogLevel level);
// Never throws: a line that cannot be allocated is written shorter, or dropped
// (log_dropped says so), so a log call on an allocation-failure path cannot
// throw std::bad_alloc at its caller.
void log_line(LogLevel level, std::string_view message);
void log_dropped(LogLevel level);

template <typename... Args>
void log(LogLevel level, fmt::format_string<Args...> format, Args&&... args) {
  if (!log_enabled(level)) return;
  try {
    log_line(level, fmt::format(format, std::forward<Args>(args)...));
  } catch (const std::bad_alloc&) {
    log_dropped(level);
  }
}

// At most one log line per interval across all threads; the rest are counted
// and reported with the next line. The one throttle of every warning that
// can come in floods (a refused connection, a failed handshake, a rejected
// token): each kind keeps one, as a function-local static.
class LogThrottle {
 public:
  explicit LogThrottle(uint64_t interval_ms = 1000) : interval_ms_(interval_ms) {}
  // Calls write(suppressed) when a warning may be written now.
  template <typename Write>
  void warn(Write&& write) {
    uint64_t suppressed = 0;
    if (allow_warning(suppressed)) write(suppressed);
  }
  // True when a line may be written at now_ms; then `suppressed` is how many
  // calls since the last line were refused.
  bool allow(uint64_t now_ms, uint64_t& suppressed);
  // allow() now, if warnings are logged at all.
  bool allow_warning(uint64_t& suppressed);

 private:
  const uint64_t interval_ms_;
  std::atomic<uint64_t> next_ms_{0};
  std::atomic<uint64_t> suppressed_{0};
};

}  // namespace kv

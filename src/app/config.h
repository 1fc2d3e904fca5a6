// Command-line and environment configuration of the server.
#pragma once

#include "log.h"
#include "result.h"

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kv {

struct Config {
  uint16_t port = 7171;
  std::string bind = "0.0.0.0";
  unsigned threads = 0;            // 0: CPUs available to the process
  std::optional<uint64_t> memory_limit;  // nullopt: auto (70% of available memory)
  unsigned shards = 16;
  unsigned max_connections = 10000;
  double read_timeout = 2.0;       // seconds
  double idle_timeout = 120.0;     // seconds
  double drain_timeout = 5.0;      // seconds
  double send_timeout = 30.0;      // seconds without send progress before a connection is closed
  LogLevel log_level = LogLevel::info;
  std::string snapshot_path;         // empty: snapshots off
  double snapshot_interval = 300.0;  // seconds; 0: only at shutdown and on request
  double snapshot_timeout = 30.0;    // seconds the final snapshot may take
  std::string auth_token_file;     // empty: no token file (KVCACHE_AUTH_TOKEN may still set one)
  std::string tls_cert;            // PEM certificate chain; with tls_key: the listener speaks TLS only
  std::string tls_key;             // PEM private key
  std::string tls_client_ca;       // PEM CA bundle: require and verify client certificates (mutual TLS)
  bool help = false;          // --help, -h: print the usage and exit 0
  bool version = false;       // --version, -V: print the version and exit 0
  bool check_config = false;  // --check-config: check flags, environment and files without binding
  bool health_check = false;

  bool tls() const { return !tls_cert.empty(); }
};

// Returns the value of an environment variable, or nullptr.
using EnvLookup = std::function<const char*(const char*)>;

// Flags win over KVCACHE_* environment variables, which win over defaults. A
// variable is read (and checked) only for a flag the command line leaves unset.
// --help (-h) and --version (-V) win over everything else on the line: with
// either, nothing else is checked and no variable is read.
Result<void> parse_config(const std::vector<std::string_view>& args, const EnvLookup& env, Config& config);

std::string usage_text();

// "64M", "1G", "1048576" -> bytes; nullopt on a malformed value.
std::optional<uint64_t> parse_byte_size(std::string_view text);
// "2", "2s", "500ms", "0.5", "5m", "1h" -> seconds; nullopt on a malformed value.
std::optional<double> parse_duration(std::string_view text);

}  // namespace kv

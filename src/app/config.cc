#include "config.h"

#include "ascii.h"

#include <fmt/core.h>

#include <arpa/inet.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <string>

namespace kv {
namespace {

constexpr uint64_t kMinMemoryLimit = 1ull << 20;
constexpr double kMaxDurationSeconds = 86400;  // a day: anything longer is a typo
constexpr unsigned kMaxThreads = 256;
constexpr unsigned kMaxShards = 1024;
constexpr unsigned kMaxConnectionsLimit = 1000000;

template <typename Int>
std::optional<Int> parse_int(std::string_view text) {
  Int value{};
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc{} || end != text.data() + text.size() || text.empty()) return std::nullopt;
  return value;
}

std::optional<double> parse_decimal(std::string_view text) {
  double value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value, std::chars_format::fixed);
  if (ec != std::errc{} || end != text.data() + text.size() || text.empty() || !std::isfinite(value)) {
    return std::nullopt;
  }
  return value;
}

bool is_ip_address(std::string_view text) {
  std::string address(text);  // inet_pton wants a NUL-terminated string
  in6_addr storage;
  return inet_pton(AF_INET, address.c_str(), &storage) == 1 || inet_pton(AF_INET6, address.c_str(), &storage) == 1;
}

// A flag's setter: stores a valid value, or says what a valid one looks like.
struct Flag {
  std::string_view name;
  std::string_view help;
  bool takes_value;
  Result<void> (*apply)(std::string_view value, Config& config);
};

template <typename Int>
Result<void> set_int(std::string_view value, Int& out, uint64_t min, uint64_t max) {
  auto parsed = parse_int<uint64_t>(value);
  if (!parsed || *parsed < min || *parsed > max) {
    return fail(fmt::format("expected an integer between {} and {}", min, max));
  }
  out = static_cast<Int>(*parsed);
  return {};
}

Result<void> set_path(std::string_view value, std::string& out) {
  if (value.empty()) return fail("expected a file path");
  out = std::string(value);
  return {};
}

Result<void> set_duration(std::string_view value, double& out) {
  auto parsed = parse_duration(value);
  if (!parsed || *parsed <= 0 || *parsed > kMaxDurationSeconds) {
    return fail(fmt::format("expected a duration such as 2, 2s, 500ms (0 < d <= {}s)", kMaxDurationSeconds));
  }
  out = *parsed;
  return {};
}

const Flag kFlags[] = {
    {"port", "TCP port to listen on (default 7171)", true,
     [](std::string_view v, Config& c) { return set_int(v, c.port, 1, UINT16_MAX); }},
    {"bind", "address to listen on, IPv4 or IPv6 (default 0.0.0.0)", true,
     [](std::string_view v, Config& c) -> Result<void> {
       // Checked here, not only at bind(): a malformed address is a configuration
       // error (exit 2, which the unit's RestartPreventExitStatus= keeps from looping).
       if (!is_ip_address(v)) return fail("expected an IPv4 or IPv6 address such as 0.0.0.0, 127.0.0.1 or ::");
       c.bind = std::string(v);
       return {};
     }},
    {"threads", "worker event loops (default: CPUs available to the process)", true,
     [](std::string_view v, Config& c) { return set_int(v, c.threads, 1, kMaxThreads); }},
    {"memory-limit", "cache memory limit: bytes with K/M/G suffix, or auto = 70% of available memory (default auto)", true,
     [](std::string_view v, Config& c) -> Result<void> {
       if (v == "auto") {
         c.memory_limit.reset();
         return {};
       }
       auto bytes = parse_byte_size(v);
       if (!bytes || *bytes < kMinMemoryLimit) return fail("expected auto or a size of at least 1M such as 512M or 1G");
       c.memory_limit = *bytes;
       return {};
     }},
    {"shards", "independently locked store shards (default 16)", true,
     [](std::string_view v, Config& c) { return set_int(v, c.shards, 1, kMaxShards); }},
    {"max-connections", "open connections allowed across all loops (default 10000)", true,
     [](std::string_view v, Config& c) { return set_int(v, c.max_connections, 1, kMaxConnectionsLimit); }},
    {"read-timeout", "drop a client that has not finished its request after this long (default 2s)", true,
     [](std::string_view v, Config& c) { return set_duration(v, c.read_timeout); }},
    {"idle-timeout", "close an idle keep-alive connection after this long (default 120s)", true,
     [](std::string_view v, Config& c) { return set_duration(v, c.idle_timeout); }},
    {"drain-timeout", "on SIGTERM, longest wait for in-flight requests (default 5s)", true,
     [](std::string_view v, Config& c) { return set_duration(v, c.drain_timeout); }},
    {"send-timeout", "close a connection whose client has taken none of its responses for this long (default 30s)",
     true, [](std::string_view v, Config& c) { return set_duration(v, c.send_timeout); }},
    {"snapshot-path", "snapshot file: loaded at start, written at shutdown, every --snapshot-interval and on POST /snapshot (default empty: off)", true,
     [](std::string_view v, Config& c) -> Result<void> {
       c.snapshot_path = std::string(v);
       return {};
     }},
    {"snapshot-interval", "write a snapshot this often, 0 = only at shutdown and on request (default 5m)", true,
     [](std::string_view v, Config& c) -> Result<void> {
       auto parsed = parse_duration(v);
       if (!parsed || *parsed < 0 || *parsed > 86400 * 7) return fail("expected a duration such as 5m, 300s or 0 (0 <= d <= 7 days)");
       c.snapshot_interval = *parsed;
       return {};
     }},
    {"snapshot-timeout", "on SIGTERM, longest time the final snapshot may take before it is abandoned (default 30s)", true,
     [](std::string_view v, Config& c) { return set_duration(v, c.snapshot_timeout); }},
    {"log-level", "debug, info, warn or error (default info)", true,
     [](std::string_view v, Config& c) -> Result<void> {
       auto level = parse_log_level(v);
       if (!level) return fail("expected debug, info, warn or error");
       c.log_level = *level;
       return {};
     }},
    {"auth-token-file", "require Authorization: Bearer <token>, tokens one per line in this file, re-read on SIGHUP "
     "(or set KVCACHE_AUTH_TOKEN; default: no token, open)", true,
     [](std::string_view v, Config& c) { return set_path(v, c.auth_token_file); }},
    {"tls-cert", "serve TLS only (1.2 and 1.3): PEM certificate chain, re-read on SIGHUP (needs --tls-key)", true,
     [](std::string_view v, Config& c) { return set_path(v, c.tls_cert); }},
    {"tls-key", "PEM private key of --tls-cert, re-read on SIGHUP", true,
     [](std::string_view v, Config& c) { return set_path(v, c.tls_key); }},
    {"tls-client-ca", "mutual TLS: require client certificates signed by a CA in this PEM file, re-read on SIGHUP", true,
     [](std::string_view v, Config& c) { return set_path(v, c.tls_client_ca); }},
    {"check-config", "check the flags, environment, token file, TLS files and snapshot directory without "
     "listening; exit 0 if good, 2 with what to fix", false,
     [](std::string_view, Config& c) -> Result<void> {
       c.check_config = true;
       return {};
     }},
    {"health-check", "query http(s)://127.0.0.1:<port>/health and exit 0 if healthy, 1 (saying why) if not", false,
     [](std::string_view, Config& c) -> Result<void> {
       c.health_check = true;
       return {};
     }},
    {"version", "print the version and exit (also -V)", false,
     [](std::string_view, Config& c) -> Result<void> {
       c.version = true;
       return {};
     }},
    {"help", "print this help and exit (also -h)", false,
     [](std::string_view, Config& c) -> Result<void> {
       c.help = true;
       return {};
     }},
};

const Flag* find_flag(std::string_view name) {
  for (const Flag& flag : kFlags) {
    if (flag.name == name) return &flag;
  }
  return nullptr;
}

std::string env_name(std::string_view flag) {
  std::string name = "KVCACHE_";
  for (char c : flag) name += c == '-' ? '_' : static_cast<char>(c & ~0x20);
  return name;
}

}  // namespace

std::optional<uint64_t> parse_byte_size(std::string_view text) {
  uint64_t multiplier = 1;
  for (std::string_view unit : {"iB", "B"}) {
    if (text.size() > unit.size() + 1 && ends_with_ci(text, unit) && !std::isdigit(static_cast<unsigned char>(text[text.size() - unit.size() - 1]))) {
      text.remove_suffix(unit.size());
      break;
    }
  }
  if (!text.empty()) {
    switch (text.back() | 0x20) {
      case 'k': multiplier = 1ull << 10; break;
      case 'm': multiplier = 1ull << 20; break;
      case 'g': multiplier = 1ull << 30; break;
      case 't': multiplier = 1ull << 40; break;
      default: break;
    }
    if (multiplier != 1) text.remove_suffix(1);
  }
  auto number = parse_int<uint64_t>(text);
  if (!number || *number > UINT64_MAX / multiplier) return std::nullopt;
  return *number * multiplier;
}

std::optional<double> parse_duration(std::string_view text) {
  double scale = 1.0;
  if (ends_with_ci(text, "ms")) {
    scale = 0.001;
    text.remove_suffix(2);
  } else if (ends_with_ci(text, "s")) {
    text.remove_suffix(1);
  } else if (ends_with_ci(text, "m")) {
    scale = 60;
    text.remove_suffix(1);
  } else if (ends_with_ci(text, "h")) {
    scale = 3600;
    text.remove_suffix(1);
  }
  auto value = parse_decimal(text);
  if (!value) return std::nullopt;
  return *value * scale;
}

Result<void> parse_config(const std::vector<std::string_view>& args, const EnvLookup& env, Config& config) {
  // --help and --version answer whatever else the line holds (`kvcache --help
  // --port abc` prints the help), as most tools do.
  for (std::string_view arg : args) {
    if (arg == "--help" || arg == "-h") config.help = true;
    if (arg == "--version" || arg == "-V") config.version = true;
  }
  if (config.help || config.version) return {};
  // Flags first: a variable is read only for a flag the command line does not
  // set, so a bad KVCACHE_PORT cannot stop `kvcache --port 7172`.
  std::vector<const Flag*> given;
  for (size_t i = 0; i < args.size(); ++i) {
    std::string_view arg = args[i];
    if (arg.substr(0, 2) != "--") return fail(fmt::format("unexpected argument {:?} (see --help)", arg));
    arg.remove_prefix(2);
    std::optional<std::string_view> value;
    if (auto eq = arg.find('='); eq != std::string_view::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
    }
    const Flag* flag = find_flag(arg);
    if (flag == nullptr) return fail(fmt::format("unknown flag --{} (see --help)", arg));
    if (flag->takes_value && !value) {
      if (i + 1 >= args.size()) return fail(fmt::format("flag --{} needs a value", arg));
      value = args[++i];
    }
    if (!flag->takes_value && value) return fail(fmt::format("flag --{} takes no value", arg));
    Result<void> applied = flag->apply(value.value_or(""), config);
    if (!applied) return fail(fmt::format("invalid --{} {:?}: {}", arg, *value, applied.error()));
    given.push_back(flag);
  }
  for (const Flag& flag : kFlags) {
    if (!flag.takes_value || std::find(given.begin(), given.end(), &flag) != given.end()) continue;
    std::string name = env_name(flag.name);
    const char* value = env ? env(name.c_str()) : nullptr;
    if (value == nullptr) continue;
    Result<void> applied = flag.apply(value, config);
    if (!applied) return fail(fmt::format("invalid {}={:?}: {}", name, value, applied.error()));
  }
  if (config.tls_cert.empty() != config.tls_key.empty()) {
    return fail("--tls-cert and --tls-key go together: set both or neither");
  }
  if (!config.tls_client_ca.empty() && !config.tls()) return fail("--tls-client-ca needs --tls-cert and --tls-key");
  return {};
}

std::string usage_text() {
  std::string text =
      "kvcache: an in-memory key-value cache over HTTP/1.1\n\n"
      "usage: kvcache [flags]\n\n"
      "Every flag that takes a VALUE can also be set with an environment variable,\n"
      "KVCACHE_ + the flag name in upper case with '-' as '_' (e.g.\n"
      "KVCACHE_MEMORY_LIMIT=512M). Flags win over the environment.\n\n"
      "exit codes: 0 stopped cleanly; 1 cannot listen, or --health-check failed; 2 a bad flag,\n"
      "variable or file (what to fix is printed), or a snapshot that exists but cannot be read;\n"
      "3 stopped without writing the final snapshot.\n\nflags:\n";
  for (const Flag& flag : kFlags) {
    std::string left = fmt::format("  --{}{}", flag.name, flag.takes_value ? " VALUE" : "");
    text += fmt::format("{:<28}{}\n", left, flag.help);
  }
  return text;
}

}  // namespace kv

#include "config.h"
#include "memory_limit.h"

#include <doctest/doctest.h>

#include <cctype>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

using namespace kv;

namespace {

Result<void> parse(std::vector<std::string_view> args, Config& config,
                   std::map<std::string, std::string> env = {}) {
  return parse_config(args, [&](const char* name) -> const char* {
    auto it = env.find(name);
    return it == env.end() ? nullptr : it->second.c_str();
  }, config);
}

}  // namespace

TEST_CASE("defaults") {
  Config config;
  REQUIRE(parse({}, config).ok());
  CHECK(config.port == 7171);
  CHECK(config.bind == "0.0.0.0");
  CHECK(config.shards == 16);
  CHECK_FALSE(config.memory_limit);
  CHECK(config.read_timeout == 2.0);
  CHECK(config.idle_timeout == 120.0);
  CHECK(config.send_timeout == 30.0);
}

TEST_CASE("--send-timeout") {
  Config config;
  REQUIRE(parse({"--send-timeout", "1500ms"}, config).ok());
  CHECK(config.send_timeout == doctest::Approx(1.5));
  Config from_env;
  REQUIRE(parse({}, from_env, {{"KVCACHE_SEND_TIMEOUT", "7"}}).ok());
  CHECK(from_env.send_timeout == 7.0);
  Config bad;
  CHECK_FALSE(parse({"--send-timeout", "0"}, bad).ok());
}

TEST_CASE("flags in both spellings") {
  Config config;
  REQUIRE(parse({"--port", "8080", "--memory-limit=64M", "--threads", "3", "--read-timeout", "500ms",
                 "--idle-timeout=1.5", "--log-level", "debug", "--shards", "8", "--max-connections", "5"},
                config)
              .ok());
  CHECK(config.port == 8080);
  CHECK(config.memory_limit == 64ull << 20);
  CHECK(config.threads == 3);
  CHECK(config.read_timeout == doctest::Approx(0.5));
  CHECK(config.idle_timeout == doctest::Approx(1.5));
  CHECK(config.log_level == LogLevel::debug);
  CHECK(config.shards == 8);
  CHECK(config.max_connections == 5);
}

TEST_CASE("environment, and flags win over it") {
  Config config;
  REQUIRE(parse({"--port", "9000"}, config, {{"KVCACHE_PORT", "8000"}, {"KVCACHE_MEMORY_LIMIT", "1G"}}).ok());
  CHECK(config.port == 9000);
  CHECK(config.memory_limit == 1ull << 30);
  Config from_env;
  REQUIRE(parse({}, from_env, {{"KVCACHE_READ_TIMEOUT", "3s"}}).ok());
  CHECK(from_env.read_timeout == 3.0);
}

TEST_CASE("auth token file: flag or environment, never empty") {
  Config none;
  REQUIRE(parse({}, none).ok());
  CHECK(none.auth_token_file.empty());
  Config flag;
  REQUIRE(parse({"--auth-token-file", "/run/tokens"}, flag, {{"KVCACHE_AUTH_TOKEN_FILE", "/env/tokens"}}).ok());
  CHECK(flag.auth_token_file == "/run/tokens");
  Config env;
  REQUIRE(parse({}, env, {{"KVCACHE_AUTH_TOKEN_FILE", "/env/tokens"}}).ok());
  CHECK(env.auth_token_file == "/env/tokens");
  Config empty;
  CHECK_FALSE(parse({"--auth-token-file="}, empty).ok());
}

TEST_CASE("TLS files: flag or environment; cert and key together; a client CA needs both") {
  Config none;
  REQUIRE(parse({}, none).ok());
  CHECK_FALSE(none.tls());
  Config flags;
  REQUIRE(parse({"--tls-cert", "/c.pem", "--tls-key=/k.pem", "--tls-client-ca", "/ca.pem"}, flags).ok());
  CHECK(flags.tls());
  CHECK(flags.tls_cert == "/c.pem");
  CHECK(flags.tls_key == "/k.pem");
  CHECK(flags.tls_client_ca == "/ca.pem");
  Config env;
  REQUIRE(parse({"--tls-key", "/flag.key"}, env,
                {{"KVCACHE_TLS_CERT", "/env.pem"}, {"KVCACHE_TLS_KEY", "/env.key"}, {"KVCACHE_TLS_CLIENT_CA", "/env-ca.pem"}})
              .ok());
  CHECK(env.tls_cert == "/env.pem");
  CHECK(env.tls_key == "/flag.key");
  CHECK(env.tls_client_ca == "/env-ca.pem");
  for (std::vector<std::string_view> args : std::vector<std::vector<std::string_view>>{
           {"--tls-cert", "/c.pem"}, {"--tls-key", "/k.pem"}, {"--tls-client-ca", "/ca.pem"},
           {"--tls-client-ca", "/ca.pem", "--tls-cert", "/c.pem"}, {"--tls-cert="}}) {
    Config bad;
    Result<void> result = parse(args, bad);
    CAPTURE(args[0]);
    CHECK_FALSE(result.ok());
    CHECK(result.error().find("--tls-") != std::string::npos);
  }
}

TEST_CASE("bad values are errors that name the flag") {
  for (std::vector<std::string_view> args : std::vector<std::vector<std::string_view>>{
           {"--port", "abc"}, {"--port", "70000"}, {"--port", "0"}, {"--threads", "0"},
           {"--memory-limit", "12Q"}, {"--memory-limit", "100"}, {"--log-level", "loud"},
           {"--read-timeout", "-1"}, {"--idle-timeout", "0"}, {"--nope"}, {"--port"}, {"stray"},
           {"--help=yes"}}) {
    Config config;
    Result<void> result = parse(args, config);
    CAPTURE(args[0]);
    CHECK_FALSE(result.ok());
    CHECK_FALSE(result.error().empty());
  }
  Config config;
  Result<void> result = parse({}, config, {{"KVCACHE_PORT", "x"}});
  CHECK_FALSE(result.ok());
  CHECK(result.error().find("KVCACHE_PORT") != std::string::npos);
}

TEST_CASE("a variable is checked only where it is used") {
  // The flag overrides the bad variable, which is then never read.
  Config overridden;
  REQUIRE(parse({"--port", "19102"}, overridden, {{"KVCACHE_PORT", "abc"}}).ok());
  CHECK(overridden.port == 19102);
  Config overridden_bind;
  REQUIRE(parse({"--bind=127.0.0.1"}, overridden_bind, {{"KVCACHE_BIND", "nowhere"}}).ok());
  CHECK(overridden_bind.bind == "127.0.0.1");
  // --help uses no setting.
  Config help;
  REQUIRE(parse({"--help"}, help, {{"KVCACHE_PORT", "abc"}, {"KVCACHE_MEMORY_LIMIT", "lots"}}).ok());
  CHECK(help.help);
  // --help and --version win over anything else on the line (a bad value, an unknown flag).
  for (std::vector<std::string_view> args : std::vector<std::vector<std::string_view>>{
           {"--help", "--port", "abc"}, {"--port", "abc", "--help"}, {"-h"}, {"--nope", "-h"}}) {
    Config helped;
    REQUIRE(parse(args, helped, {{"KVCACHE_PORT", "abc"}}).ok());
    CHECK(helped.help);
  }
  for (std::vector<std::string_view> args : std::vector<std::vector<std::string_view>>{
           {"--version"}, {"-V"}, {"--port", "abc", "--version"}}) {
    Config versioned;
    REQUIRE(parse(args, versioned).ok());
    CHECK(versioned.version);
  }
  Config checked;
  REQUIRE(parse({"--check-config", "--port", "8000"}, checked).ok());
  CHECK(checked.check_config);
  CHECK_FALSE(parse({"-x"}, checked).ok());
  // A bad variable that nothing overrides is still an error.
  Config used;
  Result<void> result = parse({"--port", "19102"}, used, {{"KVCACHE_MEMORY_LIMIT", "lots"}});
  CHECK_FALSE(result.ok());
  CHECK(result.error().find("KVCACHE_MEMORY_LIMIT") != std::string::npos);
}

TEST_CASE("--bind takes an IPv4 or IPv6 address, checked at parse time") {
  for (std::string_view good : {"0.0.0.0", "127.0.0.1", "::", "::1", "fe80::1"}) {
    Config config;
    CAPTURE(good);
    CHECK(parse({"--bind", good}, config).ok());
  }
  for (std::string_view bad : {"localhost", "1.2.3", "300.1.1.1", "127.0.0.1:7171", "[::1]", " 127.0.0.1", ""}) {
    Config config;
    CAPTURE(bad);
    Result<void> result = parse({"--bind", bad}, config);
    CHECK_FALSE(result.ok());
    CHECK(result.error().find("--bind") != std::string::npos);
    Config from_env;
    CHECK_FALSE(parse({}, from_env, {{"KVCACHE_BIND", std::string(bad)}}).ok());
  }
}

TEST_CASE("byte sizes and durations") {
  CHECK(parse_byte_size("1048576") == 1048576u);
  CHECK(parse_byte_size("64k") == 65536u);
  CHECK(parse_byte_size("2G") == 2ull << 30);
  CHECK(parse_byte_size("512MB") == 512ull << 20);
  CHECK(parse_byte_size("1GiB") == 1ull << 30);
  CHECK_FALSE(parse_byte_size("G"));
  CHECK_FALSE(parse_byte_size("-1M"));
  CHECK_FALSE(parse_byte_size("99999999999999999999T"));
  CHECK(parse_duration("2") == 2.0);
  CHECK(parse_duration("250ms") == doctest::Approx(0.25));
  CHECK_FALSE(parse_duration("soon"));
}

TEST_CASE("--help and the flag table of docs/operations.md list the same flags, with their variables") {
  // The flags as --help prints them (from kFlags): "  --name VALUE  help".
  std::map<std::string, bool> usage;  // name -> takes a value
  std::istringstream lines(usage_text());
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("  --", 0) != 0) continue;
    size_t end = line.find(' ', 4);
    usage[line.substr(2, end - 2)] = line.compare(end, 7, " VALUE ") == 0;
  }
  CHECK(usage.size() >= 17);
  // The table's rows: "| `--name` | `KVCACHE_NAME` | ...".
  std::ifstream docs(KVCACHE_SOURCE_ROOT "/docs/operations.md");
  REQUIRE(docs);
  std::map<std::string, std::string> table;  // name -> its variable column
  for (std::string line; std::getline(docs, line);) {
    if (line.rfind("| `--", 0) != 0) continue;
    size_t name_end = line.find_first_of("` ", 3);  // "--flag" or "--flag VALUE"
    size_t variable = line.find("| ", name_end) + 2;
    table[line.substr(3, name_end - 3)] = line.substr(variable, line.find(" |", variable) - variable);
  }
  for (const auto& row : usage) {  // no structured bindings: clang 14 cannot capture them (INFO)
    const std::string& flag = row.first;
    const bool takes_value = row.second;
    INFO(flag);
    REQUIRE(table.count(flag) == 1);
    std::string variable = "KVCACHE_" + flag.substr(2);
    for (char& c : variable) c = c == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    CHECK(table[flag] == (takes_value ? "`" + variable + "`" : std::string("-")));
    if (!takes_value) continue;
    // The variable is read: a value the flag refuses is refused from it too,
    // and the error names it (or the flag, for a flag that needs another).
    Config config;
    Result<void> bad = parse_config({}, [&](const char* name) { return name == variable ? "\x01" : nullptr; }, config);
    if (!bad.ok()) CHECK((bad.error().find(variable) != std::string::npos || bad.error().find(flag) != std::string::npos));
  }
  for (const auto& row : table) {
    const std::string& flag = row.first;
    INFO(flag);
    CHECK(usage.count(flag) == 1);
  }
}

TEST_CASE("memory limit sources") {
  CHECK(parse_cgroup_limit("536870912\n") == 536870912u);
  CHECK_FALSE(parse_cgroup_limit("max\n"));
  CHECK_FALSE(parse_cgroup_limit("9223372036854771712\n"));  // cgroup v1 "unlimited"
  CHECK_FALSE(parse_cgroup_limit("garbage"));
  CHECK(parse_meminfo_total("MemTotal:        2000000 kB\nMemFree: 1 kB\n") == 2000000ull * 1024);
  CHECK_FALSE(parse_meminfo_total("nothing here"));
}

namespace {

void write(const std::filesystem::path& path, const std::string& content) {
  std::filesystem::create_directories(path.parent_path());
  std::ofstream(path) << content;
}

}  // namespace

TEST_CASE("detect_available_memory reads cgroup v2, v1, then MemTotal") {
  auto root = std::filesystem::temp_directory_path() / ("kvcache-memtest-" + std::to_string(getpid()));
  std::filesystem::remove_all(root);
  write(root / "proc/meminfo", "MemTotal:        2048000 kB\n");
  AvailableMemory bare = detect_available_memory(root.string());
  CHECK(bare.bytes == 2048000ull * 1024);
  CHECK(bare.source == "MemTotal");
  CHECK(default_memory_limit(bare) == bare.bytes / 10 * 7);

  write(root / "proc/self/cgroup", "0::/system.slice/kvcache.service\n");
  write(root / "sys/fs/cgroup/system.slice/kvcache.service/memory.max", "max\n");
  write(root / "sys/fs/cgroup/system.slice/memory.max", "1073741824\n");
  AvailableMemory v2 = detect_available_memory(root.string());
  CHECK(v2.bytes == 1073741824u);
  CHECK(v2.source == "cgroup v2");

  std::filesystem::remove_all(root / "sys");
  write(root / "proc/self/cgroup", "5:memory:/docker/abc\n0::/\n");
  write(root / "sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes", "536870912\n");
  AvailableMemory v1 = detect_available_memory(root.string());
  CHECK(v1.bytes == 536870912u);
  CHECK(v1.source == "cgroup v1");
  std::filesystem::remove_all(root);
}

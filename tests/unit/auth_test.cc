#include "auth.h"
#include "log.h"

#include <doctest/doctest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

using namespace kv;

namespace {

constexpr std::string_view kToken = "0123456789abcdef";  // exactly the minimum length
constexpr std::string_view kOther = "ABCDEFGHIJKLMNOP-._~+/xyz==";

std::filesystem::path write_temp(std::string_view name, std::string_view text) {
  auto path = std::filesystem::temp_directory_path() / (std::string("kvcache-auth-test-") + std::string(name));
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

}  // namespace

TEST_CASE("token text: one token per line, final newline, CRLF and blank lines allowed") {
  for (std::string_view text : {"0123456789abcdef", "0123456789abcdef\n", "0123456789abcdef\r\n",
                                "\n0123456789abcdef\n\n"}) {
    Result<Tokens> parsed = parse_tokens(text, "test");
    REQUIRE_MESSAGE(parsed, text);
    REQUIRE(parsed.value()->tokens.size() == 1);
    CHECK(parsed.value()->tokens[0] == kToken);
  }
  Result<Tokens> two = parse_tokens("0123456789abcdef\nABCDEFGHIJKLMNOP-._~+/xyz==\n", "test");
  REQUIRE(two);
  CHECK(two.value()->tokens == std::vector<std::string>{std::string(kToken), std::string(kOther)});
}

TEST_CASE("token text: empty, short or unsendable tokens are errors naming the source") {
  CHECK(parse_tokens("", "KVCACHE_AUTH_TOKEN").error() == "KVCACHE_AUTH_TOKEN: no token (empty)");
  CHECK(parse_tokens("\n\r\n", "src").error() == "src: no token (empty)");
  Result<Tokens> short_token = parse_tokens("0123456789abcdef\n0123456789abcde\n", "src");
  REQUIRE_FALSE(short_token);
  CHECK(short_token.error() == "src: the token on line 2 is shorter than 16 bytes");
  for (std::string_view bad : {"0123456789 abcdef", "0123456789abcdef\t", "0123456789=abcdef", "0123456789abcdé",
                               "================"}) {
    Result<Tokens> parsed = parse_tokens(bad, "src");
    REQUIRE_MESSAGE(!parsed, bad);
    CHECK(parsed.error().find("src: the token on line 1") == 0);
  }
}

TEST_CASE("token file: read, missing, empty, oversized") {
  auto good = write_temp("good", "0123456789abcdef\n");
  Result<Tokens> parsed = load_token_file(good.string());
  REQUIRE(parsed);
  CHECK(parsed.value()->tokens[0] == kToken);

  Result<Tokens> missing = load_token_file("/nonexistent/kvcache-token");
  REQUIRE_FALSE(missing);
  CHECK(missing.error() == "--auth-token-file /nonexistent/kvcache-token: cannot read: No such file or directory");

  auto empty = write_temp("empty", "");
  CHECK(load_token_file(empty.string()).error() == "--auth-token-file " + empty.string() + ": no token (empty)");

  auto huge = write_temp("huge", std::string(kMaxTokenFileBytes + 1, 'a'));
  CHECK(load_token_file(huge.string()).error().find("larger than 65536 bytes") != std::string::npos);
  for (const auto& path : {good, empty, huge}) std::filesystem::remove(path);
}

TEST_CASE("configured tokens: file, environment, neither, both") {
  REQUIRE(load_configured_tokens("", nullptr));
  CHECK_FALSE(load_configured_tokens("", nullptr).value());
  Result<Tokens> env = load_configured_tokens("", "0123456789abcdef");
  REQUIRE(env);
  REQUIRE(env.value());
  CHECK(load_configured_tokens("", "short").error() == "KVCACHE_AUTH_TOKEN: the token on line 1 is shorter than 16 bytes");
  CHECK(load_configured_tokens("/x", "0123456789abcdef").error().find("use one") != std::string::npos);
}

TEST_CASE("constant-time compare: equal only for identical bytes and lengths") {
  CHECK(constant_time_equal(kToken, kToken));
  CHECK_FALSE(constant_time_equal("", kToken));
  CHECK_FALSE(constant_time_equal(kToken.substr(0, 15), kToken));
  CHECK_FALSE(constant_time_equal(std::string(kToken) + "x", kToken));
  CHECK_FALSE(constant_time_equal(std::string(kToken) + '\0', kToken));  // padding with 0 is not a match
  std::string flipped(kToken);
  for (size_t i = 0; i < flipped.size(); ++i) {
    flipped[i] ^= 1;
    CHECK_FALSE(constant_time_equal(flipped, kToken));
    flipped[i] ^= 1;
  }
  CHECK(constant_time_equal(flipped, kToken));
}

TEST_CASE("token view: missing, wrong scheme, wrong token, any listed token, rotation") {
  TokenStore store(parse_tokens("0123456789abcdef\nABCDEFGHIJKLMNOP-._~+/xyz==\n", "t").value());
  TokenView view(store);
  CHECK(view.check("") == AuthResult::missing);
  CHECK(view.check("Bearer 0123456789abcdef") == AuthResult::ok);
  CHECK(view.check("bearer   ABCDEFGHIJKLMNOP-._~+/xyz==") == AuthResult::ok);
  CHECK(view.check("Bearer 0123456789abcdeF") == AuthResult::wrong);
  CHECK(view.check("Bearer ") == AuthResult::wrong);
  CHECK(view.check("Basic MDEyMzQ1Njc4OWFiY2RlZg==") == AuthResult::wrong);
  CHECK(view.check("0123456789abcdef") == AuthResult::wrong);

  store.replace(parse_tokens("fedcba9876543210\n", "t").value());
  CHECK(view.check("Bearer 0123456789abcdef") == AuthResult::wrong);
  CHECK(view.check("Bearer fedcba9876543210") == AuthResult::ok);
}

TEST_CASE("log throttle: one line per interval, the rest counted") {
  LogThrottle throttle(1000);
  uint64_t suppressed = 99;
  CHECK(throttle.allow(5000, suppressed));
  CHECK(suppressed == 0);
  CHECK_FALSE(throttle.allow(5001, suppressed));
  CHECK_FALSE(throttle.allow(5999, suppressed));
  CHECK(throttle.allow(6000, suppressed));
  CHECK(suppressed == 2);
}

#include "auth.h"

#include <fmt/core.h>

#include "ascii.h"
#include "log.h"

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>

namespace kv {
namespace {

// RFC 6750 b64token / RFC 9110 token68: what a client can put after "Bearer ".
bool is_token68(std::string_view token) {
  size_t end = token.size();
  while (end > 0 && token[end - 1] == '=') --end;  // trailing '=' padding only
  if (end == 0) return false;
  for (size_t i = 0; i < end; ++i) {
    unsigned char c = token[i];
    bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
              c == '_' || c == '~' || c == '+' || c == '/';
    if (!ok) return false;
  }
  return true;
}

}  // namespace

Result<Tokens> parse_tokens(std::string_view text, std::string_view source) {
  auto set = std::make_shared<TokenSet>();
  size_t line_number = 0;
  while (!text.empty()) {
    size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) continue;
    if (line.size() < kMinTokenBytes) {
      return fail(fmt::format("{}: the token on line {} is shorter than {} bytes", source, line_number,
                                   kMinTokenBytes));
    }
    if (!is_token68(line)) {
      return fail(fmt::format("{}: the token on line {} has a character outside A-Z a-z 0-9 - . _ ~ + / "
                                   "(and trailing =)",
                                   source, line_number));
    }
    set->tokens.emplace_back(line);
  }
  if (set->tokens.empty()) return fail(fmt::format("{}: no token (empty)", source));
  return Tokens(std::move(set));
}

Result<Tokens> load_token_file(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) return fail(fmt::format("--auth-token-file {}: cannot read: {}", path, std::strerror(errno)));
  std::string text(kMaxTokenFileBytes + 1, '\0');
  file.read(text.data(), static_cast<std::streamsize>(text.size()));
  if (file.bad()) return fail(fmt::format("--auth-token-file {}: cannot read", path));
  text.resize(static_cast<size_t>(file.gcount()));
  if (text.size() > kMaxTokenFileBytes) {
    return fail(fmt::format("--auth-token-file {}: larger than {} bytes", path, kMaxTokenFileBytes));
  }
  return parse_tokens(text, fmt::format("--auth-token-file {}", path));
}

Result<Tokens> load_configured_tokens(const std::string& file, const char* env_token) {
  if (!file.empty() && env_token != nullptr) {
    return fail("both --auth-token-file (KVCACHE_AUTH_TOKEN_FILE) and KVCACHE_AUTH_TOKEN are set: use one");
  }
  if (!file.empty()) return load_token_file(file);
  if (env_token != nullptr) return parse_tokens(env_token, "KVCACHE_AUTH_TOKEN");
  return Tokens();
}

bool constant_time_equal(std::string_view presented, std::string_view expected) {
  // Walk the expected token whatever was presented; a presented byte past its
  // end reads as 0, and a length difference alone makes the result false.
  unsigned char difference = presented.size() == expected.size() ? 0 : 1;
  for (size_t i = 0; i < expected.size(); ++i) {
    unsigned char p = i < presented.size() ? static_cast<unsigned char>(presented[i]) : 0;
    difference |= p ^ static_cast<unsigned char>(expected[i]);
  }
  return difference == 0;
}

void TokenStore::replace(std::shared_ptr<const TokenSet> tokens) {
  std::lock_guard lock(mutex_);
  tokens_ = std::move(tokens);
  generation_.fetch_add(1, std::memory_order_release);
}

std::shared_ptr<const TokenSet> TokenStore::current() const {
  std::lock_guard lock(mutex_);
  return tokens_;
}

AuthResult TokenView::check(std::string_view authorization) {
  if (authorization.empty()) return AuthResult::missing;
  uint64_t generation = store_.generation();
  if (generation != generation_) {
    tokens_ = store_.current();
    generation_ = generation;
  }
  constexpr std::string_view kScheme = "Bearer ";
  if (!starts_with_ci(authorization, kScheme)) return AuthResult::wrong;
  std::string_view presented = authorization.substr(kScheme.size());
  while (!presented.empty() && presented.front() == ' ') presented.remove_prefix(1);
  // Every token is compared in full, so the time does not tell which one nearly matched.
  bool match = false;
  for (const std::string& token : tokens_->tokens) match |= constant_time_equal(presented, token);
  return match ? AuthResult::ok : AuthResult::wrong;
}

void log_auth_failure(AuthResult reason) {
  static LogThrottle throttle;
  throttle.warn([&](uint64_t suppressed) {
    log(LogLevel::warn, "auth: rejected a request with {} bearer token ({} more rejected since the last such line; "
        "see kvcache_auth_failures_total)",
        reason == AuthResult::missing ? "no" : "a wrong", suppressed);
  });
}

}  // namespace kv

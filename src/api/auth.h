// Optional bearer-token access control: the token file's format, the set of
// tokens a request may present, and the check each request goes through.
//
// Tokens are rotated without downtime by listing the new one next to the old
// one, sending SIGHUP, moving clients over, then removing the old one.
#pragma once

#include "result.h"

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace kv {

constexpr size_t kMinTokenBytes = 16;
// Bounds a token file's read: a token list is never large.
constexpr size_t kMaxTokenFileBytes = 64 * 1024;

struct TokenSet {
  std::vector<std::string> tokens;
};

using Tokens = std::shared_ptr<const TokenSet>;

// One token per line; a final newline, CRLF line ends and blank lines are
// allowed. Each token must be >= kMinTokenBytes of RFC 6750 token68
// characters. `source` names where the text came from, for the error message.
Result<Tokens> parse_tokens(std::string_view text, std::string_view source);

// Reads and parses a token file (bounded by kMaxTokenFileBytes).
Result<Tokens> load_token_file(const std::string& path);

// The tokens configured at start: from the file when `file` is set, else from
// `env_token` (KVCACHE_AUTH_TOKEN) when set; both set is an error. Neither:
// null tokens and no error, access stays open.
Result<Tokens> load_configured_tokens(const std::string& file, const char* env_token);

// Compares without an early exit: the time taken depends on the lengths only,
// never on where the first differing byte is.
bool constant_time_equal(std::string_view presented, std::string_view expected);

enum class AuthResult : uint8_t { ok, missing, wrong };

// The current tokens, shared by all workers. Written by the main thread on
// SIGHUP; each worker's TokenView picks a new set up by its generation.
class TokenStore {
 public:
  explicit TokenStore(std::shared_ptr<const TokenSet> tokens) : tokens_(std::move(tokens)) {}
  void replace(std::shared_ptr<const TokenSet> tokens);
  std::shared_ptr<const TokenSet> current() const;
  uint64_t generation() const { return generation_.load(std::memory_order_acquire); }

 private:
  mutable std::mutex mutex_;
  std::shared_ptr<const TokenSet> tokens_;  // guarded by mutex_
  std::atomic<uint64_t> generation_{0};
};

// A worker's view of the tokens: one relaxed atomic load per request, the
// store's lock only when the set has changed.
class TokenView {
 public:
  explicit TokenView(const TokenStore& store) : store_(store), tokens_(store.current()) {}
  // `authorization` is the request's Authorization header value, if any.
  AuthResult check(std::string_view authorization);

 private:
  const TokenStore& store_;
  uint64_t generation_ = 0;
  std::shared_ptr<const TokenSet> tokens_;
};

// Logs a rejected request (reason: missing or wrong), at most once a second.
void log_auth_failure(AuthResult reason);

}  // namespace kv

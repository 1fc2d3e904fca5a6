// The API: routes a parsed request to the store and writes the response. The
// one place where HTTP requests become store operations: main.cc owns the
// store (and its TTL sweep), the worker only passes it through to here.
#pragma once

#include "auth.h"
#include "gzip.h"
#include "http_parser.h"
#include "http_response.h"
#include "metrics.h"
#include "request_body.h"
#include "snapshot.h"
#include "store.h"

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace kv {

// Bodies built before their head (mget, metrics) go to a scratch buffer kept
// at this capacity; an outsized one grows it until trim().
constexpr size_t kScratchKeepCapacity = 64 * 1024;

// One per worker thread; holds that thread's reusable scratch buffers.
class RequestHandler {
 public:
  // With `tokens`, every request but GET and HEAD /health must present one of them.
  RequestHandler(Store& store, const Metrics& metrics, WorkerMetrics& counters, const http::DateHeader& date,
                 const TokenStore* tokens = nullptr);

  // Appends the full response to out (its head alone for HEAD). `body` is
  // followed by RequestBodyDecoder::kPadding readable bytes. A response body
  // built larger than `body_limit` is replaced by a 503 (the connection
  // buffer budget is spent; see connection.h).
  void handle(const http::Request& request, std::string_view body, http::ConnectionMode mode, std::string& out,
              size_t body_limit = SIZE_MAX);

  // Answers a request the HTTP layer rejected (bad framing, timeout, overload),
  // with "Connection: close". `method`: of the rejected request, if known.
  void reject(int code, std::string_view message, std::string& out, http::Method method = http::Method::other);

  // POST /snapshot answers when the snapshot is written, without blocking
  // the loop: handle() then appends nothing and take_deferred() is true
  // (once); wake runs on the snapshot thread when it is done, and the loop
  // then calls finish_snapshot() for the response. One snapshot at a time.
  void enable_snapshots(Snapshotter* snapshots, std::function<void()> wake);
  bool take_deferred() { return std::exchange(deferred_, false); }
  void finish_snapshot(std::string& out);

  // Gives back what an outsized body (a large /mget) grew: scratch_ and the compressor's output.
  void trim();
  size_t scratch_capacity() const { return scratch_.capacity(); }

 private:
  void route(const http::Request& request, std::string_view body, http::ConnectionMode mode, std::string& out);
  // What every request passes before its endpoint runs: the bearer token and
  // the body's Content-Encoding (a gzip body is replaced by its decompressed
  // bytes). Returns false when it has answered the request itself.
  bool admit(const http::Request& request, std::string_view& body, http::ConnectionMode mode, std::string& out);
  void put(std::string_view body, http::ConnectionMode mode, std::string& out);
  void get(std::string_view query, http::ConnectionMode mode, std::string& out);
  void del(std::string_view body, http::ConnectionMode mode, std::string& out);
  void mput(std::string_view body, http::ConnectionMode mode, std::string& out);
  void mget(std::string_view body, http::ConnectionMode mode, std::string& out);
  void metrics(http::ConnectionMode mode, std::string& out);
  void snapshot(http::ConnectionMode mode, std::string& out);
  // Writes a {"status","message"} response and counts it.
  void message(int code, std::string_view text, http::ConnectionMode mode, std::string& out,
               std::string_view extra_headers = {});
  // Sends scratch_ as the body, gzip-compressed when the client accepts it and it is large enough.
  void body_response(int code, std::string_view content_type, http::ConnectionMode mode, std::string& out);

  Store& store_;
  const Metrics& metrics_;
  WorkerMetrics& counters_;
  const http::DateHeader& date_;
  RequestBodyDecoder decoder_;
  std::vector<BatchPut> batch_;          // the /mput being stored
  Endpoint endpoint_ = Endpoint::other;  // of the request being handled
  size_t body_limit_ = SIZE_MAX;         // of the request being handled
  std::string_view accept_encoding_;     // of the request being handled
  std::optional<TokenView> tokens_;      // set when access needs a token
  gzip::Inflater inflater_;
  gzip::Deflater deflater_;
  std::string scratch_;                  // bodies that are built before their head
  char key_buffer_[http::kMaxTargetBytes];
  Snapshotter* snapshots_ = nullptr;
  std::function<void()> wake_;
  bool deferred_ = false;
  http::ConnectionMode deferred_mode_ = http::ConnectionMode::keep_alive;
};

}  // namespace kv

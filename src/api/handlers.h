// The API: routes a parsed request to the store and writes the response. The
// one place where HTTP requests become store operations: main.cc owns the
// store (and its TTL sweep), the worker only passes it through to here.
#pragma once

#include "auth.h"
#include "gzip.h"
#include "http_handler.h"
#include "http_parser.h"
#include "http_response.h"
#include "metrics.h"
#include "request_body.h"
#include "snapshot.h"
#include "store.h"

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace kv {

// The API's metrics (declared in handlers.cc): requests by endpoint and
// status, 401s by reason, gzip responses; kept in WorkerCounters.
extern const MetricTable kApiMetrics;

// One worker thread's row of the API's WorkerCounters (written by it alone).
class ApiCounters {
 public:
  explicit ApiCounters(Counter* row) : row_(row) {}
  // endpoint: an index in RequestHandler::kEndpoints, kEndpointCount for none.
  void count_request(size_t endpoint, int code);
  void count_auth_failure(bool missing);
  void count_gzip_response();

 private:
  Counter* row_;
};

// Bodies built before their head (mget, metrics) go to a scratch buffer kept
// at this capacity; an outsized one grows it until trim().
constexpr size_t kScratchKeepCapacity = 64 * 1024;

// One per worker thread; holds that thread's reusable scratch buffers. The
// connection layer sees it only as an http::Handler (http_handler.h).
class RequestHandler final : public http::Handler {
 public:
  using Serve = void (RequestHandler::*)(const http::Request& request, std::string_view body,
                                          http::ConnectionMode mode, std::string& out);
  // One row per endpoint: adding an endpoint touches this table (handlers.cc)
  // and its handler, nothing else.
  struct Endpoint {
    std::string_view name;  // its label in /metrics
    std::string_view path;
    http::Method method;    // a GET endpoint answers HEAD too
    bool open;              // served without a token (load balancers' health checks)
    Serve serve;
    // The statuses it answers in normal use: their request counters exist
    // from the start, at zero, as client libraries create known series.
    std::span<const int> codes;
  };
  static const Endpoint kEndpoints[];
  static const size_t kEndpointCount;
  static std::span<const Endpoint> endpoints() { return {kEndpoints, kEndpointCount}; }

  // With `tokens`, every request but those to an open endpoint must present one of them.
  RequestHandler(Store& store, const Metrics& metrics, ApiCounters counters, const http::DateHeader& date,
                 const TokenStore* tokens = nullptr);

  // http::Handler. A response body built larger than `body_limit` is
  // replaced by a 503 (the connection buffer budget is spent; see connection.h).
  http::Handled handle(const http::Request& request, std::string_view body, http::ConnectionMode mode,
                       std::string& out, size_t body_limit = SIZE_MAX) override;
  void reject(int code, std::string_view message, std::string& out, http::Method method = http::Method::other,
              std::string_view extra_headers = {}, std::string_view target = {}) override;
  void out_of_memory(std::string& out, size_t start, http::ConnectionMode mode, http::Method method) override;
  // The one deferred endpoint: POST /snapshot answers when the snapshot is
  // written, without blocking the loop: handle() then returns deferred; wake
  // runs on the snapshot thread when it is done, and the loop then calls
  // complete_deferred() for the response (always: it frees the Snapshotter
  // for the next request). One snapshot at a time.
  void enable_snapshots(Snapshotter* snapshots, std::function<void()> wake);
  void complete_deferred(std::string& out) override;

  // Gives back what an outsized body (a large /mget) grew: scratch_ and the compressor's output.
  void trim() override;
  size_t scratch_capacity() const { return scratch_.capacity(); }

 private:
  void route(const http::Request& request, std::string_view body, http::ConnectionMode mode, std::string& out);
  // What every request passes before its endpoint runs: the bearer token and
  // the body's Content-Encoding (a gzip body is replaced by its decompressed
  // bytes). Returns false when it has answered the request itself.
  bool admit(const http::Request& request, std::string_view& body, http::ConnectionMode mode, std::string& out);
  // The endpoints (Serve).
  void put(const http::Request& request, std::string_view body, http::ConnectionMode mode, std::string& out);
  void get(const http::Request& request, std::string_view body, http::ConnectionMode mode, std::string& out);
  void del(const http::Request& request, std::string_view body, http::ConnectionMode mode, std::string& out);
  void mput(const http::Request& request, std::string_view body, http::ConnectionMode mode, std::string& out);
  void mget(const http::Request& request, std::string_view body, http::ConnectionMode mode, std::string& out);
  void health(const http::Request& request, std::string_view body, http::ConnectionMode mode, std::string& out);
  void metrics(const http::Request& request, std::string_view body, http::ConnectionMode mode, std::string& out);
  void snapshot(const http::Request& request, std::string_view body, http::ConnectionMode mode, std::string& out);
  void flush(const http::Request& request, std::string_view body, http::ConnectionMode mode, std::string& out);
  void ttl(const http::Request& request, std::string_view body, http::ConnectionMode mode, std::string& out);
  void expire(const http::Request& request, std::string_view body, http::ConnectionMode mode, std::string& out);
  // Any path: 204 with the endpoint's Allow ("*": the server's), else 404.
  void options(const http::Request& request, http::ConnectionMode mode, std::string& out);
  // The URL-decoded, validated `key` query parameter (/get, /ttl); false when it has answered 400.
  bool read_key_param(const http::Request& request, http::ConnectionMode mode, std::string& out,
                      std::string_view& key);
  // Counts a response of the request being handled.
  void count(int code);
  // Writes a {"status","message"} response and counts it.
  void message(int code, std::string_view text, http::ConnectionMode mode, std::string& out,
               std::string_view extra_headers = {});
  // Answers a body the decoder refused (400, or 503 when it could not allocate).
  void body_error(http::ConnectionMode mode, std::string& out);
  // Sends scratch_ as the body, gzip-compressed when the client accepts it and it is large enough.
  void body_response(int code, std::string_view content_type, http::ConnectionMode mode, std::string& out);

  Store& store_;
  const Metrics& metrics_;
  ApiCounters counters_;
  const http::DateHeader& date_;
  RequestBodyDecoder decoder_;
  std::vector<BatchPut> batch_;          // the /mput being stored
  const Endpoint* endpoint_ = nullptr;   // of the request being handled; null: none of them
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
  const Endpoint* deferred_endpoint_ = nullptr;
  http::ConnectionMode deferred_mode_ = http::ConnectionMode::keep_alive;
};

}  // namespace kv

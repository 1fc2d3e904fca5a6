#include "handlers.h"

#include "json_out.h"
#include "url.h"
#include "validation.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <iterator>

namespace kv {
namespace {

using http::ConnectionMode;

constexpr std::string_view kKeyNotFound = "Key not found.";
constexpr std::string_view kHealthy = R"({"status":"OK"})";
// Bodies built in scratch_ may be sent compressed, so caches must key on Accept-Encoding.
constexpr std::string_view kVary = "Vary: Accept-Encoding\r\n";
constexpr std::string_view kGzipHeaders = "Content-Encoding: gzip\r\nVary: Accept-Encoding\r\n";
constexpr std::string_view kMissingToken = "WWW-Authenticate: Bearer realm=\"kvcache\"\r\n";
// RFC 6750 3.1: a presented token that is not accepted is an invalid_token.
constexpr std::string_view kWrongToken = "WWW-Authenticate: Bearer realm=\"kvcache\", error=\"invalid_token\"\r\n";
// The methods of an endpoint (405, OPTIONS) and of the server as a whole (OPTIONS *).
constexpr std::string_view kAllowGet = "Allow: GET, HEAD, OPTIONS\r\n";
constexpr std::string_view kAllowPost = "Allow: POST, OPTIONS\r\n";
constexpr std::string_view kAllowServer = "Allow: GET, HEAD, POST, OPTIONS\r\n";
// A busy snapshot is seconds long: a client that retries at once only gets another 409.
constexpr std::string_view kRetrySnapshot = "Retry-After: 5\r\n";

}  // namespace

namespace {

constexpr int kReadCodes[] = {200, 400, 401, 404};  // get, delete, ttl, expire
constexpr int kWriteCodes[] = {200, 400, 401, 507};  // put, mput
constexpr int kMgetCodes[] = {200, 400, 401};
constexpr int kHealthCodes[] = {200};
constexpr int kMetricsCodes[] = {200, 401};
constexpr int kSnapshotCodes[] = {200, 401, 409, 500};
constexpr int kFlushCodes[] = {200, 401};
constexpr int kOtherCodes[] = {404};  // no endpoint

}  // namespace

const RequestHandler::Endpoint RequestHandler::kEndpoints[] = {
    {"get", "/get", http::Method::get, false, &RequestHandler::get, kReadCodes},
    {"put", "/put", http::Method::post, false, &RequestHandler::put, kWriteCodes},
    {"delete", "/delete", http::Method::post, false, &RequestHandler::del, kReadCodes},
    {"mput", "/mput", http::Method::post, false, &RequestHandler::mput, kWriteCodes},
    {"mget", "/mget", http::Method::post, false, &RequestHandler::mget, kMgetCodes},
    {"health", "/health", http::Method::get, true, &RequestHandler::health, kHealthCodes},
    {"metrics", "/metrics", http::Method::get, false, &RequestHandler::metrics, kMetricsCodes},
    {"snapshot", "/snapshot", http::Method::post, false, &RequestHandler::snapshot, kSnapshotCodes},
    {"flush", "/flush", http::Method::post, false, &RequestHandler::flush, kFlushCodes},
    {"ttl", "/ttl", http::Method::get, false, &RequestHandler::ttl, kReadCodes},
    {"expire", "/expire", http::Method::post, false, &RequestHandler::expire, kReadCodes},
};
const size_t RequestHandler::kEndpointCount = std::size(kEndpoints);

namespace {

// A request to no endpoint is counted as "other", and so is a status missing from http::kStatusCodes.
constexpr std::string_view kOther = "other";
constexpr size_t kStatusSlots = http::kStatusCount + 1;

// "200", "404", ...: the code label's values.
constexpr auto kCodeText = [] {
  std::array<std::array<char, 3>, http::kStatusCount> text{};
  for (size_t i = 0; i < http::kStatusCount; ++i) {
    int code = http::kStatusCodes[i].code;
    text[i] = {static_cast<char>('0' + code / 100), static_cast<char>('0' + code / 10 % 10),
               static_cast<char>('0' + code % 10)};
  }
  return text;
}();

std::string_view endpoint_label(size_t index) {
  return index < RequestHandler::kEndpointCount ? RequestHandler::kEndpoints[index].name : kOther;
}

std::string_view code_label(size_t index) {
  return index < http::kStatusCount ? std::string_view(kCodeText[index].data(), 3) : kOther;
}

bool known_request_series(size_t series) {
  size_t endpoint = series / kStatusSlots;
  size_t status = series % kStatusSlots;
  if (status == http::kStatusCount) return false;
  std::span<const int> codes =
      endpoint < RequestHandler::kEndpointCount ? RequestHandler::kEndpoints[endpoint].codes : kOtherCodes;
  return std::find(codes.begin(), codes.end(), http::kStatusCodes[status].code) != codes.end();
}

constexpr std::string_view kAuthReasons[] = {"missing", "wrong"};
const MetricLabel kRequestLabels[] = {{"endpoint", RequestHandler::kEndpointCount + 1, endpoint_label},
                                      {"code", kStatusSlots, code_label}};
constexpr MetricLabel kAuthLabels[] = {label<kAuthReasons>("reason")};

const MetricDecl kApiMetricDecls[] = {
    {"kvcache_requests_total", MetricType::counter, "HTTP requests answered, by endpoint and status code.",
     kRequestLabels, {}, 1, known_request_series},
    {"kvcache_auth_failures_total", MetricType::counter, "Requests refused with 401, by reason.", kAuthLabels},
    {"kvcache_gzip_responses_total", MetricType::counter, "Responses sent gzip-compressed."},
};
constexpr MetricTable kApiDecls(kApiMetricDecls);
const size_t kAuthFailuresSlot = slot_of(kApiDecls, "kvcache_auth_failures_total");
const size_t kGzipResponsesSlot = slot_of(kApiDecls, "kvcache_gzip_responses_total");

}  // namespace

const MetricTable kApiMetrics = kApiDecls;

void ApiCounters::count_request(size_t endpoint, int code) {
  row_[endpoint * kStatusSlots + http::status_index(code)].add();  // kvcache_requests_total is slot 0
}

void ApiCounters::count_auth_failure(bool missing) { row_[kAuthFailuresSlot + (missing ? 0 : 1)].add(); }

void ApiCounters::count_gzip_response() { row_[kGzipResponsesSlot].add(); }

RequestHandler::RequestHandler(Store& store, const Metrics& metrics, ApiCounters counters,
                               const http::DateHeader& date, const TokenStore* tokens)
    : store_(store),
      metrics_(metrics),
      counters_(counters),
      date_(date),
      inflater_(http::kMaxBodyBytes, RequestBodyDecoder::kPadding) {
  if (tokens != nullptr) tokens_.emplace(*tokens);
  scratch_.reserve(kScratchKeepCapacity);
  batch_.reserve(kMaxBatchItems);
}

void RequestHandler::count(int code) {
  counters_.count_request(endpoint_ != nullptr ? static_cast<size_t>(endpoint_ - kEndpoints) : kEndpointCount, code);
}

void RequestHandler::message(int code, std::string_view text, ConnectionMode mode, std::string& out,
                             std::string_view extra_headers) {
  count(code);
  http::append_json_message(out, code, text, mode, date_, extra_headers);
}

void RequestHandler::body_error(ConnectionMode mode, std::string& out) {
  int code = decoder_.error_status();
  message(code, decoder_.error(), mode, out, code == 503 ? http::kRetryAfter : std::string_view{});
}

void RequestHandler::body_response(int code, std::string_view content_type, ConnectionMode mode, std::string& out) {
  if (scratch_.size() > body_limit_) {
    return message(503, "connection buffer memory is short: response too large, retry later", mode, out, http::kRetryAfter);
  }
  count(code);
  std::string_view body = scratch_;
  std::string_view headers = kVary;
  if (body.size() >= gzip::kCompressThreshold && gzip::accepts_gzip(accept_encoding_)) {
    body = deflater_.compress(body);
    headers = kGzipHeaders;
    counters_.count_gzip_response();
  }
  http::append_head(out, {code, body.size(), mode, headers, content_type}, date_);
  out += body;
}

void RequestHandler::trim() {
  deflater_.shrink(kScratchKeepCapacity);
  if (scratch_.capacity() <= kScratchKeepCapacity) return;
  std::string usual;
  usual.reserve(kScratchKeepCapacity);
  scratch_.swap(usual);
}

bool RequestHandler::admit(const http::Request& request, std::string_view& body, ConnectionMode mode,
                           std::string& out) {
  bool open = endpoint_ && endpoint_->open && endpoint_->method == http::Method::get &&
              (request.method == http::Method::get || request.method == http::Method::head ||
               request.method == http::Method::options);
  if (tokens_ && !open) {
    AuthResult result = tokens_->check(request.authorization);
    if (result != AuthResult::ok) {
      counters_.count_auth_failure(result == AuthResult::missing);
      log_auth_failure(result);
      message(401, result == AuthResult::missing ? "missing bearer token" : "invalid bearer token", mode, out,
              result == AuthResult::missing ? kMissingToken : kWrongToken);
      return false;
    }
  }
  // Content-Encoding describes a body; without one there is nothing to decode.
  if (request.content_encoding.empty() || body.empty()) return true;
  switch (gzip::content_coding(request.content_encoding)) {
    case gzip::Coding::identity: return true;
    case gzip::Coding::unsupported:
      message(415, "unsupported Content-Encoding (only gzip)", mode, out, "Accept-Encoding: gzip\r\n");
      return false;
    case gzip::Coding::gzip: break;
  }
  switch (inflater_.inflate(body, body)) {
    case gzip::InflateStatus::ok: return true;
    case gzip::InflateStatus::too_large: message(413, "request body too large (decompressed)", mode, out); return false;
    case gzip::InflateStatus::malformed: message(400, "malformed gzip body", mode, out); return false;
  }
  return true;
}

void RequestHandler::reject(int code, std::string_view text, std::string& out, http::Method method,
                            std::string_view extra_headers, std::string_view target) {
  endpoint_ = nullptr;
  std::string_view path = target.substr(0, target.find('?'));
  for (const Endpoint& candidate : kEndpoints) {
    if (!path.empty() && candidate.path == path) endpoint_ = &candidate;
  }
  size_t start = out.size();
  message(code, text, ConnectionMode::close, out, extra_headers);
  if (method == http::Method::head) http::drop_body(out, start);
}

void RequestHandler::out_of_memory(std::string& out, size_t start, ConnectionMode mode, http::Method method) {
  out.resize(start);  // shrinking keeps the capacity: no allocation
  message(503, "server out of memory: the request could not be served, retry later", mode, out, http::kRetryAfter);
  if (method == http::Method::head) http::drop_body(out, start);
}

http::Handled RequestHandler::handle(const http::Request& request, std::string_view body, ConnectionMode mode,
                                     std::string& out, size_t body_limit) {
  size_t start = out.size();
  body_limit_ = body_limit;
  route(request, body, mode, out);
  if (std::exchange(deferred_, false)) return http::Handled::deferred;
  // No response to HEAD carries a body; the rest is GET's (RFC 9110 9.3.2).
  if (request.method == http::Method::head) http::drop_body(out, start);
  return http::Handled::answered;
}

void RequestHandler::route(const http::Request& request, std::string_view body, ConnectionMode mode,
                           std::string& out) {
  endpoint_ = nullptr;
  for (const Endpoint& candidate : kEndpoints) {
    if (candidate.path == request.path) endpoint_ = &candidate;
  }
  accept_encoding_ = request.accept_encoding;
  // Open access and a plain body, the usual case, skip admission entirely.
  if ((tokens_ || !request.content_encoding.empty()) && !admit(request, body, mode, out)) return;
  if (request.method == http::Method::options) return options(request, mode, out);
  if (endpoint_ == nullptr) return message(404, "Unknown endpoint.", mode, out);
  bool head_of_get = endpoint_->method == http::Method::get && request.method == http::Method::head;
  if (endpoint_->method != request.method && !head_of_get) {
    return message(405, "Method not allowed.", mode, out,
                   endpoint_->method == http::Method::get ? kAllowGet : kAllowPost);
  }
  (this->*endpoint_->serve)(request, body, mode, out);
}

void RequestHandler::options(const http::Request& request, ConnectionMode mode, std::string& out) {
  // RFC 9110 9.3.7: the methods of the target resource, or with "*" of the server.
  std::string_view allow = kAllowServer;
  if (endpoint_ != nullptr) {
    allow = endpoint_->method == http::Method::get ? kAllowGet : kAllowPost;
  } else if (request.path != "*") {
    return message(404, "Unknown endpoint.", mode, out);
  }
  count(204);
  http::append_no_content(out, mode, allow, date_);
}

void RequestHandler::put(const http::Request&, std::string_view body, ConnectionMode mode, std::string& out) {
  PutItem item;
  if (!decoder_.decode_put(body, item)) return body_error(mode, out);
  if (store_.put(make_key(item.key), item.value, item.ttl_seconds) != PutStatus::ok) {
    return message(507, "entry does not fit in the memory limit", mode, out);
  }
  message(200, "Key inserted/updated successfully.", mode, out);
}

void RequestHandler::get(const http::Request& request, std::string_view, ConnectionMode mode, std::string& out) {
  std::string_view key;
  if (!read_key_param(request, mode, out, key)) return;

  constexpr std::string_view kStart = R"({"status":"OK","key":")";
  constexpr std::string_view kMiddle = R"(","value":")";
  constexpr std::string_view kEnd = "\"}";
  size_t key_size = json_escaped_size(key);
  // Runs after the store copied the value out and unlocked: formatting takes no lock.
  bool found = store_.get(make_key(key), [&](std::string_view value) {
    size_t value_size = json_escaped_size(value);
    size_t body_size = kStart.size() + key_size + kMiddle.size() + value_size + kEnd.size();
    http::append_head(out, {200, body_size, mode}, date_);
    out += kStart;
    append_json_escaped(out, key, key_size);
    out += kMiddle;
    append_json_escaped(out, value, value_size);
    out += kEnd;
  });
  if (found) {
    count(200);
  } else {
    message(404, kKeyNotFound, mode, out);
  }
}

void RequestHandler::del(const http::Request&, std::string_view body, ConnectionMode mode, std::string& out) {
  std::string_view key;
  if (!decoder_.decode_key(body, key)) return body_error(mode, out);
  if (!store_.erase(make_key(key))) return message(404, kKeyNotFound, mode, out);
  message(200, "Key deleted.", mode, out);
}

void RequestHandler::mput(const http::Request&, std::string_view body, ConnectionMode mode, std::string& out) {
  if (!decoder_.decode_mput(body)) return body_error(mode, out);
  batch_.clear();
  for (const PutItem& item : decoder_.items()) batch_.push_back({make_key(item.key), item.value, item.ttl_seconds});
  if (store_.put_batch(batch_) != PutStatus::ok) {
    return message(507, "the items do not fit in the memory limit; none was stored", mode, out);
  }
  message(200, "Items inserted/updated successfully.", mode, out);
}

void RequestHandler::mget(const http::Request&, std::string_view body, ConnectionMode mode, std::string& out) {
  if (!decoder_.decode_mget(body)) return body_error(mode, out);
  scratch_.assign(R"({"status":"OK","values":[)");
  bool first = true;
  for (std::string_view key : decoder_.keys()) {
    if (scratch_.size() > body_limit_) break;  // body_response answers 503: stop building early
    if (!first) scratch_ += ',';
    first = false;
    bool found = store_.get(make_key(key), [&](std::string_view value) {
      scratch_ += '"';
      append_json_escaped(scratch_, value);
      scratch_ += '"';
    });
    if (!found) scratch_ += "null";
  }
  scratch_ += "]}";
  body_response(200, "application/json", mode, out);
}

bool RequestHandler::read_key_param(const http::Request& request, ConnectionMode mode, std::string& out,
                                    std::string_view& key) {
  auto encoded = find_query_param(request.query, "key");
  if (!encoded) return message(400, "key is required", mode, out), false;
  auto decoded_size = url_decode(*encoded, key_buffer_);
  if (!decoded_size) return message(400, "malformed percent-escape in query", mode, out), false;
  key = std::string_view(key_buffer_, *decoded_size);
  if (const char* error = key_error(key)) return message(400, error, mode, out), false;
  return true;
}

void RequestHandler::ttl(const http::Request& request, std::string_view, ConnectionMode mode, std::string& out) {
  std::string_view key;
  if (!read_key_param(request, mode, out, key)) return;
  std::optional<int64_t> seconds = store_.ttl(make_key(key));
  if (!seconds) return message(404, kKeyNotFound, mode, out);
  scratch_.assign(R"({"status":"OK","key":")");
  append_json_escaped(scratch_, key);
  fmt::format_to(std::back_inserter(scratch_), R"(","ttl":{}}})", *seconds);
  count(200);
  http::append_head(out, {200, scratch_.size(), mode}, date_);
  out += scratch_;
}

void RequestHandler::expire(const http::Request&, std::string_view body, ConnectionMode mode, std::string& out) {
  std::string_view key;
  uint32_t ttl_seconds = 0;
  if (!decoder_.decode_expire(body, key, ttl_seconds)) return body_error(mode, out);
  switch (store_.expire(make_key(key), ttl_seconds)) {
    case ExpireStatus::ok: break;
    case ExpireStatus::not_found: return message(404, kKeyNotFound, mode, out);
    case ExpireStatus::too_large: return message(507, "entry does not fit in the memory limit", mode, out);
  }
  message(200, ttl_seconds == 0 ? "Key expiry removed." : "Key expiry set.", mode, out);
}

void RequestHandler::flush(const http::Request&, std::string_view, ConnectionMode mode, std::string& out) {
  size_t removed = store_.flush();
  scratch_.clear();
  fmt::format_to(std::back_inserter(scratch_), R"({{"status":"OK","message":"Cache flushed.","entries":{}}})",
                 removed);
  count(200);
  http::append_head(out, {200, scratch_.size(), mode}, date_);
  out += scratch_;
}

void RequestHandler::enable_snapshots(Snapshotter* snapshots, std::function<void()> wake) {
  snapshots_ = snapshots;
  wake_ = std::move(wake);
}

void RequestHandler::health(const http::Request&, std::string_view, ConnectionMode mode, std::string& out) {
  count(200);
  http::append_head(out, {200, kHealthy.size(), mode}, date_);
  out += kHealthy;
}

void RequestHandler::snapshot(const http::Request&, std::string_view, ConnectionMode mode, std::string& out) {
  if (snapshots_ == nullptr) return message(404, "Snapshots are off: start kvcache with --snapshot-path.", mode, out);
  switch (snapshots_->request(wake_)) {
    case Snapshotter::Request::accepted:
      deferred_ = true;
      deferred_endpoint_ = endpoint_;
      deferred_mode_ = mode;
      return;
    case Snapshotter::Request::busy:
      return message(409, "A snapshot is already being written.", mode, out, kRetrySnapshot);
    case Snapshotter::Request::stopping:
      return message(503, "The server is shutting down; it writes a final snapshot before it exits.", mode, out);
  }
}

void RequestHandler::complete_deferred(std::string& out) {
  endpoint_ = deferred_endpoint_;
  SnapshotResult result = snapshots_->collect();
  if (!result.ok) {
    return message(500,
                   fmt::format("snapshot failed: {}",
                               result.abandoned ? "abandoned at shutdown (the final snapshot follows)" : result.error),
                   deferred_mode_, out);
  }
  scratch_.clear();
  fmt::format_to(std::back_inserter(scratch_), R"({{"status":"OK","entries":{},"bytes":{},"seconds":{:.3f}}})",
                 result.entries, result.bytes, result.seconds);
  body_response(200, "application/json", deferred_mode_, out);
}

void RequestHandler::metrics(const http::Request&, std::string_view, ConnectionMode mode, std::string& out) {
  scratch_.clear();
  metrics_.render(scratch_);
  body_response(200, "text/plain; version=0.0.4; charset=utf-8", mode, out);
}

}  // namespace kv

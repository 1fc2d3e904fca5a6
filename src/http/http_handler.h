// The seam between the connection layer and the application: what a
// Connection (net/connection.h) asks of whoever answers its requests. It
// lives in http/ because both sides already see http/ and must see nothing of
// each other: api/ implements it (RequestHandler, handlers.h) and net/ calls
// it, so net/ compiles without the store, snapshots or JSON, and api/
// without sockets or libevent.
#pragma once

#include "http_parser.h"
#include "http_response.h"

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace kv::http {

enum class Handled : uint8_t {
  answered,  // the response is in `out`
  deferred,  // nothing in `out`: the response comes later (Handler::complete_deferred)
};

class Handler {
 public:
  virtual ~Handler() = default;

  // Appends the full response to `out` (its head alone for HEAD), or defers
  // it. `body` is followed by kBodyPadding readable bytes. A response body
  // built larger than `body_limit` is replaced by a 503 (the connection
  // buffer budget is spent). At most one request is deferred at a time per
  // loop; its owner wakes the loop when it is ready (Worker::wake_deferred).
  virtual Handled handle(const Request& request, std::string_view body, ConnectionMode mode, std::string& out,
                         size_t body_limit) = 0;
  // Answers a request the HTTP layer rejected (bad framing, timeout,
  // overload), with "Connection: close". `method`: of the rejected request,
  // if known; `extra_headers`: each ending in "\r\n" (kRetryAfter on an overload 503);
  // `target`: of the rejected request when its request line was read (a 408
  // on a slow body), so that it is counted under its endpoint.
  virtual void reject(int code, std::string_view message, std::string& out, Method method = Method::other,
                      std::string_view extra_headers = {}, std::string_view target = {}) = 0;
  // handle() threw std::bad_alloc: replaces what it appended to `out` from
  // `start` on by a 503 with kRetryAfter, counted under the request's
  // endpoint. Appends nothing that `out`'s capacity cannot hold without need.
  virtual void out_of_memory(std::string& out, size_t start, ConnectionMode mode, Method method) = 0;
  // The deferred response is ready: appends it to `out`. Called once for
  // each deferral, even when the client has left (its answer is then dropped).
  virtual void complete_deferred(std::string& out) = 0;
  // Now and then on the loop's thread: gives back what an outsized response grew.
  virtual void trim() = 0;
};

// On every 503 that a retry may cure (too many connections, connection
// buffers short, an allocation failed): come back in a second.
inline constexpr std::string_view kRetryAfter = "Retry-After: 1\r\n";

// Bytes readable after a request body: a JSON parser may read past its end in place.
constexpr size_t kBodyPadding = 64;

}  // namespace kv::http

// Request framing: where each request on a connection ends (RFC 9112 section 6).
//
// One function, in picohttpparser's manner: it is handed all the unconsumed
// input of a connection and says "consumed N bytes" (one whole request, body
// decoded), "incomplete" or "error". Between calls for the same request it
// keeps a few integers of resume state, so bytes are not scanned twice while a
// request trickles in. The worker, the unit tests, the allocation test and the
// fuzzer all frame requests through it.
#pragma once

#include "http_parser.h"

#include <cstddef>
#include <string_view>

namespace kv::http {

// Resume state of the request at the front of a connection's input. Start at
// {}; frame_request resets it after each complete request.
struct FrameState {
  size_t head_scanned = 0;
  ChunkedScan chunked;
  bool continue_sent = false;
};

struct Frame {
  Status status = Status::incomplete;
  size_t consumed = 0;      // complete: bytes of the request, head and body
  std::string_view body;    // complete: the body (decoded, if it was chunked)
  Error error;              // error: what to answer before closing
  bool send_continue = false;  // incomplete: answer "100 Continue" now (once per request)
};

// Frames the request at buf[0..len) into `request` (views into buf). A chunked
// body is decoded into body_buffer, which has room for kMaxBodyBytes.
Frame frame_request(const char* buf, size_t len, FrameState& state, Request& request, char* body_buffer);

}  // namespace kv::http

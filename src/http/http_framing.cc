#include "http_framing.h"

namespace kv::http {

Frame frame_request(const char* buf, size_t len, FrameState& state, Request& request, char* body_buffer) {
  Frame frame;
  HeadResult head = parse_head(buf, len, request, state.head_scanned);
  if (head.status != Status::complete) {
    frame.status = head.status;
    frame.error = head.error;
    return frame;
  }
  const char* body = buf + request.head_length;
  size_t available = len - request.head_length;
  if (request.chunked) {
    BodyResult scan = scan_chunked(body, available, state.chunked);
    if (scan.status == Status::complete) {
      frame.body = {body_buffer, decode_chunked(body, scan.encoded_length, body_buffer)};
      frame.consumed = request.head_length + scan.encoded_length;
    }
    frame.status = scan.status;
    frame.error = scan.error;
  } else if (available >= request.content_length) {
    frame.body = {body, request.content_length};
    frame.consumed = request.head_length + request.content_length;
    frame.status = Status::complete;
  }
  if (frame.status == Status::complete) {
    state = {};
  } else if (frame.status == Status::incomplete && request.expect_continue && !state.continue_sent) {
    // Headers are in, the body is not: tell a waiting client to send it.
    frame.send_continue = state.continue_sent = true;
  }
  return frame;
}

}  // namespace kv::http

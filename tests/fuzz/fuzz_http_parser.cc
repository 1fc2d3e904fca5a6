// Differential fuzz target for request framing (http_framing.h), the code
// Worker::process runs: frame_request with its resume state, request after
// pipelined request, once as a single read and once split into several reads
// at points chosen by the first bytes of the input. Both runs must produce exactly the same requests, the
// same error and the same unconsumed tail; anything else traps.
//
// Input layout: byte 0 = number of split points (mod 8), then 2 bytes per
// split point (little endian, taken modulo the payload size), then the payload.
#include "http_framing.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace {

using namespace kv::http;

void check(bool ok) {
  if (!ok) __builtin_trap();
}

bool inside(std::string_view part, const char* begin, size_t size) {
  return part.empty() || (part.data() >= begin && part.data() + part.size() <= begin + size);
}

struct Outcome {
  Status status = Status::incomplete;  // complete (a request) or error (connection closed)
  int error_code = 0;
  size_t consumed = 0;  // bytes this request occupied in the stream
  Method method = Method::other;
  bool http10 = false;
  bool keep_alive = false;
  bool expect_continue = false;
  std::string target, path, query, body;
  std::string authorization, accept_encoding, content_encoding;

  bool operator==(const Outcome&) const = default;
};

// One connection, as Worker keeps it: the unparsed bytes of a request still
// arriving plus the resume state of that request.
class Connection {
 public:
  void feed(const uint8_t* data, size_t size) {
    if (closed_) return;
    pending_.insert(pending_.end(), data, data + size);
    process();
  }

  const std::vector<Outcome>& outcomes() const { return outcomes_; }
  const std::vector<char>& pending() const { return pending_; }
  int continues() const { return continues_; }
  bool closed() const { return closed_; }

 private:
  void process() {
    // An exact-size heap copy, so ASan sees any read past the received bytes.
    const size_t n = pending_.size();
    std::unique_ptr<char[]> in(new char[n]);
    if (n > 0) std::memcpy(in.get(), pending_.data(), n);
    size_t pos = 0;
    while (!closed_ && pos < n) {
      Request request;
      // Exactly kMaxBodyBytes of room: an overflow is an ASan report.
      std::unique_ptr<char[]> body_buffer(new char[kMaxBodyBytes]);
      Frame frame = frame_request(in.get() + pos, n - pos, state_, request, body_buffer.get());
      continues_ += frame.send_continue;
      if (frame.status == Status::incomplete) break;
      if (frame.status == Status::error) {
        fail(frame.error);
        break;
      }
      check(frame.status == Status::complete);
      check(request.head_length > 0 && request.head_length <= frame.consumed && frame.consumed <= n - pos);
      check(request.head_length <= kMaxHeadBytes);
      check(request.content_length <= kMaxBodyBytes);
      check(request.target.size() <= kMaxTargetBytes);
      check(frame.body.size() <= kMaxBodyBytes);
      // Absolute-form without a path ("http://host") becomes a static "/".
      if (request.target != "/") {
        check(inside(request.target, in.get() + pos, request.head_length));
        check(inside(request.path, in.get() + pos, request.head_length));
        check(inside(request.query, in.get() + pos, request.head_length));
      }
      for (std::string_view header : {request.authorization, request.accept_encoding, request.content_encoding}) {
        check(inside(header, in.get() + pos, request.head_length));
      }
      if (request.chunked) {
        check(request.content_length == 0);
        check(inside(frame.body, body_buffer.get(), kMaxBodyBytes));
        check(frame.consumed - request.head_length - frame.body.size() <= kMaxChunkedOverhead + kMaxHeadBytes);
      } else {
        check(frame.body.size() == request.content_length);
        check(inside(frame.body, in.get() + pos + request.head_length, request.content_length));
      }
      if (request.http10 && request.chunked) check(!request.keep_alive);
      Outcome outcome;
      outcome.status = Status::complete;
      outcome.consumed = frame.consumed;
      outcome.method = request.method;
      outcome.http10 = request.http10;
      outcome.keep_alive = request.keep_alive;
      outcome.expect_continue = request.expect_continue;
      outcome.target = request.target;
      outcome.path = request.path;
      outcome.query = request.query;
      outcome.body = frame.body;
      outcome.authorization = request.authorization;
      outcome.accept_encoding = request.accept_encoding;
      outcome.content_encoding = request.content_encoding;
      outcomes_.push_back(std::move(outcome));
      if (!request.keep_alive) closed_ = true;  // the server answers, then closes
      pos += frame.consumed;
    }
    pending_.erase(pending_.begin(), pending_.begin() + static_cast<ptrdiff_t>(pos));
    // kMaxRequestBytes is the most one request may occupy while still
    // arriving (http_parser.h); Worker sizes its input buffer above it.
    if (!closed_) check(pending_.size() <= kMaxRequestBytes);
  }

  void fail(const Error& error) {
    check(error.code >= 400 && error.code <= 599);
    check(!error.message.empty());
    Outcome outcome;
    outcome.status = Status::error;
    outcome.error_code = error.code;
    outcomes_.push_back(std::move(outcome));
    closed_ = true;
  }

  std::vector<char> pending_;
  FrameState state_;
  int continues_ = 0;  // "100 Continue" answers asked for
  bool closed_ = false;
  std::vector<Outcome> outcomes_;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  size_t splits = data[0] % 8;
  if (size < 1 + 2 * splits) return 0;
  std::vector<size_t> points;
  const uint8_t* payload = data + 1 + 2 * splits;
  const size_t payload_size = size - 1 - 2 * splits;
  for (size_t i = 0; i < splits; ++i) {
    size_t raw = data[1 + 2 * i] | (size_t{data[2 + 2 * i]} << 8);
    points.push_back(payload_size == 0 ? 0 : raw % (payload_size + 1));
  }
  std::sort(points.begin(), points.end());
  points.push_back(payload_size);

  Connection whole;
  whole.feed(payload, payload_size);

  Connection split;
  size_t at = 0;
  for (size_t point : points) {
    split.feed(payload + at, point - at);
    at = point;
  }

  check(whole.closed() == split.closed());
  // At most one "100 Continue" per request, however the bytes were split.
  check(split.continues() <= static_cast<int>(split.outcomes().size()) + 1);
  check(whole.outcomes().size() == split.outcomes().size());
  for (size_t i = 0; i < whole.outcomes().size(); ++i) check(whole.outcomes()[i] == split.outcomes()[i]);
  if (!whole.closed()) check(whole.pending() == split.pending());

  // Whatever was consumed plus what is pending is the whole stream.
  if (!whole.closed()) {
    size_t total = whole.pending().size();
    for (const Outcome& outcome : whole.outcomes()) total += outcome.consumed;
    check(total == payload_size);
  }
  return 0;
}

// A small, strict, zero-copy HTTP/1.1 request parser (RFC 9112).
//
// Everything returned points into the caller's buffer; nothing is allocated.
// The parser is restartable rather than stateful: the caller hands it the
// whole unconsumed input each time, plus a small resume state so bytes
// already scanned are not scanned again while a request trickles in.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace kv::http {

constexpr size_t kMaxHeadBytes = 8192;     // request line + headers
constexpr size_t kMaxTargetBytes = 4096;   // request target alone
constexpr size_t kMaxBodyBytes = 65536;    // decoded body
// Chunked framing (size lines, CRLFs, trailers) may add at most this much
// on top of the body itself.
constexpr size_t kMaxChunkedOverhead = 16384;
constexpr size_t kMaxChunkLine = 1024;  // chunk size + extensions
// The most input one request can occupy, including a line that is still
// arriving: a buffer this big always holds one whole request.
constexpr size_t kMaxRequestBytes = kMaxHeadBytes + kMaxBodyBytes + kMaxChunkedOverhead + kMaxHeadBytes;

constexpr size_t kMaxMethodBytes = 7;     // the longest method we know: "OPTIONS", "CONNECT"

// A method this parser does not know gets 501 before anything else is judged;
// `other` is a standard method no endpoint allows (405). OPTIONS is
// answered for every endpoint and for the server ("*").
enum class Method : uint8_t { get, head, post, options, other };

struct Request {
  Method method = Method::other;
  std::string_view path;    // the origin-form target up to '?' (an absolute-form one is reduced to it), or "*"
  std::string_view query;   // after '?', without it
  bool http10 = false;
  bool keep_alive = true;  // false also for an HTTP/1.0 request with Transfer-Encoding
  bool expect_continue = false;
  bool chunked = false;
  size_t content_length = 0;  // when !chunked
  size_t head_length = 0;     // request line + headers + blank line
  // Header values the handler interprets; empty when absent (the last one wins).
  std::string_view authorization;
  std::string_view accept_encoding;
  std::string_view content_encoding;
};

enum class Status : uint8_t { complete, incomplete, error };

struct Error {
  int code = 0;  // HTTP status to answer with
  std::string_view message;
};

struct HeadResult {
  Status status;
  Error error;
};

// Parses the request line and headers at buf[0..len). `scanned` carries, from
// one call to the next for the same request, how far the search for the end
// of the headers got (start it at 0).
HeadResult parse_head(const char* buf, size_t len, Request& request, size_t& scanned);

// Resume state of a chunked body scan, relative to the body start.
struct ChunkedScan {
  size_t next = 0;       // offset of the next chunk-size line (or trailer line)
  size_t body_size = 0;  // decoded bytes seen so far
  bool in_trailers = false;
};

struct BodyResult {
  Status status;
  Error error;
  size_t encoded_length = 0;  // bytes of chunked framing + data, when complete
};

// Scans a chunked body at buf[0..len) (the bytes right after the head).
BodyResult scan_chunked(const char* buf, size_t len, ChunkedScan& scan);

// Copies the data of a completely scanned chunked body into out (room for
// scan.body_size bytes). Returns the decoded size.
size_t decode_chunked(const char* buf, size_t encoded_length, char* out);

}  // namespace kv::http

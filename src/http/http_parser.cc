#include "http_parser.h"

#include "ascii.h"

#include <array>
#include <cstring>

namespace kv::http {
namespace {

constexpr int kMaxLeadingBlankLines = 4;
// Method + target + version: a longer request line means the target is too long.
constexpr size_t kMaxRequestLineBytes = kMaxTargetBytes + 32;

constexpr Error kMalformedRequestLine{400, "malformed request line"};
constexpr Error kMalformedHeader{400, "malformed header"};
constexpr Error kBadContentLength{400, "invalid Content-Length"};
constexpr Error kBadChunked{400, "invalid chunked encoding"};
constexpr Error kBothLengths{400, "conflicting Content-Length and Transfer-Encoding"};
constexpr Error kTargetTooLong{414, "request target too long"};
constexpr Error kHeadTooLarge{431, "request headers too large"};
constexpr Error kBodyTooLarge{413, "request body too large"};
constexpr Error kBadTransferEncoding{501, "unsupported Transfer-Encoding"};
constexpr Error kBadVersion{505, "HTTP version not supported"};
constexpr Error kUnknownMethod{501, "method not implemented"};

// RFC 9110 token characters, as a table: header names are checked byte by byte.
constexpr auto kTokenTable = [] {
  std::array<bool, 256> table{};
  for (int c = '0'; c <= '9'; ++c) table[c] = true;
  for (int c = 'a'; c <= 'z'; ++c) table[c] = true;
  for (int c = 'A'; c <= 'Z'; ++c) table[c] = true;
  for (char c : std::string_view("!#$%&'*+-.^_`|~")) table[static_cast<unsigned char>(c)] = true;
  return table;
}();

constexpr bool is_tchar(unsigned char c) { return kTokenTable[c]; }

constexpr bool is_field_value_char(unsigned char c) { return c == '\t' || (c >= 0x20 && c != 0x7f); }

// Where the line starting at buf[pos] ends: the index of its '\n', or npos.
size_t find_newline(const char* buf, size_t pos, size_t len) {
  const void* nl = std::memchr(buf + pos, '\n', len - pos);
  return nl ? static_cast<const char*>(nl) - buf : std::string_view::npos;
}

// The line from buf[pos] to its '\n', without a trailing '\r'.
std::string_view line_at(const char* buf, size_t pos, size_t newline) {
  std::string_view line(buf + pos, newline - pos);
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  return line;
}

// Finds the blank line that ends the head; returns the head length or 0.
size_t find_head_end(const char* buf, size_t len, size_t& scanned) {
  size_t pos = scanned;
  while (pos < len) {
    size_t nl = find_newline(buf, pos, len);
    if (nl == std::string_view::npos) {
      scanned = len;
      return 0;
    }
    if (nl + 1 < len && buf[nl + 1] == '\n') return nl + 2;
    if (nl + 2 < len && buf[nl + 1] == '\r' && buf[nl + 2] == '\n') return nl + 3;
    if (nl + 1 >= len || (nl + 2 >= len && buf[nl + 1] == '\r')) {
      scanned = nl;  // the terminator may complete with the next bytes
      return 0;
    }
    pos = nl + 1;
  }
  scanned = len;
  return 0;
}

// RFC 9110 section 9 (and PATCH): known, though only GET, HEAD, POST and OPTIONS are served.
constexpr std::string_view kOtherMethods[] = {"PUT", "DELETE", "CONNECT", "TRACE", "PATCH"};

// Judges the method at buf[start..end) (end: the line's end, or the data's):
// an unknown one is a 501 whatever follows it, so this runs before any other
// check on the request line, and gives the same verdict however the bytes were split.
bool check_method(const char* buf, size_t start, size_t end, Request& request, Error& error) {
  size_t i = start;
  while (i < end && i - start <= kMaxMethodBytes && is_tchar(static_cast<unsigned char>(buf[i]))) ++i;
  std::string_view method(buf + start, i - start);
  if (method.size() > kMaxMethodBytes) return error = kUnknownMethod, false;
  if (i == end || buf[i] != ' ' || method.empty()) return true;  // malformed, or not all here yet
  if (method == "GET") {
    request.method = Method::get;
  } else if (method == "HEAD") {
    request.method = Method::head;
  } else if (method == "POST") {
    request.method = Method::post;
  } else if (method == "OPTIONS") {
    request.method = Method::options;
  } else {
    bool known = false;
    for (std::string_view other : kOtherMethods) known = known || method == other;
    if (!known) return error = kUnknownMethod, false;
    request.method = Method::other;
  }
  return true;
}

bool parse_request_line(std::string_view line, Request& request, Error& error) {
  size_t sp1 = line.find(' ');
  if (sp1 == 0 || sp1 == std::string_view::npos) return error = kMalformedRequestLine, false;
  std::string_view method = line.substr(0, sp1);
  for (unsigned char c : method) {
    if (!is_tchar(c)) return error = kMalformedRequestLine, false;
  }
  size_t sp2 = line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos || sp2 == sp1 + 1) return error = kMalformedRequestLine, false;
  std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  std::string_view version = line.substr(sp2 + 1);
  if (target.size() > kMaxTargetBytes) return error = kTargetTooLong, false;
  for (unsigned char c : target) {
    if (c <= 0x20 || c >= 0x7f) return error = kMalformedRequestLine, false;
  }
  if (version == "HTTP/1.1") {
    request.http10 = false;
  } else if (version == "HTTP/1.0") {
    request.http10 = true;
  } else if (version.size() == 8 && version.substr(0, 5) == "HTTP/" && version[5] >= '0' && version[5] <= '9' &&
             version[6] == '.' && version[7] >= '0' && version[7] <= '9') {
    return error = kBadVersion, false;
  } else {
    return error = kMalformedRequestLine, false;
  }
  // absolute-form ("http://host/path") must be accepted by servers (RFC 9112 3.2.2).
  if (target.front() != '/' && target != "*") {
    size_t scheme_end = target.find("://");
    if (scheme_end == std::string_view::npos) return error = kMalformedRequestLine, false;
    size_t path_start = target.find('/', scheme_end + 3);
    target = path_start == std::string_view::npos ? std::string_view("/") : target.substr(path_start);
  }
  size_t question = target.find('?');
  request.path = target.substr(0, question);
  request.query = question == std::string_view::npos ? std::string_view() : target.substr(question + 1);
  request.keep_alive = !request.http10;
  return true;
}

bool apply_content_length(std::string_view value, Request& request, bool& seen_length, Error& error) {
  if (value.empty()) return error = kBadContentLength, false;
  size_t length = 0;
  for (char c : value) {
    if (c < '0' || c > '9') return error = kBadContentLength, false;
    length = length > kMaxBodyBytes ? length : length * 10 + (c - '0');  // saturates above the limit
  }
  if (seen_length && length != request.content_length) return error = kBadContentLength, false;
  seen_length = true;
  request.content_length = length;
  return true;
}

void apply_connection(std::string_view value, Request& request) {
  while (!value.empty()) {
    size_t comma = value.find(',');
    std::string_view option = trim_ows(value.substr(0, comma));
    if (equals_ci(option, "close")) {
      request.keep_alive = false;
      break;
    }
    if (equals_ci(option, "keep-alive")) request.keep_alive = true;
    value = comma == std::string_view::npos ? std::string_view() : value.substr(comma + 1);
  }
}

// Applies one header field to the request. `seen_length` tracks duplicates.
// The switch on the name's length means a header we ignore (Host,
// User-Agent, ...) costs one comparison at most.
bool apply_header(std::string_view name, std::string_view value, Request& request, bool& seen_length,
                  bool& seen_encoding, Error& error) {
  switch (name.size()) {
    case 6:
      if (equals_ci(name, "expect") && equals_ci(value, "100-continue") && !request.http10) {
        request.expect_continue = true;
      }
      break;
    case 10:
      if (equals_ci(name, "connection")) apply_connection(value, request);
      break;
    case 13:
      if (equals_ci(name, "authorization")) request.authorization = value;
      break;
    case 14:
      if (equals_ci(name, "content-length")) return apply_content_length(value, request, seen_length, error);
      break;
    case 15:
      if (equals_ci(name, "accept-encoding")) request.accept_encoding = value;
      break;
    case 16:
      if (equals_ci(name, "content-encoding")) request.content_encoding = value;
      break;
    case 17:
      if (equals_ci(name, "transfer-encoding")) {
        if (seen_encoding || !equals_ci(value, "chunked")) return error = kBadTransferEncoding, false;
        seen_encoding = true;
        request.chunked = true;
      }
      break;
    default: break;
  }
  return true;
}

bool parse_headers(const char* buf, size_t pos, size_t head_end, Request& request, Error& error) {
  bool seen_length = false, seen_encoding = false;
  for (;;) {
    size_t nl = find_newline(buf, pos, head_end);
    std::string_view line = line_at(buf, pos, nl);
    if (line.empty()) break;
    // A line starting with whitespace is obsolete line folding (RFC 9112 5.2): reject.
    size_t colon = line.find(':');
    if (colon == 0 || colon == std::string_view::npos) return error = kMalformedHeader, false;
    std::string_view name = line.substr(0, colon);
    for (unsigned char c : name) {
      if (!is_tchar(c)) return error = kMalformedHeader, false;
    }
    std::string_view value = line.substr(colon + 1);
    for (unsigned char c : value) {
      if (!is_field_value_char(c)) return error = kMalformedHeader, false;
    }
    if (!apply_header(name, trim_ows(value), request, seen_length, seen_encoding, error)) return false;
    pos = nl + 1;
  }
  if (seen_length && seen_encoding) return error = kBothLengths, false;
  if (request.content_length > kMaxBodyBytes) return error = kBodyTooLarge, false;
  // RFC 9112 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing;
  // answer it, then close.
  if (request.http10 && seen_encoding) request.keep_alive = false;
  return true;
}

// Diagnoses a head that has no end yet but already exceeds the limits.
HeadResult oversized_head(const char* buf, size_t start, size_t len, Request& request) {
  size_t line_end = find_newline(buf, start, len);
  if (line_end == std::string_view::npos) line_end = len;
  if (Error error; !check_method(buf, start, line_end, request, error)) return {Status::error, error};
  if (line_end - start > kMaxRequestLineBytes) return {Status::error, kTargetTooLong};
  if (len - start > kMaxHeadBytes) return {Status::error, kHeadTooLarge};
  return {Status::incomplete, {}};
}

// Parses "1a;ext=1" into a size. Returns false on malformed input; sizes
// above the body limit saturate and are caught by the caller.
bool parse_chunk_size(std::string_view line, size_t& size) {
  size = 0;
  size_t i = 0;
  for (; i < line.size() && hex_value(line[i]) >= 0; ++i) {
    if (size <= kMaxBodyBytes) size = size * 16 + hex_value(line[i]);
  }
  if (i == 0) return false;
  std::string_view rest = trim_ows(line.substr(i));
  if (!rest.empty() && rest.front() != ';') return false;
  for (unsigned char c : rest) {
    if (!is_field_value_char(c)) return false;
  }
  return true;
}

// Length of the line break at buf[pos]: 2 for CRLF, 1 for LF, 0 if neither
// (or -1 if more bytes are needed to tell).
int line_break_at(const char* buf, size_t pos, size_t len) {
  if (pos >= len) return -1;
  if (buf[pos] == '\n') return 1;
  if (buf[pos] != '\r') return 0;
  if (pos + 1 >= len) return -1;
  return buf[pos + 1] == '\n' ? 2 : 0;
}

}  // namespace

HeadResult parse_head(const char* buf, size_t len, Request& request, size_t& scanned) {
  // Ignore a few empty lines before the request line (RFC 9112 2.2).
  size_t start = 0;
  for (int i = 0; i < kMaxLeadingBlankLines; ++i) {
    int brk = line_break_at(buf, start, len);
    if (brk <= 0) break;
    start += brk;
  }
  if (scanned < start) scanned = start;
  request = Request{};
  size_t head_end = find_head_end(buf, len, scanned);
  if (head_end == 0) {
    return len > kMaxTargetBytes ? oversized_head(buf, start, len, request) : HeadResult{Status::incomplete, {}};
  }
  if (head_end > kMaxHeadBytes) {
    HeadResult diagnosis = oversized_head(buf, start, head_end, request);
    return diagnosis.status == Status::error ? diagnosis : HeadResult{Status::error, kHeadTooLarge};
  }
  Error error;
  size_t line_end = find_newline(buf, start, head_end);
  // The same verdicts, in the same order, as oversized_head gives while the
  // line is still arriving, so the answer does not depend on how the bytes were split.
  if (!check_method(buf, start, line_end, request, error)) return {Status::error, error};
  if (line_end - start > kMaxRequestLineBytes) return {Status::error, kTargetTooLong};
  if (!parse_request_line(line_at(buf, start, line_end), request, error)) return {Status::error, error};
  if (!parse_headers(buf, line_end + 1, head_end, request, error)) return {Status::error, error};
  request.head_length = head_end;
  return {Status::complete, {}};
}

BodyResult scan_chunked(const char* buf, size_t len, ChunkedScan& scan) {
  size_t pos = scan.next;
  for (;;) {
    if (pos - scan.body_size > kMaxChunkedOverhead) return {Status::error, kBodyTooLarge};
    size_t nl = find_newline(buf, pos, len);
    if (nl == std::string_view::npos) {
      size_t limit = scan.in_trailers ? kMaxHeadBytes : kMaxChunkLine;
      if (len - pos > limit) return {Status::error, scan.in_trailers ? kHeadTooLarge : kBadChunked};
      return {Status::incomplete, {}};
    }
    std::string_view line = line_at(buf, pos, nl);
    if (scan.in_trailers) {
      if (line.empty()) return {Status::complete, {}, nl + 1};
      if (line.find(':') == std::string_view::npos || line.front() == ' ' || line.front() == '\t') {
        return {Status::error, kBadChunked};
      }
      pos = scan.next = nl + 1;
      continue;
    }
    size_t size = 0;
    if (line.size() > kMaxChunkLine || !parse_chunk_size(line, size)) return {Status::error, kBadChunked};
    if (size > kMaxBodyBytes - scan.body_size) return {Status::error, kBodyTooLarge};
    size_t data = nl + 1;
    if (size == 0) {
      scan.in_trailers = true;
      pos = scan.next = data;
      continue;
    }
    if (len - data < size) return {Status::incomplete, {}};
    int brk = line_break_at(buf, data + size, len);
    if (brk < 0) return {Status::incomplete, {}};
    if (brk == 0) return {Status::error, kBadChunked};
    scan.body_size += size;
    pos = scan.next = data + size + brk;
  }
}

size_t decode_chunked(const char* buf, size_t encoded_length, char* out) {
  size_t pos = 0, written = 0;
  while (pos < encoded_length) {
    size_t nl = find_newline(buf, pos, encoded_length);
    size_t size = 0;
    parse_chunk_size(line_at(buf, pos, nl), size);
    if (size == 0) break;
    std::memcpy(out + written, buf + nl + 1, size);
    written += size;
    pos = nl + 1 + size + line_break_at(buf, nl + 1 + size, encoded_length);
  }
  return written;
}

}  // namespace kv::http

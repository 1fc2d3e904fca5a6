// Writing HTTP/1.1 responses into an output buffer.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace kv::http {

enum class ConnectionMode {
  keep_alive,           // HTTP/1.1 default: no Connection header
  keep_alive_explicit,  // HTTP/1.0 client asked for keep-alive: echo it
  close,                // "Connection: close", then the server closes
};

// The interim answer to "Expect: 100-continue" once the head is accepted.
constexpr std::string_view kContinueResponse = "HTTP/1.1 100 Continue\r\n\r\n";

// Every status kvcache answers with: the one table behind the reason phrases
// and the request counters by status (handlers.h). A new status goes here.
struct StatusCode {
  int code;
  std::string_view reason;
};
inline constexpr StatusCode kStatusCodes[] = {
    {100, "Continue"},
    {200, "OK"},
    {204, "No Content"},
    {400, "Bad Request"},
    {401, "Unauthorized"},
    {404, "Not Found"},
    {405, "Method Not Allowed"},
    {408, "Request Timeout"},
    {409, "Conflict"},
    {413, "Content Too Large"},
    {414, "URI Too Long"},
    {415, "Unsupported Media Type"},
    {431, "Request Header Fields Too Large"},
    {500, "Internal Server Error"},
    {501, "Not Implemented"},
    {503, "Service Unavailable"},
    {505, "HTTP Version Not Supported"},
    {507, "Insufficient Storage"},
};
inline constexpr size_t kStatusCount = sizeof kStatusCodes / sizeof kStatusCodes[0];

// Where code is in kStatusCodes; kStatusCount for a code that is not.
constexpr size_t status_index(int code) {
  size_t i = 0;
  while (i < kStatusCount && kStatusCodes[i].code != code) ++i;
  return i;
}

// "Unknown" for a code missing from kStatusCodes (a bug: http_parser_test checks the ones sent).
std::string_view reason_phrase(int code);

// Per-thread "Date: ...\r\n" header, refreshed by the caller's loop tick.
class DateHeader {
 public:
  DateHeader() { refresh(); }
  void refresh();
  std::string_view line() const { return {buffer_, size_}; }

 private:
  char buffer_[64];
  size_t size_ = 0;
};

struct ResponseHead {
  int code;
  size_t body_size;
  ConnectionMode mode;
  std::string_view extra_headers = {};  // each ending in "\r\n"
  std::string_view content_type = "application/json";
};

// Appends the status line and headers, up to and including the blank line.
void append_head(std::string& out, const ResponseHead& head, const DateHeader& date);

// A 204 No Content head: no Content-Type, and no Content-Length (RFC 9110 8.6).
void append_no_content(std::string& out, ConnectionMode mode, std::string_view extra_headers, const DateHeader& date);

// Cuts the body off the response that starts at out[start]: a response to
// HEAD keeps the status and headers of GET, Content-Length included (RFC 9110 9.3.2).
void drop_body(std::string& out, size_t start);

// Appends a whole {"status":..,"message":..} response.
void append_json_message(std::string& out, int code, std::string_view message, ConnectionMode mode,
                         const DateHeader& date, std::string_view extra_headers = {});

}  // namespace kv::http

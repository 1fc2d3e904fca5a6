#include "http_response.h"

#include "json_out.h"

#include <charconv>
#include <ctime>

namespace kv::http {

std::string_view reason_phrase(int code) {
  size_t i = status_index(code);
  return i < kStatusCount ? kStatusCodes[i].reason : "Unknown";
}

void DateHeader::refresh() {
  time_t now = time(nullptr);
  tm utc;
  gmtime_r(&now, &utc);
  size_ = strftime(buffer_, sizeof buffer_, "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &utc);
}

void append_head(std::string& out, const ResponseHead& head, const DateHeader& date) {
  char number[24];
  out += "HTTP/1.1 ";
  out.append(number, std::to_chars(number, number + sizeof number, head.code).ptr - number);
  out += ' ';
  out += reason_phrase(head.code);
  out += "\r\nContent-Type: ";
  out += head.content_type;
  out += "\r\nContent-Length: ";
  out.append(number, std::to_chars(number, number + sizeof number, head.body_size).ptr - number);
  out += "\r\n";
  out += date.line();
  if (head.mode == ConnectionMode::close) out += "Connection: close\r\n";
  if (head.mode == ConnectionMode::keep_alive_explicit) out += "Connection: keep-alive\r\n";
  out += head.extra_headers;
  out += "\r\n";
}

void append_no_content(std::string& out, ConnectionMode mode, std::string_view extra_headers, const DateHeader& date) {
  out += "HTTP/1.1 204 No Content\r\n";
  out += date.line();
  if (mode == ConnectionMode::close) out += "Connection: close\r\n";
  if (mode == ConnectionMode::keep_alive_explicit) out += "Connection: keep-alive\r\n";
  out += extra_headers;
  out += "\r\n";
}

void drop_body(std::string& out, size_t start) {
  // A response head holds no blank line before its end.
  size_t head_end = out.find("\r\n\r\n", start);
  if (head_end != std::string::npos) out.resize(head_end + 4);
}

void append_json_message(std::string& out, int code, std::string_view message, ConnectionMode mode,
                         const DateHeader& date, std::string_view extra_headers) {
  constexpr std::string_view kOk = R"({"status":"OK","message":")";
  constexpr std::string_view kError = R"({"status":"ERROR","message":")";
  constexpr std::string_view kEnd = "\"}";
  std::string_view start = code < 400 ? kOk : kError;
  size_t message_size = json_escaped_size(message);
  append_head(out, {code, start.size() + message_size + kEnd.size(), mode, extra_headers}, date);
  out += start;
  append_json_escaped(out, message, message_size);
  out += kEnd;
}

}  // namespace kv::http

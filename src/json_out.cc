#include "json_out.h"

namespace kv {
namespace {

// 0: copied as is; otherwise the letter after '\' ('u' means \u00XX).
constexpr char escape_letter(unsigned char c) {
  switch (c) {
    case '"': return '"';
    case '\\': return '\\';
    case '\b': return 'b';
    case '\f': return 'f';
    case '\n': return 'n';
    case '\r': return 'r';
    case '\t': return 't';
    default: return c < 0x20 ? 'u' : 0;
  }
}

}  // namespace

size_t json_escaped_size(std::string_view text) {
  size_t size = text.size();
  for (unsigned char c : text) {
    char letter = escape_letter(c);
    if (letter != 0) size += letter == 'u' ? 5 : 1;
  }
  return size;
}

void append_json_escaped(std::string& out, std::string_view text) {
  static constexpr char kHex[] = "0123456789abcdef";
  size_t plain_start = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    unsigned char c = text[i];
    char letter = escape_letter(c);
    if (letter == 0) continue;
    out.append(text.data() + plain_start, i - plain_start);
    plain_start = i + 1;
    if (letter == 'u') {
      const char sequence[] = {'\\', 'u', '0', '0', kHex[c >> 4], kHex[c & 15]};
      out.append(sequence, sizeof sequence);
    } else {
      const char sequence[] = {'\\', letter};
      out.append(sequence, sizeof sequence);
    }
  }
  out.append(text.data() + plain_start, text.size() - plain_start);
}

}  // namespace kv

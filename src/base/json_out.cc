#include "json_out.h"

#include <cstdint>
#include <cstring>

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

constexpr uint64_t kOnes = 0x0101010101010101ull;
constexpr uint64_t kHighBits = 0x8080808080808080ull;

// Whether any of the 8 bytes is a control character, '"' or '\\' (SWAR:
// most keys and values have none, and are then copied in one piece).
inline bool word_needs_escape(uint64_t word) {
  uint64_t below_space = (word - kOnes * 0x20) & ~word;
  uint64_t quote = word ^ (kOnes * '"');
  uint64_t backslash = word ^ (kOnes * '\\');
  uint64_t has_quote = (quote - kOnes) & ~quote;
  uint64_t has_backslash = (backslash - kOnes) & ~backslash;
  return ((below_space | has_quote | has_backslash) & kHighBits) != 0;
}

// Length of the prefix of text that needs no escaping.
size_t plain_prefix(std::string_view text) {
  size_t i = 0;
  for (; i + 8 <= text.size(); i += 8) {
    uint64_t word;
    std::memcpy(&word, text.data() + i, 8);
    if (word_needs_escape(word)) break;
  }
  while (i < text.size() && escape_letter(static_cast<unsigned char>(text[i])) == 0) ++i;
  return i;
}

}  // namespace

size_t json_escaped_size(std::string_view text) {
  size_t plain = plain_prefix(text);
  size_t size = text.size();
  for (size_t i = plain; i < text.size(); ++i) {
    char letter = escape_letter(static_cast<unsigned char>(text[i]));
    if (letter != 0) size += letter == 'u' ? 5 : 1;
  }
  return size;
}

void append_json_escaped(std::string& out, std::string_view text) {
  static constexpr char kHex[] = "0123456789abcdef";
  size_t plain_start = 0;
  for (size_t i = plain_prefix(text); i < text.size(); ++i) {
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

// Writing JSON strings: escaping keys and values for responses.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace kv {

// Bytes `text` takes once escaped (without the surrounding quotes).
size_t json_escaped_size(std::string_view text);
// Appends `text` escaped (without quotes): '"', '\\' and control characters.
void append_json_escaped(std::string& out, std::string_view text);
// The same, given escaped_size = json_escaped_size(text): plain text is then
// copied without scanning it again.
inline void append_json_escaped(std::string& out, std::string_view text, size_t escaped_size) {
  if (escaped_size == text.size()) {
    out.append(text);
  } else {
    append_json_escaped(out, text);
  }
}

}  // namespace kv

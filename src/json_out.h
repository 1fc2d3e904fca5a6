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

}  // namespace kv

// Query-string handling for GET /get?key=...
#pragma once

#include <cstddef>
#include <optional>
#include <string_view>

namespace kv {

// The raw (still encoded) value of the first `name` parameter in `query`.
std::optional<std::string_view> find_query_param(std::string_view query, std::string_view name);

// Decodes %XX and '+' (space) into out, which must hold encoded.size() bytes.
// Returns the decoded size, or nullopt on a malformed percent-escape.
std::optional<size_t> url_decode(std::string_view encoded, char* out);

}  // namespace kv

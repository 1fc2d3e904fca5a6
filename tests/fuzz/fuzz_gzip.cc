// Fuzz target for gzip request bodies and the Accept-Encoding parser.
//
// Arbitrary bytes go to the Inflater exactly as a Content-Encoding: gzip body
// would (at most the parser's 64 KiB body limit, the 64 KiB output limit, the
// simdjson padding after it): it must answer ok with at most the limit, or
// too_large, or malformed. What inflates goes on to the JSON decoder in place,
// as in the server, whose reads ASan checks against the buffer. The same
// bytes, compressed by the Deflater, must inflate back to themselves. They are
// also parsed as Accept-Encoding and Content-Encoding values.
#include "gzip.h"
#include "request_body.h"

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace {

constexpr size_t kLimit = 65536;

void check(bool ok) {
  if (!ok) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > kLimit) return 0;
  static kv::gzip::Inflater inflater(kLimit, kv::RequestBodyDecoder::kPadding);
  static kv::RequestBodyDecoder decoder;
  static kv::gzip::Deflater deflater;
  std::string_view in(reinterpret_cast<const char*>(data), size);

  std::string_view out;
  kv::gzip::InflateStatus status = inflater.inflate(in, out);
  if (status == kv::gzip::InflateStatus::ok) {
    check(out.size() <= kLimit);
    (void)decoder.decode_mput(out);
  }

  std::string_view compressed = deflater.compress(in);
  check(inflater.inflate(compressed, out) == kv::gzip::InflateStatus::ok);
  check(out == in);

  (void)kv::gzip::accepts_gzip(in);
  (void)kv::gzip::content_coding(in);
  return 0;
}

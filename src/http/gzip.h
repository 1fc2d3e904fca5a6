// gzip for HTTP bodies (RFC 9110 8.4, RFC 1952), on libdeflate's one-shot
// buffer API: bodies here are bounded, so no streaming state is needed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>

struct libdeflate_compressor;
struct libdeflate_decompressor;

namespace kv::gzip {

// Responses with a smaller body are sent as they are: with its ~135-byte head
// such a response fits one 1,448-byte TCP segment compressed or not, so
// compressing would cost CPU and save no packet (docs/benchmarks.md, "gzip").
constexpr size_t kCompressThreshold = 1300;
// libdeflate level 1: most of level 6's saving on repetitive JSON, at a
// fraction of its time (docs/benchmarks.md, "gzip").
constexpr int kCompressionLevel = 1;

// Whether an Accept-Encoding value allows gzip: "gzip" or "x-gzip" with a
// q-value above 0, or, when neither is listed, "*" with a q-value above 0.
bool accepts_gzip(std::string_view accept_encoding);

enum class Coding : uint8_t { identity, gzip, unsupported };

// A request's Content-Encoding: empty means identity; "gzip"/"x-gzip" (any case) gzip.
Coding content_coding(std::string_view content_encoding);

enum class InflateStatus : uint8_t { ok, too_large, malformed };

// Decompresses into one fixed buffer allocated up front: however much a
// stream claims or expands to, at most `limit` bytes are ever written.
class Inflater {
 public:
  // `padding` readable bytes follow the output (simdjson reads past the end).
  Inflater(size_t limit, size_t padding);
  ~Inflater();
  Inflater(const Inflater&) = delete;
  Inflater& operator=(const Inflater&) = delete;

  // Decompresses one or more concatenated gzip members. On ok, `out` views
  // the data, valid until the next call.
  InflateStatus inflate(std::string_view in, std::string_view& out);

 private:
  const size_t limit_;
  libdeflate_decompressor* decompressor_;
  std::unique_ptr<char[]> buffer_;
};

// Compresses response bodies into a buffer that grows to the largest one seen
// (shrink() gives an outsized one back).
class Deflater {
 public:
  Deflater();
  ~Deflater();
  Deflater(const Deflater&) = delete;
  Deflater& operator=(const Deflater&) = delete;

  // Returns the gzip stream of `in`, valid until the next call.
  std::string_view compress(std::string_view in);
  // Gives back an output buffer grown past `keep` bytes (for an outsized input).
  void shrink(size_t keep);

 private:
  libdeflate_compressor* compressor_;  // created at construction: nothing on the request path throws
  std::unique_ptr<char[]> buffer_;
  size_t capacity_ = 0;
};

}  // namespace kv::gzip

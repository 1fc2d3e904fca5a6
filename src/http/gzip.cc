#include "gzip.h"

#include "ascii.h"

#include <libdeflate.h>

#include <new>

namespace kv::gzip {
namespace {

// Splits off the text up to `separator` (or all of it) and trims it.
std::string_view next_item(std::string_view& list, char separator) {
  size_t end = list.find(separator);
  std::string_view item = trim_ows(list.substr(0, end));
  list = end == std::string_view::npos ? std::string_view() : list.substr(end + 1);
  return item;
}

// RFC 9110 12.4.2 qvalue: "0" ["." 0*3DIGIT] or "1" ["." 0*3"0"]. Returns
// whether it is above zero; a malformed one counts as zero (not acceptable).
bool qvalue_positive(std::string_view q) {
  if (q.empty() || q.size() > 5 || (q[0] != '0' && q[0] != '1')) return false;
  if (q.size() > 1 && q[1] != '.') return false;
  bool positive = q[0] == '1';
  for (size_t i = 2; i < q.size(); ++i) {
    if (q[i] < '0' || q[i] > '9') return false;
    if (q[i] != '0') {
      if (q[0] == '1') return false;  // above 1
      positive = true;
    }
  }
  return positive;
}

}  // namespace

bool accepts_gzip(std::string_view accept_encoding) {
  enum : int { unlisted = -1, refused = 0, accepted = 1 };
  int gzip = unlisted, any = unlisted;
  while (!accept_encoding.empty()) {
    std::string_view element = next_item(accept_encoding, ',');
    std::string_view coding = next_item(element, ';');
    int verdict = accepted;
    while (!element.empty()) {
      std::string_view parameter = next_item(element, ';');
      if (parameter.size() >= 2 && (parameter[0] | 0x20) == 'q' && parameter[1] == '=') {
        verdict = qvalue_positive(trim_ows(parameter.substr(2))) ? accepted : refused;
      }
    }
    if (equals_ci(coding, "gzip") || equals_ci(coding, "x-gzip")) {
      gzip = gzip == accepted ? accepted : verdict;
    } else if (coding == "*") {
      any = verdict;
    }
  }
  return gzip == unlisted ? any == accepted : gzip == accepted;
}

Coding content_coding(std::string_view content_encoding) {
  if (content_encoding.empty()) return Coding::identity;
  if (equals_ci(content_encoding, "gzip") || equals_ci(content_encoding, "x-gzip")) return Coding::gzip;
  return Coding::unsupported;
}

Inflater::Inflater(size_t limit, size_t padding)
    : limit_(limit), decompressor_(libdeflate_alloc_decompressor()), buffer_(new char[limit + padding]) {
  if (decompressor_ == nullptr) throw std::bad_alloc();
}

Inflater::~Inflater() { libdeflate_free_decompressor(decompressor_); }

InflateStatus Inflater::inflate(std::string_view in, std::string_view& out) {
  size_t produced = 0;
  // RFC 1952 allows several members back to back; each one is a whole stream.
  do {
    size_t in_used = 0, out_got = 0;
    libdeflate_result result = libdeflate_gzip_decompress_ex(decompressor_, in.data(), in.size(),
                                                             buffer_.get() + produced, limit_ - produced,
                                                             &in_used, &out_got);
    if (result == LIBDEFLATE_INSUFFICIENT_SPACE) return InflateStatus::too_large;
    if (result != LIBDEFLATE_SUCCESS) return InflateStatus::malformed;
    produced += out_got;
    in.remove_prefix(in_used);
  } while (!in.empty());
  out = {buffer_.get(), produced};
  return InflateStatus::ok;
}

Deflater::Deflater() : compressor_(libdeflate_alloc_compressor(kCompressionLevel)) {
  if (compressor_ == nullptr) throw std::bad_alloc();
}

Deflater::~Deflater() { libdeflate_free_compressor(compressor_); }

void Deflater::shrink(size_t keep) {
  if (capacity_ <= keep) return;
  buffer_.reset();
  capacity_ = 0;
}

std::string_view Deflater::compress(std::string_view in) {
  size_t bound = libdeflate_gzip_compress_bound(compressor_, in.size());
  if (bound > capacity_) {
    buffer_.reset(new char[bound]);
    capacity_ = bound;
  }
  size_t size = libdeflate_gzip_compress(compressor_, in.data(), in.size(), buffer_.get(), capacity_);
  return {buffer_.get(), size};
}

}  // namespace kv::gzip

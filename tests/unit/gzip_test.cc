#include "gzip.h"

#include <doctest/doctest.h>

#include <string>

using namespace kv;
using namespace kv::gzip;

namespace {

constexpr size_t kLimit = 65536;

std::string compressed(std::string_view text) {
  Deflater deflater;
  return std::string(deflater.compress(text));
}

}  // namespace

TEST_CASE("Accept-Encoding: gzip allowed by name, x-gzip, or *, unless q=0") {
  for (std::string_view yes : {"gzip", "GZIP", "gzip, deflate, br", "deflate;q=0.5, gzip;q=0.001", "x-gzip", "*",
                               " br ; q=1 , gzip ; q=1.000", "identity, *;q=0.1", "gzip;Q=0.5", "gzip;level=1"}) {
    CHECK_MESSAGE(accepts_gzip(yes), yes);
  }
  for (std::string_view no : {"", "identity", "deflate, br", "gzip;q=0", "gzip;q=0.000", "gzip; q=0, *",
                              "*;q=0", "gzip;q=2", "gzip;q=1.5", "gzip;q=abc", "gzip;q=", "gzipx", "gzip;q=0.0000",
                              ",,,"}) {
    CHECK_MESSAGE(!accepts_gzip(no), no);
  }
}

TEST_CASE("Content-Encoding: identity, gzip or unsupported") {
  CHECK(content_coding("") == Coding::identity);
  CHECK(content_coding("gzip") == Coding::gzip);
  CHECK(content_coding("X-Gzip") == Coding::gzip);
  for (std::string_view other : {"deflate", "br", "identity", "gzip, gzip", "compress", "zstd"}) {
    CHECK_MESSAGE(content_coding(other) == Coding::unsupported, other);
  }
}

TEST_CASE("round trip, including concatenated members and an empty body") {
  Inflater inflater(kLimit, 64);
  std::string text;
  for (int i = 0; i < 2000; ++i) text += R"({"key":"k)" + std::to_string(i) + R"(","value":"v"},)";
  std::string gz = compressed(text);
  CHECK(gz.size() < text.size() / 4);
  std::string_view out;
  REQUIRE(inflater.inflate(gz, out) == InflateStatus::ok);
  CHECK(out == text);

  std::string two = compressed("hello ") + compressed("world");
  REQUIRE(inflater.inflate(two, out) == InflateStatus::ok);
  CHECK(out == "hello world");

  REQUIRE(inflater.inflate(compressed(""), out) == InflateStatus::ok);
  CHECK(out.empty());
}

TEST_CASE("decompression stops at the limit: exactly the limit is fine, one byte more is too large") {
  Inflater inflater(kLimit, 64);
  std::string_view out;
  CHECK(inflater.inflate(compressed(std::string(kLimit, 'a')), out) == InflateStatus::ok);
  CHECK(out.size() == kLimit);
  CHECK(inflater.inflate(compressed(std::string(kLimit + 1, 'a')), out) == InflateStatus::too_large);
  // A bomb: 16 MiB of zeros in about 16 KiB; refused without writing past the buffer (ASan would see it).
  std::string bomb = compressed(std::string(16 << 20, '\0'));
  CHECK(bomb.size() < kLimit);
  CHECK(inflater.inflate(bomb, out) == InflateStatus::too_large);
  // The limit counts all members together.
  std::string half = compressed(std::string(kLimit / 2 + 1, 'b'));
  CHECK(inflater.inflate(half + half, out) == InflateStatus::too_large);
}

TEST_CASE("corrupt streams are malformed") {
  Inflater inflater(kLimit, 64);
  std::string_view out;
  std::string gz = compressed("{\"key\":\"a\",\"value\":\"b\"}");
  CHECK(inflater.inflate("", out) == InflateStatus::malformed);
  CHECK(inflater.inflate("not gzip at all", out) == InflateStatus::malformed);
  CHECK(inflater.inflate(std::string_view(gz).substr(0, gz.size() - 1), out) == InflateStatus::malformed);  // truncated
  std::string bad_crc = gz;
  bad_crc[bad_crc.size() - 5] ^= 0x55;
  CHECK(inflater.inflate(bad_crc, out) == InflateStatus::malformed);
  CHECK(inflater.inflate(gz + "trailing", out) == InflateStatus::malformed);
  // The inflater is still usable after errors.
  REQUIRE(inflater.inflate(gz, out) == InflateStatus::ok);
  CHECK(out == "{\"key\":\"a\",\"value\":\"b\"}");
}

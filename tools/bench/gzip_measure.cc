// Measures what gzip costs and saves on kvcache's response bodies, to choose
// gzip::kCompressThreshold and gzip::kCompressionLevel (docs/benchmarks.md).
// Bodies are /mget answers for n keys with 128-byte text values.
//   ninja -C build gzip_measure && build/gzip_measure
#include <libdeflate.h>

#include <time.h>

#include <cstdio>
#include <random>
#include <string>
#include <vector>

namespace {

// 128 bytes of word-like lowercase text, as a cache of rendered fragments would hold.
std::string text_value(std::mt19937& rng) {
  static const char* kWords[] = {"session", "user",  "cart",    "item", "price", "token", "the", "and", "of",
                                 "value",   "cache", "profile", "id",   "name",  "list",  "ok",  "to", "data"};
  std::string value;
  while (value.size() < 128) {
    value += kWords[rng() % std::size(kWords)];
    value += rng() % 3 == 0 ? std::to_string(rng() % 100000) : " ";
  }
  value.resize(128);
  return value;
}

std::string mget_body(size_t keys, std::mt19937& rng) {
  std::string body = R"({"status":"OK","values":[)";
  for (size_t i = 0; i < keys; ++i) body += (i ? ",\"" : "\"") + text_value(rng) + "\"";
  return body + "]}";
}

// CPU time of this thread: on a shared machine, wall time mostly measures the neighbours.
double cpu_us() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

}  // namespace

int main() {
  std::mt19937 rng(42);
  std::vector<size_t> key_counts = {1, 2, 4, 6, 8, 10, 16, 32, 100, 1000};
  std::printf("%-6s %8s | %-26s | %-26s\n", "keys", "body B", "level 1: gz B  ratio CPU us", "level 6: gz B  ratio CPU us");
  for (size_t keys : key_counts) {
    std::string body = mget_body(keys, rng);
    std::printf("%-6zu %8zu", keys, body.size());
    for (int level : {1, 6}) {
      libdeflate_compressor* c = libdeflate_alloc_compressor(level);
      std::vector<char> out(libdeflate_gzip_compress_bound(c, body.size()));
      size_t size = 0;
      int rounds = static_cast<int>(2000000 / body.size()) + 10;
      double start = cpu_us();
      for (int r = 0; r < rounds; ++r) size = libdeflate_gzip_compress(c, body.data(), body.size(), out.data(), out.size());
      double us = (cpu_us() - start) / rounds;
      std::printf(" | %13zu %6.2f %6.2f", size, static_cast<double>(size) / body.size(), us);
      libdeflate_free_compressor(c);
    }
    std::printf("\n");
  }
}

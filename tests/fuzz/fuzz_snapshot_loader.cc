// libFuzzer target for the snapshot loader, two ways.
//
// Any bytes as a snapshot file (every input not starting with 'D'), read
// and restored into a small store (so eviction runs too). Whatever the
// bytes, the loader must not crash, leak or read out of bounds, and must
// report a status; the store must stay within its limit; and the last record
// of a key decides: a key whose last record is expired is absent, and a key
// present holds its last record's value (issue 16).
//
// A valid file built from the input, then damaged ('D' first): the input
// picks the records and their blocking, then one kind of damage (bytes
// flipped in a block, a stretch zeroed over one or more blocks, bytes cut
// out of a block, the file cut short). The loader must hand out exactly the
// records of every block left intact, in order, and report the damage
// (issue 25).
#include "snapshot.h"

#include <fuzzer/FuzzedDataProvider.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace {

class FixedClock final : public kv::Clock {
 public:
  uint64_t now_ms() const override { return 5'000'000; }
};

void check_any_bytes(const uint8_t* data, size_t size) {
  static FixedClock clock;
  constexpr uint64_t kBudget = 256 * 1024;
  kv::Store store(2, kBudget, clock);
  kv::snapshot::MemorySource source(std::string_view(reinterpret_cast<const char*>(data), size));
  // Wall time inside the range the seeds' expiries straddle.
  kv::TimeBase base{clock.now_ms(), 1'700'000'000'000};
  kv::RestoreSummary summary = kv::restore_snapshot(source, store, base);
  // The same bytes read again: what each key's last (loaded) record says.
  std::map<std::string, std::optional<std::string>> last;  // nullopt: expired
  kv::snapshot::MemorySource again(std::string_view(reinterpret_cast<const char*>(data), size));
  kv::snapshot::read(again, [&](const kv::snapshot::Record& record) {
    bool expired = record.expires_unix_ms != 0 && base.tick_from_wall(record.expires_unix_ms) == 0;
    last[std::string(record.key)] = expired ? std::nullopt : std::optional<std::string>(record.value);
  });
  for (const auto& [key, value] : last) {
    std::optional<std::string> got;
    store.get(kv::make_key(key), [&](std::string_view v) { got = std::string(v); });
    if (got && got != value) std::abort();
  }
  if (summary.read.status == kv::snapshot::ReadStatus::complete &&
      summary.loaded + summary.expired + summary.too_large != summary.read.records) {
    std::abort();
  }
  if (store.stats().bytes_used > kBudget) std::abort();
}

template <typename T>
void put(std::string& out, T value) {
  out.append(reinterpret_cast<const char*>(&value), sizeof value);
}

struct Built {
  std::string bytes;
  std::vector<size_t> block_start;               // of every block, the end block last
  std::vector<std::vector<std::string>> records;  // each block's records (key + '=' + value), none for the end block
};

// A version 1 file, laid out as snapshot_format.h draws it.
Built build(FuzzedDataProvider& in) {
  Built out;
  size_t count = in.ConsumeIntegralInRange<size_t>(0, 200);
  std::vector<std::pair<std::string, std::string>> records;
  for (size_t i = 0; i < count; ++i) {
    // Values of 16 letters: a whole block header cannot hide in one.
    std::string value(in.ConsumeIntegralInRange<size_t>(0, in.ConsumeBool() ? 256 : 40), 'a');
    for (size_t j = 0; j < value.size(); ++j) value[j] = static_cast<char>('a' + (i * 7 + j) % 16);
    records.emplace_back("k" + std::to_string(i), std::move(value));
  }
  size_t per_block = in.ConsumeIntegralInRange<size_t>(1, 40);
  std::string header(kv::snapshot::kMagic, sizeof kv::snapshot::kMagic);
  put<uint32_t>(header, kv::snapshot::kVersion);
  put<uint32_t>(header, 0);
  put<int64_t>(header, 1234);
  put<uint64_t>(header, count);
  put<uint32_t>(header, kv::snapshot::crc32c(header.data(), header.size()));
  out.bytes = header;
  auto add_block = [&](size_t first, size_t end) {
    std::string body;
    put<uint32_t>(body, 0);  // length, filled below
    put<uint32_t>(body, static_cast<uint32_t>(end - first));
    std::vector<std::string> listed;
    for (size_t i = first; i < end; ++i) {
      put<uint16_t>(body, static_cast<uint16_t>(records[i].first.size()));
      put<uint16_t>(body, static_cast<uint16_t>(records[i].second.size()));
      put<int64_t>(body, 0);
      body += records[i].first;
      body += records[i].second;
      listed.push_back(records[i].first + "=" + records[i].second);
    }
    uint32_t length = static_cast<uint32_t>(body.size() - 8);
    std::memcpy(body.data(), &length, 4);
    out.block_start.push_back(out.bytes.size());
    put<uint32_t>(out.bytes, kv::snapshot::crc32c(body.data(), body.size()));
    out.bytes += body;
    out.records.push_back(std::move(listed));
  };
  for (size_t first = 0; first < count; first += per_block) add_block(first, std::min(count, first + per_block));
  add_block(0, 0);  // the end block
  out.records.back().clear();
  return out;
}

void check_damage(FuzzedDataProvider& in) {
  Built file = build(in);
  size_t blocks = file.block_start.size();
  auto block_end = [&](size_t b) { return b + 1 < blocks ? file.block_start[b + 1] : file.bytes.size(); };
  std::string bad = file.bytes;
  size_t target = in.ConsumeIntegralInRange<size_t>(0, blocks - 1);
  size_t from = file.block_start[target];
  size_t at = in.ConsumeIntegralInRange<size_t>(from, block_end(target) - 1);
  // Blocks whose bytes no longer stand whole; for a cut-short file, every one from the cut on.
  std::vector<bool> lost(blocks, false);
  switch (in.ConsumeIntegralInRange<int>(0, 3)) {
    case 0: {  // bytes flipped in one block
      int flips = in.ConsumeIntegralInRange<int>(1, 3);
      for (int i = 0; i < flips; ++i) {
        size_t where = i == 0 ? at : in.ConsumeIntegralInRange<size_t>(from, block_end(target) - 1);
        bad[where] = static_cast<char>(bad[where] ^ in.ConsumeIntegralInRange<uint8_t>(1, 255));
      }
      // Two flips of one byte may undo each other.
      lost[target] = bad != file.bytes;
      break;
    }
    case 1: {  // a zeroed stretch, maybe over several blocks
      size_t end = in.ConsumeIntegralInRange<size_t>(at + 1, std::min(bad.size(), at + 1 + in.ConsumeIntegralInRange<size_t>(0, 20000)));
      std::memset(bad.data() + at, 0, end - at);
      for (size_t b = 0; b < blocks; ++b) {
        lost[b] = std::string_view(bad).substr(file.block_start[b], block_end(b) - file.block_start[b]) !=
                  std::string_view(file.bytes).substr(file.block_start[b], block_end(b) - file.block_start[b]);
      }
      break;
    }
    case 2: {  // bytes cut out of one block: the blocks after it shift
      size_t n = in.ConsumeIntegralInRange<size_t>(1, block_end(target) - at);
      bad.erase(at, n);
      lost[target] = true;
      break;
    }
    default: {  // the file cut short
      bad.resize(at);
      for (size_t b = target; b < blocks; ++b) lost[b] = true;
      break;
    }
  }
  std::vector<std::string> expected;
  bool damaged = false;
  for (size_t b = 0; b < blocks; ++b) {
    damaged |= lost[b];
    if (!lost[b]) expected.insert(expected.end(), file.records[b].begin(), file.records[b].end());
  }
  // (A block cut out whole leaves every other one intact, and the header's count short: damaged too.)
  std::vector<std::string> got;
  kv::snapshot::MemorySource source(bad);
  kv::snapshot::ReadResult result = kv::snapshot::read(source, [&](const kv::snapshot::Record& record) {
    got.push_back(std::string(record.key) + "=" + std::string(record.value));
  });
  if (got != expected) std::abort();
  if (result.records != expected.size()) std::abort();
  if (damaged != (result.status == kv::snapshot::ReadStatus::damaged)) std::abort();
  if (damaged && (result.damaged_ranges == 0 || result.damage.empty() || result.offset != result.damage[0].begin)) {
    std::abort();
  }
  size_t total = 0;
  for (const auto& records : file.records) total += records.size();
  if (result.header_records != total || result.lost_records() != total - expected.size()) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 0 && data[0] == 'D') {
    FuzzedDataProvider in(data + 1, size - 1);
    check_damage(in);
  } else {
    check_any_bytes(data, size);
  }
  return 0;
}

// libFuzzer target for the snapshot loader: any bytes as a snapshot file,
// read and restored into a small store (so eviction runs too). Whatever the
// bytes, the loader must not crash, leak or read out of bounds, and must
// report a status; the store must stay within its limit; and the last record
// of a key decides: a key whose last record is expired is absent, and a key
// present holds its last record's value (issue 16).
#include "snapshot.h"

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <optional>
#include <string>

namespace {

class FixedClock final : public kv::Clock {
 public:
  uint64_t now_ms() const override { return 5'000'000; }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
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
  return 0;
}

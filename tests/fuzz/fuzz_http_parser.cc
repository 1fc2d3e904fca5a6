// Differential fuzz target for the shipped Connection (connection.h) and the
// request framing under it: the same bytes are fed to one connection as a
// single read and to another in several reads, split at points chosen by the
// first bytes of the input, through a fake socket (fake_io.h) that may also
// take the responses only a little at a time. Both must send exactly the same
// responses (bar "100 Continue", which only a request still arriving gets)
// and end in the same state; the buffer budget must be whole again once they
// close. Anything else traps.
//
// Input layout: byte 0 = number of split points (mod 8), bit 3 = the split
// connection's socket takes at most 1 KiB a write event; then 2 bytes per
// split point (little endian, taken modulo the payload size), then the payload.
#include "connection.h"
#include "fake_io.h"
#include "log.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace {

using namespace kv;
using namespace kv::testing;

void check(bool ok) {
  if (!ok) __builtin_trap();
}

std::string without_continues(std::string sent) {
  constexpr std::string_view kContinue = http::kContinueResponse;
  for (size_t at = sent.find(kContinue); at != std::string::npos; at = sent.find(kContinue, at)) sent.erase(at, kContinue.size());
  return sent;
}

size_t count(std::string_view haystack, std::string_view needle) {
  size_t n = 0;
  for (size_t at = haystack.find(needle); at != std::string::npos; at = haystack.find(needle, at + 1)) ++n;
  return n;
}

// Lets the socket take what it may, then pumps; returns when nothing moves.
void settle(Connection& connection, FakeIo& io, size_t send_step) {
  for (int i = 0; i < 100000 && !connection.closed(); ++i) {
    io.send_room = send_step;
    pump(connection, io);
    if (!io.writing && !(io.reading && (!io.incoming.empty() || io.client_fin))) return;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const bool quiet = (set_log_level(LogLevel::error), true);
  (void)quiet;
  // One loop per side; their stores live across inputs. The two see the same
  // requests in the same order (or the run traps), so their stores stay equal.
  static TestLoop whole_loop;
  static TestLoop split_loop;
  static const bool same_date = (split_loop.date = whole_loop.date, true);  // so the responses compare
  (void)same_date;
  if (size < 1) return 0;
  size_t splits = data[0] % 8;
  const size_t send_step = (data[0] & 8) ? 1024 : SIZE_MAX;
  if (size < 1 + 2 * splits) return 0;
  std::vector<size_t> points;
  const uint8_t* payload = data + 1 + 2 * splits;
  const size_t payload_size = size - 1 - 2 * splits;
  const char* bytes = reinterpret_cast<const char*>(payload);
  for (size_t i = 0; i < splits; ++i) {
    size_t raw = data[1 + 2 * i] | (size_t{data[2 + 2 * i]} << 8);
    points.push_back(payload_size == 0 ? 0 : raw % (payload_size + 1));
  }
  std::sort(points.begin(), points.end());
  points.push_back(payload_size);

  FakeIo whole_io(whole_loop.clock);
  Connection whole(whole_loop.loop, whole_io);
  whole.start();
  whole_io.incoming.assign(bytes, payload_size);
  settle(whole, whole_io, SIZE_MAX);

  FakeIo split_io(split_loop.clock);
  Connection split(split_loop.loop, split_io);
  split.start();
  size_t at = 0;
  for (size_t point : points) {
    split_io.incoming.append(bytes + at, point - at);
    at = point;
    settle(split, split_io, send_step);
  }

  check(whole.closed() == split.closed());
  check(whole.lingering() == split.lingering());
  check(whole.carried_input() == split.carried_input());
  // Unanswered bytes are at most one request still arriving (or requests held back).
  check(whole.carried_input() <= kInputCapacity);
  // At most one "100 Continue" per request, however the bytes were split.
  check(count(split_io.sent, http::kContinueResponse) <= count(split_io.sent, "HTTP/1.1 ") + 1);
  const std::string whole_sent = without_continues(whole_io.sent);
  const std::string split_sent = without_continues(split_io.sent);
  // /metrics reports latencies, which differ from run to run: compare the responses' count then.
  if (std::string_view(bytes, payload_size).find("metrics") == std::string_view::npos) {
    check(whole_sent == split_sent);
  } else {
    check(count(whole_sent, "HTTP/1.1 ") == count(split_sent, "HTTP/1.1 "));
  }
  // Whatever either connection held goes back to the budget.
  whole.close();
  split.close();
  check(whole_loop.buffers.used() == 0);
  check(split_loop.buffers.used() == 0);
  return 0;
}

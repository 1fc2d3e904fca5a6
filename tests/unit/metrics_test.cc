// The declared metrics: the one renderer (label sets, histograms, scaled
// values, series shown at zero), the per-worker and shared counters, and the
// declarations read against the docs' metric table and the golden list the
// e2e suite compares /metrics with.
#include "connection.h"
#include "handlers.h"
#include "metrics.h"
#include "process_metrics.h"
#include "snapshot.h"
#include "store_metrics.h"
#include "tls.h"

#include <doctest/doctest.h>
#include <unistd.h>

#include <ctime>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

using namespace kv;

namespace {

constexpr std::string_view kColours[] = {"red", "green"};
constexpr std::string_view kSizes[] = {"s", "m", "l"};
constexpr MetricLabel kTwoLabels[] = {label<kColours>("colour"), label<kSizes>("size")};
constexpr double kBuckets[] = {0.5, 1};
bool only_green_m(size_t series) { return series == 4; }

constexpr MetricDecl kTestDecls[] = {
    {"t_plain_total", MetricType::counter, "A plain counter."},
    {"t_pairs_total", MetricType::counter, "Two labels.", kTwoLabels},
    {"t_sparse_total", MetricType::counter, "Two labels, one shown at zero.", kTwoLabels, {}, 1, only_green_m},
    {"t_seconds", MetricType::histogram, "A histogram kept in milliseconds.", {}, kBuckets, 1000},
    {"t_scaled", MetricType::gauge, "Milliseconds shown as seconds.", {}, {}, 1000},
};
constexpr MetricTable kTest(kTestDecls);
static_assert(slot_count(kTest) == 1 + 6 + 6 + 4 + 1);
static_assert(slot_of(kTest, "t_pairs_total") == 1);
static_assert(slot_of(kTest, "t_seconds") == 13);

// Every module's table: what /metrics can carry.
std::vector<MetricTable> all_tables() {
  return {kApiMetrics, kConnectionMetrics, kConnectionGauges, kStoreMetrics, kSnapshotMetrics, kTlsMetrics,
          kProcessMetrics};
}

std::string type_of(MetricType type) {
  return type == MetricType::counter ? "counter" : type == MetricType::gauge ? "gauge" : "histogram";
}

std::string trim(std::string s) {
  while (!s.empty() && s.front() == ' ') s.erase(s.begin());
  while (!s.empty() && s.back() == ' ') s.pop_back();
  return s;
}

std::vector<std::string> split(const std::string& s, char separator) {
  std::vector<std::string> parts;
  std::stringstream in(s);
  for (std::string part; std::getline(in, part, separator);) parts.push_back(trim(part));
  return parts;
}

}  // namespace

TEST_CASE("render: HELP and TYPE once a family, every label combination, histograms cumulative") {
  WorkerCounters counters(kTest, 2);
  counters.worker(0)[0].add(2);
  counters.worker(1)[0].add(3);
  counters.worker(1)[slot_of(kTest, "t_pairs_total") + 5].add(7);  // green, l
  constexpr size_t h = slot_of(kTest, "t_seconds");
  counters.worker(0)[h + 0].add(1);     // <= 0.5
  counters.worker(1)[h + 2].add(2);     // +Inf
  counters.worker(0)[h + 3].add(4500);  // the sum: 4.5 s
  counters.worker(0)[slot_of(kTest, "t_scaled")].add(1500);
  std::string out = render_source(counters);
  CHECK(out ==
        "# HELP t_plain_total A plain counter.\n# TYPE t_plain_total counter\nt_plain_total 5\n"
        "# HELP t_pairs_total Two labels.\n# TYPE t_pairs_total counter\n"
        "t_pairs_total{colour=\"red\",size=\"s\"} 0\nt_pairs_total{colour=\"red\",size=\"m\"} 0\n"
        "t_pairs_total{colour=\"red\",size=\"l\"} 0\nt_pairs_total{colour=\"green\",size=\"s\"} 0\n"
        "t_pairs_total{colour=\"green\",size=\"m\"} 0\nt_pairs_total{colour=\"green\",size=\"l\"} 7\n"
        "# HELP t_sparse_total Two labels, one shown at zero.\n# TYPE t_sparse_total counter\n"
        "t_sparse_total{colour=\"green\",size=\"m\"} 0\n"
        "# HELP t_seconds A histogram kept in milliseconds.\n# TYPE t_seconds histogram\n"
        "t_seconds_bucket{le=\"0.5\"} 1\nt_seconds_bucket{le=\"1\"} 1\nt_seconds_bucket{le=\"+Inf\"} 3\n"
        "t_seconds_sum 4.5\nt_seconds_count 3\n"
        "# HELP t_scaled Milliseconds shown as seconds.\n# TYPE t_scaled gauge\nt_scaled 1.5\n");
  // A series not shown at zero appears once it moves.
  counters.worker(0)[slot_of(kTest, "t_sparse_total")].add();
  CHECK(render_source(counters).find("t_sparse_total{colour=\"red\",size=\"s\"} 1\n") != std::string::npos);
}

TEST_CASE("counters: a per-worker gauge goes down, shared counters add and set, computed ones are read at the scrape") {
  WorkerCounters counters(kTest, 3);
  counters.worker(2)[0].add(4);
  counters.worker(2)[0].sub(1);
  CHECK(metric_value(counters, "t_plain_total") == 3);
  // Rows never share a cache line.
  CHECK(reinterpret_cast<char*>(counters.worker(1)) - reinterpret_cast<char*>(counters.worker(0)) >= 64);

  SharedCounters shared(kTest);
  shared[slot_of(kTest, "t_scaled")].set(9);
  shared[slot_of(kTest, "t_pairs_total") + 1].add(2);
  CHECK(metric_value(shared, "t_scaled") == 9);
  CHECK(metric_value(shared, "t_pairs_total", 1) == 2);

  uint64_t now = 1;
  ComputedMetrics computed(kTest, [&now](std::span<uint64_t> values) { values[0] = now; });
  now = 42;
  CHECK(metric_value(computed, "t_plain_total") == 42);
}

TEST_CASE("process metrics: read from /proc/self at the scrape") {
  ProcessMetrics process(64 << 20);
  CHECK(metric_value(process, "kvcache_memory_limit_bytes") == 64 << 20);
  CHECK(metric_value(process, "process_resident_memory_bytes") > 0);
  CHECK(metric_value(process, "process_virtual_memory_bytes") >= metric_value(process, "process_resident_memory_bytes"));
  uint64_t start_ms = metric_value(process, "process_start_time_seconds");
  uint64_t now_ms = static_cast<uint64_t>(time(nullptr)) * 1000;
  CHECK(start_ms <= now_ms + 2000);
  CHECK(start_ms + 3600 * 1000 > now_ms);  // this test started within the hour
  CHECK(metric_value(process, "process_open_fds") >= 3);
  CHECK(metric_value(process, "process_max_fds") >= metric_value(process, "process_open_fds"));
  std::string out = render_source(process);
  CHECK(out.find("# TYPE process_cpu_seconds_total counter\n") != std::string::npos);
  CHECK(out.find("kvcache_build_info{version=\"") != std::string::npos);
}

TEST_CASE("process metrics: the boot time is found past an intr line of many KiB") {
  // A host with many CPUs and devices writes an intr line far longer than a small buffer.
  char path[] = "/tmp/kvcache-proc-stat-XXXXXX";
  int fd = mkstemp(path);
  REQUIRE(fd >= 0);
  std::string text = "cpu  1 2 3 4\nintr 123456789";
  for (int i = 0; i < 20000; ++i) text += " 0";
  text += "\nctxt 42\nbtime 1765150000\nprocesses 9\n";
  REQUIRE(write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()));
  close(fd);
  CHECK(read_boot_time_seconds(path) == 1765150000);
  unlink(path);
  CHECK(read_boot_time_seconds("/nonexistent/stat") == 0);
}

TEST_CASE("requests: the series an endpoint answers in normal use exist at zero, the rest appear when counted") {
  WorkerCounters api(kApiMetrics, 1);
  std::string out = render_source(api);
  CHECK(out.find("kvcache_requests_total{endpoint=\"get\",code=\"404\"} 0\n") != std::string::npos);
  CHECK(out.find("kvcache_requests_total{endpoint=\"put\",code=\"200\"} 0\n") != std::string::npos);
  CHECK(out.find("kvcache_requests_total{endpoint=\"other\",code=\"404\"} 0\n") != std::string::npos);
  CHECK(out.find("code=\"431\"") == std::string::npos);
  ApiCounters(api.worker(0)).count_request(0, 431);
  ApiCounters(api.worker(0)).count_request(RequestHandler::kEndpointCount, 299);  // not in the status table
  out = render_source(api);
  CHECK(out.find("kvcache_requests_total{endpoint=\"get\",code=\"431\"} 1\n") != std::string::npos);
  CHECK(out.find("kvcache_requests_total{endpoint=\"other\",code=\"other\"} 1\n") != std::string::npos);
}

TEST_CASE("declarations: one per name, counters end in _total, each documented with its type and labels") {
  std::map<std::string, const MetricDecl*> declared;
  for (MetricTable table : all_tables()) {
    for (const MetricDecl& decl : table) {
      CHECK_MESSAGE(declared.emplace(std::string(decl.name), &decl).second, decl.name);
      if (decl.type == MetricType::counter) CHECK_MESSAGE(decl.name.ends_with("_total"), decl.name);
      CHECK_MESSAGE(!decl.help.empty(), decl.name);
      CHECK(decl.labels.size() <= 8);
    }
  }

  // docs/operations.md, "Metrics and alerts": | `name{labels}`, `name` | type[, type] | meaning |
  std::ifstream docs(KVCACHE_SOURCE_ROOT "/docs/operations.md");
  REQUIRE(docs);
  std::map<std::string, std::pair<std::string, std::string>> documented;  // name -> type, labels
  for (std::string line; std::getline(docs, line);) {
    if (line.rfind("| `kvcache_", 0) != 0 && line.rfind("| `process_", 0) != 0) continue;
    std::vector<std::string> columns = split(line.substr(2), '|');
    REQUIRE(columns.size() >= 2);
    std::vector<std::string> names = split(columns[0], ',');
    // Commas inside {a,b} split a name's labels: join them back.
    std::vector<std::string> joined;
    for (const std::string& part : names) {
      if (!joined.empty() && joined.back().find('{') != std::string::npos && joined.back().find('}') == std::string::npos) {
        joined.back() += "," + part;
      } else {
        joined.push_back(part);
      }
    }
    std::vector<std::string> types = split(columns[1], ',');
    for (size_t i = 0; i < joined.size(); ++i) {
      std::string name = joined[i].substr(1, joined[i].size() - 2);  // without the backticks
      std::string labels;
      if (size_t brace = name.find('{'); brace != std::string::npos) {
        labels = name.substr(brace + 1, name.size() - brace - 2);
        name = name.substr(0, brace);
      }
      documented[name] = {types.size() == joined.size() ? types[i] : types[0], labels};
    }
  }
  // Plain names, not structured bindings: clang 14 cannot capture those in doctest's lambdas.
  for (const auto& entry : declared) {
    const std::string& name = entry.first;
    const auto& decl = entry.second;
    auto it = documented.find(name);
    if (it == documented.end()) {
      FAIL_CHECK(name << " is declared but not in docs/operations.md's metric table");
      continue;
    }
    CHECK_MESSAGE(it->second.first == type_of(decl->type), name);
    std::string labels;
    for (const MetricLabel& label : decl->labels) {
      if (!labels.empty()) labels += ',';
      labels += label.name;
    }
    CHECK_MESSAGE(it->second.second == labels, name);
  }
  for (const auto& entry : documented) {
    const std::string& name = entry.first;
    CHECK_MESSAGE(declared.count(name) == 1, name << " is in docs/operations.md but declared nowhere");
  }

  // The golden list of the e2e suite names the same families with the same types.
  std::ifstream golden(KVCACHE_SOURCE_ROOT "/tests/e2e/metrics_golden.txt");
  REQUIRE(golden);
  std::map<std::string, std::string> listed;
  for (std::string line; std::getline(golden, line);) {
    if (line.rfind("# TYPE ", 0) != 0) continue;
    std::vector<std::string> words = split(line.substr(7), ' ');
    listed[words[0]] = words[1];
  }
  CHECK(listed.size() == declared.size());
  for (const auto& entry : declared) CHECK_MESSAGE(listed[entry.first] == type_of(entry.second->type), entry.first);
}

// /metrics in the Prometheus text format (0.0.4), from declarations, as
// Pelikan's modules declare theirs: each module declares its metrics once, in
// a table of MetricDecl (name, type, help, labels, histogram buckets), and
// keeps their values in one of three MetricSources: WorkerCounters (one row
// of single-writer counters per worker thread, summed at a scrape: no
// contention on the hot path), SharedCounters (atomics any thread writes) or
// ComputedMetrics (read at scrape time, e.g. the store's stats). Metrics
// strings the sources together and one renderer writes them all: HELP and
// TYPE lines, label sets, histograms. No module writes exposition text.
//
// A table's values sit in slots, in declaration order: one per series of a
// plain or labelled metric (labels vary with the first one slowest), and for a
// histogram one per bucket, one for +Inf and one for the sum. slot_of() finds
// a metric's first slot by name.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <iterator>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace kv {

enum class MetricType : uint8_t { counter, gauge, histogram };

// One label of a metric and the values it takes (in slot order).
struct MetricLabel {
  std::string_view name;
  size_t count;
  std::string_view (*value)(size_t index);
};

// A label whose values are a static array of strings.
template <const auto& kValues>
constexpr MetricLabel label(std::string_view name) {
  return {name, std::size(kValues), [](size_t index) -> std::string_view { return kValues[index]; }};
}

struct MetricDecl {
  std::string_view name;
  MetricType type;
  std::string_view help;
  std::span<const MetricLabel> labels = {};  // a labelled counter or gauge: one series per combination
  std::span<const double> buckets = {};      // a histogram's upper bounds (+Inf is added)
  // Values are integers; a scale other than 1 divides them and renders a
  // float (a sum kept in nanoseconds and exported in seconds: 1e9).
  uint64_t scale = 1;
  // For a labelled metric: which series are written while zero (null: all).
  // A series not listed appears once it moves.
  bool (*shown_at_zero)(size_t series) = nullptr;

  constexpr size_t series() const {
    size_t n = 1;
    for (const MetricLabel& label : labels) n *= label.count;
    return n;
  }
  constexpr size_t slots() const { return type == MetricType::histogram ? buckets.size() + 2 : series(); }
};

using MetricTable = std::span<const MetricDecl>;

constexpr size_t slot_count(MetricTable table) {
  size_t n = 0;
  for (const MetricDecl& decl : table) n += decl.slots();
  return n;
}

// The first slot of the metric called `name` (a compile error in a constant
// expression when there is none).
constexpr size_t slot_of(MetricTable table, std::string_view name) {
  size_t slot = 0;
  for (const MetricDecl& decl : table) {
    if (decl.name == name) return slot;
    slot += decl.slots();
  }
  throw "no metric of that name in the table";
}

// Written by one thread, read by the scraper: relaxed load+store, no lock
// prefix. A gauge kept this way goes down with sub() (the sum over workers
// wraps back correctly).
class Counter {
 public:
  void add(uint64_t n = 1) { value_.store(value_.load(std::memory_order_relaxed) + n, std::memory_order_relaxed); }
  void sub(uint64_t n = 1) { value_.store(value_.load(std::memory_order_relaxed) - n, std::memory_order_relaxed); }
  uint64_t get() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> value_{0};
};

// Written by any thread (an atomic add), read by the scraper: for events
// rarer than requests (handshakes, reloads, snapshots) and for gauges set
// from anywhere.
class SharedCounter {
 public:
  void add(uint64_t n = 1) { value_.fetch_add(n, std::memory_order_relaxed); }
  void set(uint64_t value) { value_.store(value, std::memory_order_relaxed); }
  uint64_t get() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> value_{0};
};

// A module's declared metrics and where their values come from.
class MetricSource {
 public:
  explicit MetricSource(MetricTable table) : table_(table) {}
  virtual ~MetricSource() = default;
  MetricTable table() const { return table_; }
  // Writes every slot of the table (values.size() == slot_count(table())).
  virtual void collect(std::span<uint64_t> values) const = 0;

 private:
  MetricTable table_;
};

// One row of counters per worker thread, each written by its worker alone;
// a scrape sums the rows. Rows are indexed by slot (slot_of) and sit on
// cache lines of their own.
class WorkerCounters final : public MetricSource {
 public:
  WorkerCounters(MetricTable table, unsigned workers);
  Counter* worker(unsigned index) { return rows_.get() + index * stride_; }
  void collect(std::span<uint64_t> values) const override;

 private:
  size_t stride_;
  unsigned workers_;
  std::unique_ptr<Counter[]> rows_;
};

// One atomic per slot, written by any thread.
class SharedCounters final : public MetricSource {
 public:
  explicit SharedCounters(MetricTable table);
  SharedCounter& operator[](size_t slot) { return slots_[slot]; }
  const SharedCounter& operator[](size_t slot) const { return slots_[slot]; }
  void collect(std::span<uint64_t> values) const override;

 private:
  std::unique_ptr<SharedCounter[]> slots_;
};

// Values read at scrape time by a function (gauges of state another part
// owns: the store's entries, the buffer budget, /proc/self).
class ComputedMetrics final : public MetricSource {
 public:
  using Compute = std::function<void(std::span<uint64_t> values)>;
  ComputedMetrics(MetricTable table, Compute compute) : MetricSource(table), compute_(std::move(compute)) {}
  void collect(std::span<uint64_t> values) const override { compute_(values); }

 private:
  Compute compute_;
};

// Appends one table's families, with `values` in its slot order.
void render_metrics(std::string& out, MetricTable table, std::span<const uint64_t> values);

// One series' value as a scrape would see it (for tests and checks, not the hot path).
uint64_t metric_value(const MetricSource& source, std::string_view name, size_t series = 0);
// One source's families as a scrape would write them.
std::string render_source(const MetricSource& source);

class Metrics {
 public:
  // Sources render in the order they were added; each must outlive this.
  void add(const MetricSource& source) { sources_.push_back(&source); }
  std::span<const MetricSource* const> sources() const { return sources_; }
  // Appends the whole exposition to out.
  void render(std::string& out) const;

 private:
  std::vector<const MetricSource*> sources_;
};

}  // namespace kv

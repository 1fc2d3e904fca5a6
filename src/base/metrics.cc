#include "metrics.h"

#include <fmt/format.h>

#include <algorithm>

namespace kv {
namespace {

constexpr std::string_view type_name(MetricType type) {
  switch (type) {
    case MetricType::counter: return "counter";
    case MetricType::gauge: return "gauge";
    case MetricType::histogram: return "histogram";
  }
  return "untyped";
}

// Label values are declared strings, but the format wants \, " and newline escaped.
void append_label_value(std::string& out, std::string_view value) {
  for (char c : value) {
    if (c == '\\' || c == '"') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
}

void append_value(std::string& out, uint64_t value, uint64_t scale) {
  if (scale == 1) {
    fmt::format_to(std::back_inserter(out), " {}\n", value);
  } else {
    fmt::format_to(std::back_inserter(out), " {}\n", static_cast<double>(value) / static_cast<double>(scale));
  }
}

// name{a="x",b="y"} for series `series` of decl (labels vary with the first one slowest).
void append_series(std::string& out, const MetricDecl& decl, size_t series) {
  out += decl.name;
  if (decl.labels.empty()) return;
  // Each label's index, from the last (fastest) one back.
  size_t index[8] = {};
  for (size_t l = decl.labels.size(); l-- > 0;) {
    index[l] = series % decl.labels[l].count;
    series /= decl.labels[l].count;
  }
  out += '{';
  for (size_t l = 0; l < decl.labels.size(); ++l) {
    if (l > 0) out += ',';
    out += decl.labels[l].name;
    out += "=\"";
    append_label_value(out, decl.labels[l].value(index[l]));
    out += '"';
  }
  out += '}';
}

void render_histogram(std::string& out, const MetricDecl& decl, std::span<const uint64_t> slots) {
  auto it = std::back_inserter(out);
  uint64_t cumulative = 0;
  for (size_t b = 0; b <= decl.buckets.size(); ++b) {
    cumulative += slots[b];
    if (b < decl.buckets.size()) {
      fmt::format_to(it, "{}_bucket{{le=\"{}\"}} {}\n", decl.name, decl.buckets[b], cumulative);
    } else {
      fmt::format_to(it, "{}_bucket{{le=\"+Inf\"}} {}\n", decl.name, cumulative);
    }
  }
  fmt::format_to(it, "{}_sum {}\n", decl.name,
                 static_cast<double>(slots[decl.buckets.size() + 1]) / static_cast<double>(decl.scale));
  fmt::format_to(it, "{}_count {}\n", decl.name, cumulative);
}

}  // namespace

WorkerCounters::WorkerCounters(MetricTable table, unsigned workers)
    : MetricSource(table), workers_(workers) {
  // Rows on cache lines of their own: workers never write the same line.
  constexpr size_t kPerLine = 64 / sizeof(Counter);
  stride_ = (slot_count(table) + kPerLine - 1) / kPerLine * kPerLine;
  rows_.reset(new Counter[std::max<size_t>(stride_ * workers, 1)]);
}

void WorkerCounters::collect(std::span<uint64_t> values) const {
  for (size_t slot = 0; slot < values.size(); ++slot) {
    uint64_t total = 0;
    for (unsigned w = 0; w < workers_; ++w) total += rows_[w * stride_ + slot].get();
    values[slot] = total;
  }
}

SharedCounters::SharedCounters(MetricTable table)
    : MetricSource(table), slots_(new SharedCounter[std::max<size_t>(slot_count(table), 1)]) {}

void SharedCounters::collect(std::span<uint64_t> values) const {
  for (size_t slot = 0; slot < values.size(); ++slot) values[slot] = slots_[slot].get();
}

void render_metrics(std::string& out, MetricTable table, std::span<const uint64_t> values) {
  size_t slot = 0;
  for (const MetricDecl& decl : table) {
    std::span<const uint64_t> slots = values.subspan(slot, decl.slots());
    slot += decl.slots();
    fmt::format_to(std::back_inserter(out), "# HELP {} {}\n# TYPE {} {}\n", decl.name, decl.help, decl.name,
                   type_name(decl.type));
    if (decl.type == MetricType::histogram) {
      render_histogram(out, decl, slots);
      continue;
    }
    for (size_t series = 0; series < slots.size(); ++series) {
      if (slots[series] == 0 && decl.shown_at_zero != nullptr && !decl.shown_at_zero(series)) continue;
      append_series(out, decl, series);
      append_value(out, slots[series], decl.scale);
    }
  }
}

uint64_t metric_value(const MetricSource& source, std::string_view name, size_t series) {
  std::vector<uint64_t> values(slot_count(source.table()));
  source.collect(values);
  return values[slot_of(source.table(), name) + series];
}

std::string render_source(const MetricSource& source) {
  std::vector<uint64_t> values(slot_count(source.table()));
  source.collect(values);
  std::string out;
  render_metrics(out, source.table(), values);
  return out;
}

void Metrics::render(std::string& out) const {
  // Scrapes run on the worker threads: a buffer each, kept warm.
  thread_local std::vector<uint64_t> values;
  for (const MetricSource* source : sources_) {
    values.assign(slot_count(source->table()), 0);
    source->collect(values);
    render_metrics(out, source->table(), values);
  }
}

}  // namespace kv

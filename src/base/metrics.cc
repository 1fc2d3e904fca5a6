#include "metrics.h"

#include <fmt/format.h>

#include <iterator>

#include "version.h"

namespace kv {

namespace exposition {

void family(std::string& out, std::string_view name, std::string_view type, std::string_view help) {
  fmt::format_to(std::back_inserter(out), "# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

void sample(std::string& out, std::string_view name, uint64_t value) {
  fmt::format_to(std::back_inserter(out), "{} {}\n", name, value);
}

void sample(std::string& out, std::string_view name, double value) {
  fmt::format_to(std::back_inserter(out), "{} {}\n", name, value);
}

void single(std::string& out, std::string_view name, std::string_view type, std::string_view help, uint64_t value) {
  family(out, name, type, help);
  sample(out, name, value);
}

}  // namespace exposition

void Metrics::render(std::string& out) const {
  for (const MetricsSource* source : sources_) source->render(out);
  exposition::single(out, "kvcache_memory_limit_bytes", "gauge", "The memory limit of the whole process.",
                     memory_limit_);
  exposition::family(out, "kvcache_build_info", "gauge", "Build information.");
  fmt::format_to(std::back_inserter(out), "kvcache_build_info{{version=\"{}\"}} 1\n", KVCACHE_VERSION);
}

}  // namespace kv

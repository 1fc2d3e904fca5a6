// `kvcache --health-check`: the container HEALTHCHECK, with no curl needed.
#pragma once

#include <cstdint>

namespace kv {

// Asks http://127.0.0.1:<port>/health; returns the process exit code (0 healthy).
int run_health_check(uint16_t port);

}  // namespace kv

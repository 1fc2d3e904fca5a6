// `kvcache --health-check`: the container HEALTHCHECK, with no curl needed.
#pragma once

#include "config.h"

namespace kv {

// Asks http://127.0.0.1:<port>/health, or https:// when the server speaks
// TLS (--tls-cert); returns the process exit code (0 healthy; 1 with the
// reason logged: connection refused, status N, TLS error, timeout).
int run_health_check(const Config& config);

}  // namespace kv

// `kvcache --check-config`: the configuration checked as a start would check
// it, without listening or loading the cache (as `nginx -t`, `haproxy -c`).
// The systemd unit runs it before the SIGHUP of `systemctl reload`.
#pragma once

#include "config.h"
#include "result.h"

namespace kv {

// The token file (or KVCACHE_AUTH_TOKEN, `env_token`), the TLS certificate,
// key and client CA, and the snapshot directory (it exists and can take the
// new file) and file (if there is one, it can be read). The flags and
// environment were checked by parse_config.
Result<void> check_config(const Config& config, const char* env_token);

}  // namespace kv

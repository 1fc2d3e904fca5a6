// `kvcache --check-config`: the configuration checked as a start would check
// it, without listening or loading the cache (as `nginx -t`, `haproxy -c`).
// The systemd unit runs it before the SIGHUP of `systemctl reload`.
#pragma once

#include "config.h"
#include "result.h"

#include <string>
#include <vector>

namespace kv {

// The token file (or KVCACHE_AUTH_TOKEN, `env_token`), the TLS certificate,
// key and client CA, and the snapshot directory (it exists and can take the
// new file) and file (if there is one, it can be read). The flags and
// environment were checked by parse_config. Returns the files not checked:
// systemd's copies of LoadCredential= files under `credentials_directory`
// ($CREDENTIALS_DIRECTORY) that this process cannot read (an ExecReload=
// process under systemd 252); the server checks them when it reads them.
Result<std::vector<std::string>> check_config(const Config& config, const char* env_token,
                                              const char* credentials_directory);

}  // namespace kv

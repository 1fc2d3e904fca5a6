#include "check_config.h"

#include "auth.h"
#include "tls.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <algorithm>
#include <string>
#include <utility>
#include <vector>

namespace kv {
namespace {

// The snapshot is written as a temporary file in its directory, then renamed
// over the old one; an existing file is read at start, and one that cannot
// be read stops the start (exit 2).
Result<void> check_snapshot(const std::string& path) {
  size_t slash = path.rfind('/');
  std::string directory = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  struct stat info {};
  if (stat(directory.c_str(), &info) != 0) {
    return fail(fmt::format("--snapshot-path {}: directory {}: {}", path, directory, std::strerror(errno)));
  }
  if (!S_ISDIR(info.st_mode)) return fail(fmt::format("--snapshot-path {}: {} is not a directory", path, directory));
  if (access(directory.c_str(), W_OK | X_OK) != 0) {
    return fail(fmt::format("--snapshot-path {}: cannot write in directory {}: {}", path, directory,
                            std::strerror(errno)));
  }
  if (stat(path.c_str(), &info) != 0) {
    if (errno == ENOENT) return {};  // none yet: the first start is empty
    return fail(fmt::format("--snapshot-path {}: {}", path, std::strerror(errno)));
  }
  if (!S_ISREG(info.st_mode)) return fail(fmt::format("--snapshot-path {}: not a regular file", path));
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return fail(fmt::format("--snapshot-path {}: {} (a snapshot that cannot be read stops the start)", path,
                            std::strerror(errno)));
  }
  close(fd);
  return {};
}

}  // namespace

Result<std::vector<std::string>> check_config(const Config& config, const char* env_token,
                                              const char* credentials_directory) {
  std::vector<std::string> skipped;
  // A file under $CREDENTIALS_DIRECTORY is systemd's copy of a LoadCredential=
  // file, which systemd 252 does not let an ExecReload= process read. Such a
  // file is named, not failed: the server checks it when the SIGHUP that
  // follows makes it read it (and keeps its current one if it does not load).
  auto hidden_credential = [&](const std::string& path) {
    if (credentials_directory == nullptr || *credentials_directory == '\0' || path.empty()) return false;
    std::string prefix = std::string(credentials_directory) + "/";
    if (path.rfind(prefix, 0) != 0 || access(path.c_str(), R_OK) == 0) return false;
    skipped.push_back(path);
    return true;
  };
  if (!hidden_credential(config.auth_token_file)) {
    if (Result<Tokens> tokens = load_configured_tokens(config.auth_token_file, env_token); !tokens) {
      return fail(tokens.error());
    }
  }
  if (config.tls()) {
    bool hidden = false;
    for (const std::string* path : {&config.tls_cert, &config.tls_key, &config.tls_client_ca}) {
      hidden = hidden_credential(*path) || hidden;
    }
    if (!hidden) {
      Result<std::unique_ptr<TlsContext>> tls = TlsContext::load({config.tls_cert, config.tls_key, config.tls_client_ca});
      if (!tls) return fail(tls.error());
    } else {
      // The pair cannot be checked together: each file that can be read is read.
      for (auto [flag, path] : {std::pair<const char*, const std::string*>{"--tls-cert", &config.tls_cert},
                                {"--tls-key", &config.tls_key}, {"--tls-client-ca", &config.tls_client_ca}}) {
        if (path->empty() || std::find(skipped.begin(), skipped.end(), *path) != skipped.end()) continue;
        if (access(path->c_str(), R_OK) != 0) return fail(fmt::format("{} {}: {}", flag, *path, std::strerror(errno)));
      }
    }
  }
  if (!config.snapshot_path.empty()) {
    if (Result<void> snapshot = check_snapshot(config.snapshot_path); !snapshot) return fail(snapshot.error());
  }
  return skipped;
}

}  // namespace kv

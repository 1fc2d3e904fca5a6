#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite:
# doctest units (parser, store, config, body decoding) and the end-to-end
# pytest suite against the real binary over loopback sockets.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh test
tools/build.sh
meson test -C build --print-errorlogs "$@"

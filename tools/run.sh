#!/usr/bin/env bash
# Installs what is missing, builds, and runs kvcache on 0.0.0.0:7171.
# Extra arguments go to kvcache (e.g. tools/run.sh --memory-limit 512M).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh build
tools/build.sh >/dev/null
exec build/kvcache "$@"

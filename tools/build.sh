#!/usr/bin/env bash
# Release build into build/ (configures it the first time).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f build/build.ninja ] || meson setup build --buildtype=release >/dev/null
ninja -C build

#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite: every
# doctest unit listed in tests/meson.build (hot_path only outside sanitizer
# builds) and the end-to-end pytest suite (tests/e2e) against the real binary
# over loopback sockets.
# Extra arguments go to `meson test` (e.g. --suite unit).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh test
tools/build.sh
status=0
meson test -C build --print-errorlogs "$@" || status=$?
# One closing line for CI, counted from meson's own log.
/usr/bin/python3 - build/meson-logs/testlog.json <<'PY'
import json, sys
results = [json.loads(line)["result"] for line in open(sys.argv[1]) if line.strip()]
passed = sum(r in ("OK", "EXPECTEDFAIL") for r in results)
skipped = sum(r == "SKIP" for r in results)
print(f"tests: {passed} passed, {len(results) - passed - skipped} failed, {skipped} skipped")
PY
exit $status

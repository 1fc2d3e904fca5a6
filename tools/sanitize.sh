#!/usr/bin/env bash
# Runs the test suite under the sanitizers, with clang:
#  1. build-asan (-Db_sanitize=address,undefined): the whole meson test suite,
#     unit and e2e (the e2e suite starts build-asan/kvcache via KVCACHE_BIN);
#  2. build-tsan (-Db_sanitize=thread): the connection unit tests (a
#     connection waiting on the snapshot thread's answer) and the snapshot
#     model test (the walk beside a thread of random operations), then the
#     concurrency-relevant e2e tests (concurrent clients, pipelining, slow
#     clients, drain, connection limit, eviction) against the TSan binary.
# Sanitizer reports go to files (log_path) and any report fails the run, even
# one from a server process whose test would otherwise pass.
# Usage: tools/sanitize.sh [asan|tsan]   (default: both)
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-all}"

tools/install-deps.sh sanitize
symbolizer=$(command -v llvm-symbolizer || command -v llvm-symbolizer-14 || true)

status=0

# Fails (status=1) if any report file was written into $1.
check_reports() {
  local dir="$1" name="$2"
  shopt -s nullglob
  local reports=("$dir"/*)
  shopt -u nullglob
  if [ ${#reports[@]} -gt 0 ]; then
    echo "!! $name: ${#reports[@]} sanitizer report(s):" >&2
    for report in "${reports[@]}"; do
      echo "--- $report" >&2
      head -60 "$report" >&2
    done
    status=1
  else
    echo "$name: no sanitizer reports"
  fi
}

if [ "$what" = all ] || [ "$what" = asan ]; then
  build=build-asan
  if [ ! -f "$build/build.ninja" ]; then
    CC=clang CXX=clang++ meson setup "$build" -Db_sanitize=address,undefined -Db_lundef=false \
      -Dbuildtype=debugoptimized -Dcpp_args=-fno-omit-frame-pointer
  fi
  ninja -C "$build"
  reports="$PWD/$build/sanitizer-reports"
  rm -rf "$reports"
  mkdir -p "$reports"
  start=$SECONDS
  rc=0
  ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:log_path=$reports/asan" \
    UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$reports/ubsan" \
    ASAN_SYMBOLIZER_PATH="$symbolizer" \
    meson test -C "$build" --print-errorlogs || rc=$?
  echo "asan+ubsan: meson test exit $rc in $((SECONDS - start))s"
  [ "$rc" -ne 0 ] && status=1
  check_reports "$reports" "asan+ubsan"
fi

if [ "$what" = all ] || [ "$what" = tsan ]; then
  build=build-tsan
  if [ ! -f "$build/build.ninja" ]; then
    CC=clang CXX=clang++ meson setup "$build" -Db_sanitize=thread -Db_lundef=false \
      -Dbuildtype=debugoptimized -Dcpp_args=-fno-omit-frame-pointer
  fi
  ninja -C "$build" kvcache tests/connection_test tests/snapshot_model_test
  reports="$PWD/$build/sanitizer-reports"
  rm -rf "$reports"
  mkdir -p "$reports"
  # TSan's fixed shadow layout clashes with high mmap randomization on recent
  # kernels ("FATAL: ThreadSanitizer: unexpected memory mapping"). If a probe
  # run hits that, run the tests with ASLR off for the server (setarch -R is
  # inherited by the server processes pytest starts).
  wrap=()
  if ! probe=$(TSAN_OPTIONS=halt_on_error=1 "$build/kvcache" --help 2>&1 >/dev/null) ||
    grep -q "ThreadSanitizer" <<<"$probe"; then
    echo "tsan probe failed ($(head -1 <<<"$probe")); retrying with setarch -R" >&2
    if TSAN_OPTIONS=halt_on_error=1 setarch "$(uname -m)" -R "$build/kvcache" --help >/dev/null 2>&1; then
      wrap=(setarch "$(uname -m)" -R)
    else
      echo "tsan still fails under setarch -R; lowering vm.mmap_rnd_bits to 28" >&2
      sysctl -w vm.mmap_rnd_bits=28
    fi
  fi
  # Concurrency-relevant e2e tests: 8 concurrent keep-alive clients, pipelined
  # batches (incl. the large burst and held-back output), a slow reader beside
  # others, timeouts firing while others are served, SIGTERM drain with work
  # in flight, the shared connection limit, eviction under load, and the
  # snapshot thread beside the loops (test_snapshot.py), and every TLS test
  # (test_tls.py: handshakes on both loops, SIGHUP reloads beside them).
  for unit in connection_test snapshot_model_test; do
    rc=0
    TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:log_path=$reports/tsan" \
      TSAN_SYMBOLIZER_PATH="$symbolizer" "${wrap[@]}" "$build/tests/$unit" || rc=$?
    echo "tsan: $unit exit $rc"
    [ "$rc" -ne 0 ] && status=1
  done
  selection="concurrent or pipelined or burst or slow_client or read_timeout or sigterm \
or max_connections or memory_limit or byte_by_byte or fragments or snapshot or tls"
  start=$SECONDS
  rc=0
  KVCACHE_BIN="$PWD/$build/kvcache" \
    TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:log_path=$reports/tsan" \
    TSAN_SYMBOLIZER_PATH="$symbolizer" \
    "${wrap[@]}" /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/e2e -k "$selection" || rc=$?
  echo "tsan: pytest exit $rc in $((SECONDS - start))s"
  [ "$rc" -ne 0 ] && status=1
  check_reports "$reports" "tsan"
fi

exit "$status"

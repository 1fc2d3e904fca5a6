#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz/) with clang, ASan and UBSan into
# build-fuzz, then for each target:
#  - replays the saved crashers in tests/fuzz/regressions/<target>/ one by one
#    (one that still crashes fails the run; the ones that pass join the corpus);
#  - fuzzes for the given time on a copy of tests/fuzz/corpus/<target>/ (the
#    tree stays clean; everything goes to build-fuzz/fuzz-out/<target>/),
#    with tests/fuzz/corpus/<target>.dict as its dictionary when there is one.
# Prints the executions each target reached (libFuzzer's "#N DONE" line) and
# exits non-zero if any target or regression crashes; new crashing inputs are
# left in build-fuzz/fuzz-out/<target>/artifacts/. Targets run side by side,
# FUZZ_JOBS at a time (default: the CPU count).
# Usage: tools/fuzz.sh [seconds-per-target [target...]]   (default 60 s, every target)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
# The targets are listed once, in tests/fuzz/meson.build.
read -r -a targets <<<"$(sed -nE "s/^fuzz_targets = \[(.*)\]/\1/p" tests/fuzz/meson.build | tr -d "',")"
[ $# -gt 0 ] && targets=("$@")

tools/install-deps.sh sanitize

build=build-fuzz
if [ ! -f "$build/build.ninja" ]; then
  CC=clang CXX=clang++ meson setup "$build" -Dfuzz=true -De2e=false \
    -Db_sanitize=address,undefined -Db_lundef=false \
    "-Dcpp_args=['-fsanitize=fuzzer-no-link','-g']"
fi
ninja -C "$build" "${targets[@]/#/tests/fuzz/}"

out="$build/fuzz-out"
rm -rf "$out"
mkdir -p "$out"
export ASAN_OPTIONS="abort_on_error=1:detect_leaks=1:symbolize=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
# One target: its saved regressions, then the timed run. Everything it reports
# goes to files under $out/$target, so that targets can run side by side.
fuzz_target() {
  local target="$1" corpus="$out/$1/corpus" regression rc=0 done_line execs rate cov
  mkdir -p "$corpus" "$out/$target/artifacts"
  : >"$out/$target/regressions-failed"
  cp tests/fuzz/corpus/"$target"/* "$corpus"/ 2>/dev/null || true
  # Saved crashers first, one by one: one that still fails is reported as such
  # and left out of the corpus, so the known bug does not stop the fuzzing.
  shopt -s nullglob
  for regression in tests/fuzz/regressions/"$target"/*; do
    if "$build/tests/fuzz/$target" -timeout=10 -rss_limit_mb=2048 "$regression" \
      >"$out/$target/regression-$(basename "$regression").log" 2>&1; then
      cp "$regression" "$corpus"/
    else
      echo "!! $target: regression input still fails: $regression" \
        "(log: $out/$target/regression-$(basename "$regression").log)" >&2
      grep -E 'ERROR|SUMMARY|runtime error|#[0-9]+ 0x' "$out/$target/regression-$(basename "$regression").log" \
        | head -12 >&2 || true
      echo "$regression" >>"$out/$target/regressions-failed"
    fi
  done
  shopt -u nullglob
  local log="$out/$target/log"
  echo "== $target: ${seconds}s on $(ls "$corpus" | wc -l) seed inputs" >&2
  # -jobs=1/-workers=1 keep one process; the log is the only output.
  # A target's dictionary, if it has one: tests/fuzz/corpus/<target>.dict.
  local dict=()
  [ -f tests/fuzz/corpus/"$target".dict ] && dict=("-dict=tests/fuzz/corpus/$target.dict")
  "$build/tests/fuzz/$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 "${dict[@]}" \
    -print_final_stats=1 -artifact_prefix="$out/$target/artifacts/" "$corpus" >"$log" 2>&1 || rc=$?
  # The final stats line: "#N  DONE   cov: ... exec/s: E rss: ...".
  done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true)
  execs=$(grep -E '^stat::number_of_executed_units:' "$log" | awk '{print $2}' | tail -1 || true)
  if [ -n "$done_line" ]; then
    execs=$(sed -E 's/^#([0-9]+).*/\1/' <<<"$done_line")
    rate=$(sed -nE 's/.*exec\/s: ([0-9]+).*/\1/p' <<<"$done_line")
    cov=$(sed -nE 's/.*cov: ([0-9]+).*/\1/p' <<<"$done_line")
    printf '%-18s %10s execs  %6s exec/s  cov %s\n' "$target" "$execs" "$rate" "$cov" >"$out/$target/summary"
  else
    printf '%-18s %10s execs  CRASHED (rc %s)\n' "$target" "${execs:-?}" "$rc" >"$out/$target/summary"
  fi
  if [ "$rc" -ne 0 ] || [ -z "$done_line" ]; then
    echo "!! $target failed (rc $rc); log: $log" >&2
    grep -E 'ERROR|SUMMARY|runtime error|#[0-9]+ 0x' "$log" | head -40 >&2 || true
    ls "$out/$target/artifacts/" >&2
    return 1
  fi
}

# One target per CPU at a time (each fuzzer is one process): CI's total time
# is the targets' time divided by the CPUs, each target still fuzzed for the
# full time on a CPU of its own.
jobs="${FUZZ_JOBS:-$(nproc)}"
running=0
for target in "${targets[@]}"; do
  if [ "$running" -ge "$jobs" ]; then
    wait -n || true
    running=$((running - 1))
  fi
  (fuzz_target "$target" && touch "$out/$target/ok") &
  running=$((running + 1))
done
wait || true

failed=()
regressions_failed=()
summary=()
for target in "${targets[@]}"; do
  summary+=("$(cat "$out/$target/summary" 2>/dev/null || echo "$target: no result")")
  [ -e "$out/$target/ok" ] || failed+=("$target")
  while read -r regression; do
    [ -n "$regression" ] && regressions_failed+=("$regression")
  done <"$out/$target/regressions-failed"
done

echo
echo "fuzzing summary (${seconds}s per target):"
printf '  %s\n' "${summary[@]}"
if [ ${#regressions_failed[@]} -gt 0 ]; then
  echo "FAILED: saved regression inputs still crash:" >&2
  printf '  %s\n' "${regressions_failed[@]}" >&2
fi
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: ${failed[*]} (crashing inputs under $out/<target>/artifacts/;" \
    "save them under tests/fuzz/regressions/<target>/)" >&2
  exit 1
fi
[ ${#regressions_failed[@]} -eq 0 ]

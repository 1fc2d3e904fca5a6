#!/usr/bin/env bash
# User-space instructions per request of HAProxy for given configs, and of a
# kvcache node serving the same load directly (docs/benchmarks.md, "The proxy
# tier"). Counted by valgrind's callgrind, so the figures do not depend on what
# else the box is doing (unlike CPU time); the kernel's part is not counted.
#
#   tools/bench/proxy_instructions.sh CONFIG...
#
# CONFIG: HAProxy configs as tools/cluster.sh takes them (e.g. the haproxy-*.cfg
# files tools/bench/proxy_factors.sh leaves in its OUT_DIR, or
# deploy/haproxy/haproxy.cfg). For each: 2 nodes from tools/cluster.sh, and
# the rendered config run again under callgrind (one process, -db) on PORT+5;
# a 2 s warm-up, counters zeroed, wrk (mixed.lua, -c50) for DURATION, counters
# dumped; instructions / requests wrk completed. Then the same for one kvcache
# node (--threads 1) under callgrind, as "direct". Under valgrind everything
# runs ~50x slower: the rates printed mean nothing.
#
# Env: DURATION (8s) PUT_RATIO (0.3: the share of puts) PORT (17600) KVCACHE (default build/kvcache) OUT_DIR
#      (default tools/bench/results/instructions-<timestamp>). Loopback only;
#      every wait bounded; only processes started here are stopped, by pid.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
DURATION=${DURATION:-8s}
PORT=${PORT:-17600}
PUT_RATIO=${PUT_RATIO:-0.3}
KVCACHE=${KVCACHE:-$repo/build/kvcache}
OUT_DIR=${OUT_DIR:-$here/results/instructions-$(date +%Y%m%d-%H%M%S)}
HAPROXY=${HAPROXY:-$(command -v haproxy || echo /usr/sbin/haproxy)}

die() {
  echo "proxy_instructions.sh: $*" >&2
  exit 1
}
(($# > 0)) || die "usage: $0 CONFIG..."
for tool in wrk valgrind callgrind_control; do command -v $tool >/dev/null || die "$tool not installed"; done
[[ -x $KVCACHE ]] || die "no binary at $KVCACHE (tools/build.sh)"
mkdir -p "$OUT_DIR"

vg_pid=""
cluster_dir=""
cleanup() {
  if [[ -n $vg_pid ]]; then
    kill -TERM "$vg_pid" 2>/dev/null || true
    wait "$vg_pid" 2>/dev/null || true
  fi
  [[ -n $cluster_dir ]] && RUN_DIR=$cluster_dir "$repo/tools/cluster.sh" down "$PORT" >/dev/null 2>&1
  return 0
}
trap cleanup EXIT

wait_port() {  # wait_port PORT: up to 60 s (valgrind starts slowly)
  for _ in $(seq 600); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    kill -0 "$vg_pid" 2>/dev/null || die "the process under valgrind exited (see $OUT_DIR)"
    sleep 0.1
  done
  die "nothing listens on $1 after 60 s"
}

# Runs "$@" under callgrind listening on LISTEN_PORT; sets requests and instructions.
count() {  # count NAME LISTEN_PORT COMMAND...
  local name=$1 port=$2 dump
  shift 2
  valgrind --tool=callgrind --callgrind-out-file="$OUT_DIR/$name.callgrind" "$@" \
    >"$OUT_DIR/$name.valgrind.log" 2>&1 </dev/null &
  vg_pid=$!
  wait_port "$port"
  sleep 3  # HAProxy's first health checks
  export KEYS=5000 VALUE_LEN=128 PUT_RATIO=$PUT_RATIO
  timeout -k 5 120 wrk -t2 -c50 -d2s --timeout 30s -s "$here/mixed.lua" "http://127.0.0.1:$port" >/dev/null 2>&1 || true
  callgrind_control -z "$vg_pid" >/dev/null 2>&1
  timeout -k 5 300 wrk -t2 -c50 -d"$DURATION" --timeout 30s -s "$here/mixed.lua" "http://127.0.0.1:$port" \
    >"$OUT_DIR/$name.wrk.txt" 2>&1 || true
  callgrind_control -d "$vg_pid" >/dev/null 2>&1
  kill -TERM "$vg_pid" 2>/dev/null || true
  wait "$vg_pid" 2>/dev/null || true
  vg_pid=""
  requests=$(awk '/requests in/ { print $1 }' "$OUT_DIR/$name.wrk.txt")
  [[ -n $requests && $requests -gt 0 ]] || die "no requests in $OUT_DIR/$name.wrk.txt"
  grep -q ' unexpected=0 .*socket_errors=0' "$OUT_DIR/$name.wrk.txt" ||
    echo "# $name: unexpected statuses or socket errors, see $OUT_DIR/$name.wrk.txt" >&2
  # the dump made by callgrind_control -d: the file with a ".1" suffix
  dump=$(ls "$OUT_DIR/$name.callgrind".* | head -1)
  instructions=$(awk '/^summary:/ { print $2 }' "$dump")
}

printf '%-40s %10s %16s\n' target requests "instructions/req" | tee "$OUT_DIR/summary.txt"
for cfg in "$@"; do
  [[ -f $cfg ]] || die "no config $cfg"
  name=$(basename "$cfg" .cfg)
  cluster_dir=$OUT_DIR/cluster-$name
  RUN_DIR=$cluster_dir HAPROXY_TEMPLATE=$cfg KVCACHE=$KVCACHE NODE_FLAGS="--threads 1 --memory-limit 256M" \
    "$repo/tools/cluster.sh" up 2 "$PORT" >/dev/null
  KVCACHE_PROXY_BIND=127.0.0.1:$((PORT + 5)) KVCACHE_STATS_BIND=127.0.0.1:$((PORT + 105)) \
    count "$name" $((PORT + 5)) "$HAPROXY" -db -f "$cluster_dir/haproxy.cfg"
  RUN_DIR=$cluster_dir "$repo/tools/cluster.sh" down "$PORT" >/dev/null
  cluster_dir=""
  printf '%-40s %10d %16d\n' "$name" "$requests" $((instructions / requests)) | tee -a "$OUT_DIR/summary.txt"
done
count direct $((PORT + 5)) "$KVCACHE" --bind 127.0.0.1 --port $((PORT + 5)) --threads 1 --memory-limit 256M
printf '%-40s %10d %16d\n' "direct (1 node)" "$requests" $((instructions / requests)) | tee -a "$OUT_DIR/summary.txt"

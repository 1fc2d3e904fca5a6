#!/usr/bin/env bash
# kvcache benchmark suite: kvcache vs an nginx fixed-body baseline, same wrk script, same box.
#
#   tools/bench/run.sh                                   # all scenarios, 3 rounds x 10s each
#   DURATION=3s ROUNDS=1 tools/bench/run.sh              # quick smoke run
#   SCENARIOS="mixed big" ROUNDS=5 tools/bench/run.sh
#
# Scenarios (SCENARIOS, space separated, default all):
#   mixed      mixed.lua: 5000 keys, 128-byte values, 30% puts, -c50
#   get        get.lua: gets only, the 5000 keys preloaded (every get should hit)
#   put        put.lua: puts only over 5000 keys (overwrites)
#   big        2,000,000 keys preloaded (/mput), then mixed.lua over all of them
#   evict      kvcache --memory-limit 32M, pre-filled past the limit, then put.lua with
#              KEY_MODE=unique (never-seen keys): every put evicts
#   conns1000  mixed.lua with -c1000 (ulimit -n raised)
#   tls        mixed.lua over https (keep-alive): kvcache --tls-cert vs nginx's TLS server, the
#              same ECDSA P-256 certificate and ciphers; CPU time per request of both
#   handshakes close.lua over https: a new connection (full TLS handshake) per request
#   cluster    mixed.lua through HAProxy to 2 nodes (tools/cluster.sh, deploy/haproxy/haproxy.cfg)
#              as a third target of each round, beside kvcache direct and nginx; CPU time per
#              request of HAProxy, of the 2 nodes and of the direct node from /proc/PID/stat
# For every scenario: a fresh kvcache (--bind 127.0.0.1 --port KV_PORT --threads KV_THREADS
# + scenario flags), preload if needed, then ROUNDS alternating rounds: wrk against kvcache, then
# the same wrk (same script, same env) against nginx (which answers 200 + a 171-byte JSON to all).
#
# Env: ROUNDS (3) DURATION (10s) SCENARIOS (all) KV_PORT (17171) NGINX_PORT (18080)
#      KV_THREADS (2) KV_FLAGS (extra kvcache flags, all scenarios) KVCACHE (binary path,
#      default <repo>/build/kvcache, built with meson/ninja if missing) WRK_THREADS (2)
#      CONNS (50) WRK_TIMEOUT (2s) COOLDOWN (1 s between runs) PRELOAD_TIMEOUT (300 s)
#      BIG_KEYS (2000000) EVICT_LIMIT (32M) EVICT_FILL (400000) CLUSTER_PORT (17200: HAProxy,
#      nodes on +1 and +2, HAProxy stats on +100) OUT_DIR
#      (default tools/bench/results/<timestamp>)
# Output in OUT_DIR: raw wrk outputs, rounds.csv (every run), summary.csv (table below),
#      chart.png (tools/bench/chart.py), kvcache logs, /metrics snapshots, notes.txt.
# Loopback only. Every wait is bounded. Only processes started here are stopped (by PID).
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
PY=/usr/bin/python3

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
SCENARIOS=${SCENARIOS:-"mixed get put big evict conns1000 tls handshakes cluster"}
KV_PORT=${KV_PORT:-17171}
NGINX_PORT=${NGINX_PORT:-18080}
NGINX_TLS_PORT=${NGINX_TLS_PORT:-18443}
KV_THREADS=${KV_THREADS:-2}
KV_FLAGS=${KV_FLAGS:-}
KVCACHE=${KVCACHE:-$repo/build/kvcache}
WRK_THREADS=${WRK_THREADS:-2}
CONNS=${CONNS:-50}
WRK_TIMEOUT=${WRK_TIMEOUT:-2s}
COOLDOWN=${COOLDOWN:-1}
PRELOAD_TIMEOUT=${PRELOAD_TIMEOUT:-300}
BIG_KEYS=${BIG_KEYS:-2000000}
EVICT_LIMIT=${EVICT_LIMIT:-32M}
EVICT_FILL=${EVICT_FILL:-400000}
CLUSTER_PORT=${CLUSTER_PORT:-17200}
OUT_DIR=${OUT_DIR:-$here/results/$(date +%Y%m%d-%H%M%S)}

die() { echo "run.sh: $*" >&2; exit 1; }
log() { echo "[$(date +%H:%M:%S)] $*"; }

[[ $ROUNDS =~ ^[0-9]+$ && $ROUNDS -ge 1 && $ROUNDS -le 100 ]] || die "ROUNDS must be 1..100"
case $DURATION in
  *[0-9]s) dur_s=${DURATION%s} ;; *[0-9]m) dur_s=$(( ${DURATION%m} * 60 )) ;;
  *[0-9]h) die "DURATION in hours? no" ;; *) dur_s=$DURATION ;;
esac
[[ $dur_s =~ ^[0-9]+$ && $dur_s -ge 1 && $dur_s -le 3600 ]] || die "DURATION must be 1s..60m (e.g. 10s)"
wrk_bound=$(( dur_s + 60 ))
for s in $SCENARIOS; do
  case $s in mixed|get|put|big|evict|conns1000|tls|handshakes|cluster) ;; *) die "unknown scenario '$s'";; esac
done
# wrk, nginx-light, matplotlib for the chart, ...: whatever is missing.
"$repo/tools/install-deps.sh" bench || die "tools/install-deps.sh bench failed"

mkdir -p "$OUT_DIR/raw" || die "cannot create $OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
ROUNDS_CSV=$OUT_DIR/rounds.csv
NOTES=$OUT_DIR/notes.txt
: > "$NOTES"
note() { echo "$*" | tee -a "$NOTES"; }

# ---------------------------------------------------------------- fd limit (-c1000)
hard=$(ulimit -Hn)
want=65536
[[ $hard != unlimited && $hard -lt $want ]] && want=$hard
ulimit -n "$want" 2>/dev/null || true
log "ulimit -n = $(ulimit -n)"

# ---------------------------------------------------------------- build
if [[ ! -x $KVCACHE ]]; then
  log "building $KVCACHE (release)"
  ( cd "$repo" && { [[ -d build ]] || meson setup build --buildtype=release; } && ninja -C build ) \
    > "$OUT_DIR/build.log" 2>&1 || { tail -30 "$OUT_DIR/build.log"; die "build failed (see $OUT_DIR/build.log)"; }
  [[ -x $KVCACHE ]] || die "build finished but $KVCACHE does not exist"
fi

# Run a private copy: a rebuild during the run cannot swap the binary under us.
cp "$KVCACHE" "$OUT_DIR/kvcache" || die "cannot copy $KVCACHE"
note "binary: $KVCACHE (sha256 $(sha256sum "$KVCACHE" | cut -c1-16), built $(date -r "$KVCACHE" '+%F %T')), repo HEAD $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo none)$(git -C "$repo" status --porcelain -- src 2>/dev/null | grep -q . && echo ' + uncommitted src changes')"
KVBIN=$OUT_DIR/kvcache

# ---------------------------------------------------------------- process control
kv_pid=""
ng_pid=""
cluster_up=""
stop_rc=""
stop_pid() {  # stop_pid PID NAME: SIGTERM, wait <=10 s, then SIGKILL; exit status -> $stop_rc
  # (not to be called in $(...): wait only works for children of this shell)
  local pid=$1 name=$2 i
  stop_rc=""
  [[ -n $pid ]] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "WARNING: $name (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL" | tee -a "$NOTES" >&2
      kill -KILL "$pid" 2>/dev/null
    fi
  else
    stop_rc="(had already exited) "
  fi
  wait "$pid" 2>/dev/null
  stop_rc="$stop_rc$?"
}
cleanup() {
  [[ -n $cluster_up ]] && RUN_DIR=$OUT_DIR/cluster "$repo/tools/cluster.sh" down "$CLUSTER_PORT" >/dev/null
  [[ -n $kv_pid ]] && stop_pid "$kv_pid" kvcache
  [[ -n $ng_pid ]] && stop_pid "$ng_pid" nginx
  kv_pid=""; ng_pid=""
}
trap cleanup EXIT
trap 'echo "interrupted"; exit 130' INT TERM

port_free() {
  $PY - "$1" <<'PYEOF'
import socket, sys
s = socket.socket()
# As kvcache binds: TIME_WAIT left by the last scenario's closes does not make the port busy.
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
PYEOF
}
wait_http() {  # wait_http URL PID: up to 10 s
  local i
  for ((i = 0; i < 100; i++)); do
    kill -0 "$2" 2>/dev/null || return 1
    curl -sfk --max-time 1 -o /dev/null "$1" && return 0
    sleep 0.1
  done
  return 1
}
cpu_ticks() {  # cpu_ticks PID...: user + system clock ticks of these processes, all threads
  local pid total=0 f
  for pid in "$@"; do
    # fields after "(comm) ": utime and stime are the 12th and 13th
    read -r -a f < <(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null) || continue
    total=$((total + f[11] + f[12]))
  done
  echo "$total"
}
child_pids() {  # child_pids PID: its children (HAProxy's workers, nginx's workers)
  local d
  for d in /proc/[0-9]*; do
    [[ $(awk '/^PPid:/ { print $2 }' "$d/status" 2>/dev/null) == "$1" ]] && echo "${d#/proc/}"
  done
}
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
metrics_snapshot() {  # metrics_snapshot FILE
  curl -sk --max-time 5 "$scheme://127.0.0.1:$KV_PORT/metrics" > "$1" 2>/dev/null || true
}
metrics_brief() {  # interesting counters/gauges, one line
  grep -v '^#' "$1" 2>/dev/null | grep -Ei 'evict|entries|bytes|connection|expir|hits|misses' | grep -v bucket \
    | awk '{printf "%s=%s ", $1, $2}'
}

port_free "$NGINX_PORT" || die "port $NGINX_PORT (NGINX_PORT) is in use"
port_free "$NGINX_TLS_PORT" || die "port $NGINX_TLS_PORT (NGINX_TLS_PORT) is in use"
# One ECDSA P-256 certificate for kvcache's and nginx's TLS.
mkdir -p "$OUT_DIR/tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$OUT_DIR/tls/key.pem" -out "$OUT_DIR/tls/cert.pem" \
  2>/dev/null || die "openssl could not make the benchmark certificate"
scheme=http
port_free "$KV_PORT" || die "port $KV_PORT (KV_PORT) is in use (SO_REUSEPORT would split traffic); pick another KV_PORT"

log "starting nginx baseline on 127.0.0.1:$NGINX_PORT"
NGINX_PORT=$NGINX_PORT NGINX_WORKERS=${NGINX_WORKERS:-$(nproc)} NGINX_TLS_PORT=$NGINX_TLS_PORT \
  NGINX_TLS_CERT=$OUT_DIR/tls/cert.pem NGINX_TLS_KEY=$OUT_DIR/tls/key.pem "$here/nginx-run.sh" "$OUT_DIR/nginx" \
  > "$OUT_DIR/nginx.stdout" 2>&1 &
ng_pid=$!
wait_http "http://127.0.0.1:$NGINX_PORT/" "$ng_pid" || die "nginx did not come up (see $OUT_DIR/nginx/error.log)"

start_kv() {  # start_kv SCENARIO FLAGS...
  local sc=$1; shift
  port_free "$KV_PORT" || die "port $KV_PORT became busy"
  # shellcheck disable=SC2086
  "$KVBIN" --bind 127.0.0.1 --port "$KV_PORT" --threads "$KV_THREADS" "$@" $KV_FLAGS \
    > "$OUT_DIR/kvcache-$sc.log" 2>&1 &
  kv_pid=$!
  if ! wait_http "$scheme://127.0.0.1:$KV_PORT/health" "$kv_pid"; then
    tail -20 "$OUT_DIR/kvcache-$sc.log"
    die "kvcache did not answer /health within 10 s (flags: $* $KV_FLAGS)"
  fi
  log "kvcache pid $kv_pid up ($*), RSS $(rss_kb "$kv_pid") kB"
}
stop_kv() {  # stop_kv SCENARIO
  local sc=$1
  kill -0 "$kv_pid" 2>/dev/null || note "[$sc] ERROR: kvcache (pid $kv_pid) died during the scenario (see kvcache-$sc.log)"
  stop_pid "$kv_pid" kvcache
  [[ $stop_rc == 0 ]] || note "[$sc] WARNING: kvcache exit status after SIGTERM: $stop_rc (spec: 0)"
  kv_pid=""
}

# CPU groups measured around each wrk run: "name:pid pid ..." entries (empty: none).
cpu_groups=()
run_wrk() {  # run_wrk SCENARIO ROUND TARGET PORT SCRIPT CONNS ENV...
  local sc=$1 rnd=$2 tgt=$3 port=$4 script=$5 conns=$6; shift 6
  local raw="$OUT_DIR/raw/$sc-r$rnd-$tgt.txt" rc g before=()
  # shellcheck disable=SC2086  # each group holds a list of pids
  for g in "${cpu_groups[@]}"; do before+=("$(cpu_ticks ${g#*:})"); done
  env "$@" timeout -k 5 "$wrk_bound" wrk -t"$WRK_THREADS" -c"$conns" -d"$DURATION" \
    --timeout "$WRK_TIMEOUT" --latency -s "$here/$script" "$scheme://127.0.0.1:$port" > "$raw" 2>&1
  rc=$?
  for g in "${!cpu_groups[@]}"; do
    # shellcheck disable=SC2086
    echo "$sc,$rnd,$tgt,${cpu_groups[g]%%:*},$(($(cpu_ticks ${cpu_groups[g]#*:}) - before[g]))" >> "$OUT_DIR/cpu.csv"
  done
  $PY "$here/report.py" row "$sc" "$rnd" "$tgt" "$raw" "$ROUNDS_CSV" "$rc"
  sleep "$COOLDOWN"
}

preload() {  # preload SCENARIO ARGS...
  local sc=$1; shift
  log "preload: $*"
  $PY "$here/preload.py" --port "$KV_PORT" --timeout "$PRELOAD_TIMEOUT" "$@" 2>&1 | tee -a "$OUT_DIR/preload-$sc.log"
  return "${PIPESTATUS[0]}"
}

# ---------------------------------------------------------------- scenarios
log "results in $OUT_DIR; scenarios: $SCENARIOS; $ROUNDS round(s) x $DURATION"
load_note() {  # other load on the box skews every ratio: record it
  local l; read -r l _ < /proc/loadavg
  note "load average (1 min) $1: $l (CPUs: $(nproc))$(awk -v l="$l" -v n="$(nproc)" \
    'BEGIN { if (l > 0.5 * n) print "  WARNING: the box is busy, results are noisy" }')"
}
load_note "at start"
for sc in $SCENARIOS; do
  script=mixed.lua; conns=$CONNS; flags=(); envs=(KEYS=5000 VALUE_LEN=128 PUT_RATIO=0.3)
  scheme=http; ng_port=$NGINX_PORT
  tls_flags=(--tls-cert "$OUT_DIR/tls/cert.pem" --tls-key "$OUT_DIR/tls/key.pem")
  case $sc in
    tls) scheme=https; ng_port=$NGINX_TLS_PORT; flags=("${tls_flags[@]}") ;;
    handshakes) scheme=https; ng_port=$NGINX_TLS_PORT; flags=("${tls_flags[@]}"); script=close.lua ;;
    get) script=get.lua ;;
    put) script=put.lua ;;
    big) envs=(KEYS="$BIG_KEYS" VALUE_LEN=128 PUT_RATIO=0.3) ;;
    evict) script=put.lua; flags=(--memory-limit "$EVICT_LIMIT"); envs=(KEYS=5000 VALUE_LEN=128 KEY_MODE=unique KEY_PREFIX=ev:) ;;
    conns1000) conns=1000 ;;
  esac
  echo
  log "=== scenario $sc: $script -c$conns ${envs[*]} ${flags[*]}"
  start_kv "$sc" "${flags[@]}"
  rss0=$(rss_kb "$kv_pid")
  case $sc in
    get)
      preload "$sc" --keys 5000 --verify 500 || note "[$sc] WARNING: preload reported errors" ;;
    big)
      if preload "$sc" --keys "$BIG_KEYS" --verify 2000; then
        rss1=$(rss_kb "$kv_pid")
        metrics_snapshot "$OUT_DIR/metrics-$sc-preloaded.txt"
        note "[$sc] RSS idle ${rss0} kB -> ${rss1} kB with $BIG_KEYS keys; $(
          $PY -c "import sys; n=$BIG_KEYS; d=($rss1-$rss0)*1024/n; kv=sum(len('key:%d'%i) for i in range(1,n+1))/n+128
print(f'{d:.1f} B/entry RSS, minus key+value bytes ({kv:.1f}) = {d-kv:.1f} B overhead/entry (spec goal <= 40)')")"
        note "[$sc] metrics after preload: $(metrics_brief "$OUT_DIR/metrics-$sc-preloaded.txt")"
      else
        note "[$sc] WARNING: preload of $BIG_KEYS keys incomplete"
      fi ;;
    evict)
      preload "$sc" --keys "$EVICT_FILL" --prefix fill: --verify 0 || note "[$sc] WARNING: fill preload reported errors"
      metrics_snapshot "$OUT_DIR/metrics-$sc-preloaded.txt"
      note "[$sc] after filling $EVICT_FILL keys under --memory-limit $EVICT_LIMIT: RSS $(rss_kb "$kv_pid") kB; $(metrics_brief "$OUT_DIR/metrics-$sc-preloaded.txt")" ;;
  esac
  if [[ $sc == cluster ]]; then
    # Two nodes with the direct node's flags behind HAProxy, on the same box (sharing its CPUs).
    log "cluster: 2 nodes + HAProxy on 127.0.0.1:$CLUSTER_PORT"
    RUN_DIR=$OUT_DIR/cluster NODE_FLAGS="--threads $KV_THREADS $KV_FLAGS" KVCACHE=$KVBIN \
      "$repo/tools/cluster.sh" up 2 "$CLUSTER_PORT" | tee -a "$NOTES"
    [[ ${PIPESTATUS[0]} == 0 ]] || die "tools/cluster.sh up 2 $CLUSTER_PORT failed"
    cluster_up=1
    hx_pid=$(<"$OUT_DIR/cluster/haproxy.pid")
    cpu_groups=("haproxy:$hx_pid $(child_pids "$hx_pid" | xargs echo)"
                "nodes:$(cat "$OUT_DIR"/cluster/node*.pid | xargs echo)"
                "kvcache:$kv_pid" "nginx:$ng_pid $(child_pids "$ng_pid" | xargs echo)")
  fi
  # Server CPU time per request, kvcache and nginx (all threads and workers), in every scenario.
  [[ $sc == cluster ]] || cpu_groups=("kvcache:$kv_pid" "nginx:$ng_pid $(child_pids "$ng_pid" | xargs echo)")
  for ((r = 1; r <= ROUNDS; r++)); do
    kill -0 "$kv_pid" 2>/dev/null || break
    run_wrk "$sc" "$r" kvcache "$KV_PORT" "$script" "$conns" "${envs[@]}"
    run_wrk "$sc" "$r" nginx "$ng_port" "$script" "$conns" "${envs[@]}"
    [[ $sc == cluster ]] && run_wrk "$sc" "$r" cluster "$CLUSTER_PORT" "$script" "$conns" "${envs[@]}"
  done
  if [[ $sc == cluster ]]; then
    cpu_groups=()
    RUN_DIR=$OUT_DIR/cluster "$repo/tools/cluster.sh" down "$CLUSTER_PORT" | tee -a "$NOTES"
    cluster_up=""
    $PY "$here/report.py" cluster "$ROUNDS_CSV" "$OUT_DIR/cpu.csv" | tee -a "$NOTES"
  fi
  if [[ $sc != cluster ]]; then
    cpu_groups=()
    $PY "$here/report.py" cpu "$sc" "$ROUNDS_CSV" "$OUT_DIR/cpu.csv" | tee -a "$NOTES"
  fi
  metrics_snapshot "$OUT_DIR/metrics-$sc.txt"
  note "[$sc] end: kvcache RSS $(rss_kb "$kv_pid") kB; $(metrics_brief "$OUT_DIR/metrics-$sc.txt")"
  if [[ $sc == evict ]]; then
    note "[$sc] $($PY "$here/report.py" evictions "$OUT_DIR/metrics-$sc-preloaded.txt" \
      "$OUT_DIR/metrics-$sc.txt" "$ROUNDS_CSV" "$sc")"
    lim=$(awk '$1 == "kvcache_memory_limit_bytes" {print $2}' "$OUT_DIR/metrics-$sc.txt")
    [[ -n $lim ]] && note "[$sc] RSS / memory limit = $(awk -v r="$(rss_kb "$kv_pid")" -v l="$lim" \
      'BEGIN { printf "%.2f", r * 1024 / l }') (spec: RSS within 10% of the limit at steady state)"
  fi
  stop_kv "$sc"
  errs=$(grep -Eci 'error|fatal|abort|sanitizer' "$OUT_DIR/kvcache-$sc.log")
  [[ $errs == 0 ]] || note "[$sc] kvcache log has $errs error-looking line(s), e.g.: $(grep -Ei 'error|fatal|abort|sanitizer' "$OUT_DIR/kvcache-$sc.log" | head -3 | tr '\n' ' ')"
done

stop_pid "$ng_pid" nginx; ng_pid=""
load_note "at end (includes the benchmark itself)"

echo
log "summary (median of $ROUNDS round(s), $DURATION each; ratios are kvcache/nginx)"
[[ -s $ROUNDS_CSV ]] || die "no results"
$PY "$here/report.py" summary "$ROUNDS_CSV" "$OUT_DIR/summary.csv" | tee "$OUT_DIR/table.md"
if $PY "$here/chart.py" "$OUT_DIR/summary.csv" "$OUT_DIR/chart.png" > /dev/null 2>&1; then
  log "chart: $OUT_DIR/chart.png"
else
  log "chart.py failed: $PY $here/chart.py $OUT_DIR/summary.csv $OUT_DIR/chart.png to see why"
fi
if [[ -s $NOTES ]]; then echo; echo "notes:"; cat "$NOTES"; fi
log "csv: $OUT_DIR/summary.csv (per round: $ROUNDS_CSV)"

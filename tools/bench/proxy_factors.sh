#!/usr/bin/env bash
# CPU per request of the HAProxy tier, one factor at a time, against a kvcache
# node serving the same load directly, all in the same run (docs/benchmarks.md,
# "The proxy tier").
#
#   tools/bench/proxy_factors.sh [VARIANT...]     (default: every variant below)
#
# Each round runs wrk (mixed.lua: 5000 keys, 128-byte values, 30% puts, -c CONNS)
# against one kvcache node directly, then, for each variant, against
# tools/cluster.sh's 2 nodes behind HAProxy started from the shipped
# deploy/haproxy/haproxy.cfg changed in that one respect. CPU is user + system
# clock ticks from /proc/PID/stat (HAProxy: master and workers; nodes: both),
# divided by the requests wrk completed. Rounds alternate, so a busy box skews
# every variant alike; still, the box is shared: read the ratios, not the
# microseconds, and repeat.
#
# Variants (each alone):
#   shipped       the file as shipped
#   threads1      nbthread 1        (default: one thread per CPU)
#   threads2      nbthread 2
#   buf8k         tune.bufsize 8192 (default 16384)
#   buf64k        tune.bufsize 65536
#   noreuse       http-reuse never  (shipped: always)
#   nolog         no log lines at all (shipped: notices only)
#   felog-off     "no log" in the cache frontend only (no per-request log work; server
#                 up/down events still logged)
#   threads1-felog-off  both
#   file:PATH     another whole config (e.g. an older haproxy.cfg: git show REV:deploy/haproxy/haproxy.cfg)
#   nocheck       no health checks  (shipped: every 1 s)
#   bufreq-off    no option http-buffer-request (POSTs then route by no key: cost only)
#   replay-off    retry-on conn-failure only (shipped: also empty-response, which copies every
#                 request into a second buffer to be able to replay it on another node)
#   floor-http    the floor: HAProxy with the least config that forwards HTTP (round robin,
#                 no rules, no checks, no logs, one thread; routes nothing by key)
#   floor-tcp     the same in mode tcp: each client connection is tied to one node and bytes
#                 are copied, no HTTP parsing at all (the socket work alone)
#   route-min     floor-http plus the key routing alone (the two set-var rules, the ring)
#   global:KW=V   one more line "KW V" in global (every '=' becomes a space), e.g.
#                 global:tune.pattern.cache-size=0
#   defaults:KW=V one more line in defaults, e.g. defaults:http-reuse=safe
#   args:FLAGS    the shipped file, HAProxy started with extra command-line flags (every
#                 '+' becomes a space), e.g. args:-dMglobal,no-tag
#
# Env: ROUNDS (3) DURATION (8s) CONNS (50) WRK_THREADS (2) DELAY_MS (unset: as fast as
#      answered; N: each connection waits N ms per request, which gives the direct node and
#      the proxy about the same offered rate; see common.lua) PORT (17300: HAProxy,
#      nodes on +1, +2, stats on +100) KV_PORT (17390: the direct node)
#      KV_THREADS (2) KVCACHE (default build/kvcache) OUT_DIR (default
#      tools/bench/results/proxy-<timestamp>). Loopback only; every wait bounded;
#      only processes started here are stopped, by pid.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8s}
CONNS=${CONNS:-50}
WRK_THREADS=${WRK_THREADS:-2}
PORT=${PORT:-17300}
KV_PORT=${KV_PORT:-17390}
KV_THREADS=${KV_THREADS:-2}
KVCACHE=${KVCACHE:-$repo/build/kvcache}
OUT_DIR=${OUT_DIR:-$here/results/proxy-$(date +%Y%m%d-%H%M%S)}
ALL_VARIANTS="shipped threads1 threads2 buf8k buf64k noreuse nolog felog-off nocheck bufreq-off threads1-felog-off
  replay-off floor-http floor-tcp route-min"
variants=${*:-$ALL_VARIANTS}
TICK_US=$((1000000 / $(getconf CLK_TCK)))

die() {
  echo "proxy_factors.sh: $*" >&2
  exit 1
}
command -v wrk >/dev/null || die "wrk not installed (tools/install-deps.sh bench)"
[[ -x $KVCACHE ]] || die "no binary at $KVCACHE (tools/build.sh)"
mkdir -p "$OUT_DIR"

# The shipped file with one change.
variant_config() {  # variant_config NAME > FILE
  local shipped=$repo/deploy/haproxy/haproxy.cfg
  case $1 in
    shipped) cat "$shipped" ;;
    threads1) sed 's/^global$/global\n    nbthread 1/' "$shipped" ;;
    threads2) sed 's/^global$/global\n    nbthread 2/' "$shipped" ;;
    buf8k) sed 's/^global$/global\n    tune.bufsize 8192/' "$shipped" ;;
    buf64k) sed 's/^global$/global\n    tune.bufsize 65536/' "$shipped" ;;
    noreuse) sed 's/^    http-reuse always$/    http-reuse never/' "$shipped" ;;
    nolog) sed -e '/^    log /d' "$shipped" ;;
    nocheck) sed -e 's/^\(    default-server\) check /\1 /' -e 's/ observe layer4 error-limit 1 on-error fastinter//' \
      -e '/^    option httpchk$/d' -e '/^    http-check /d' "$shipped" ;;
    bufreq-off) sed '/^    option http-buffer-request$/d' "$shipped" ;;
    replay-off) sed 's/^    retry-on conn-failure empty-response$/    retry-on conn-failure/' "$shipped" ;;
    felog-off) sed 's/^frontend kvcache$/frontend kvcache\n    no log/' "$shipped" ;;
    threads1-felog-off) variant_config threads1 | sed 's/^frontend kvcache$/frontend kvcache\n    no log/' ;;
    floor-http | floor-tcp | route-min) floor_config "$1" ;;
    global:* | defaults:*)
      local section=${1%%:*} line=${1#*:}
      sed "s/^$section\$/$section\n    ${line//=/ }/" "$shipped" ;;
    args:*) cat "$shipped" ;;
    file:*) cat "${1#file:}" ;;
    *) die "unknown variant '$1' (known: $ALL_VARIANTS, file:PATH)" ;;
  esac
}

# The least config that forwards the load (floor-http, floor-tcp), or that and
# the key routing (route-min): what HAProxy costs per request at its cheapest.
floor_config() {  # floor_config VARIANT > FILE
  local mode=http balance=roundrobin
  [[ $1 == floor-tcp ]] && mode=tcp
  [[ $1 == route-min ]] && balance="hash var(txn.key)"$'\n'"    hash-type consistent"
  printf '%s\n' global "    nbthread 1" "    maxconn 4096" defaults "    mode $mode" \
    "    timeout client 30s" "    timeout server 5s" "    timeout connect 1s" \
    "frontend kvcache" '    bind "${KVCACHE_PROXY_BIND-:7171}"'
  [[ $1 == route-min ]] && printf '%s\n' "    option http-buffer-request" \
    "    http-request set-var(txn.key) url_param(key),url_dec(1) if { path /get }" \
    "    http-request set-var(txn.key) req.body,json_query('\$.key') if METH_POST"
  printf '%s\n' "    default_backend nodes" "backend nodes" "    balance $balance"
  [[ $mode == http ]] && echo "    http-reuse always"
  printf '%s\n' "    default-server weight 100" "    # BEGIN nodes" "    # END nodes" \
    "frontend stats" "    mode http" '    bind "${KVCACHE_STATS_BIND-:8405}"' \
    "    stats enable" "    stats uri /stats"
}

cpu_ticks() {  # cpu_ticks PID...: "USER SYSTEM" clock ticks, all threads
  local pid user=0 system=0 f
  for pid in "$@"; do
    read -r -a f < <(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null) || continue
    user=$((user + f[11]))
    system=$((system + f[12]))
  done
  echo "$user $system"
}
children() { pgrep -P "$1" | xargs echo; }

direct_pid=""
cluster_port=""
cleanup() {
  [[ -n $cluster_port ]] && RUN_DIR=$OUT_DIR/cluster "$repo/tools/cluster.sh" down "$cluster_port" >/dev/null 2>&1
  if [[ -n $direct_pid ]]; then
    kill -TERM "$direct_pid" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$direct_pid" 2>/dev/null || break; sleep 0.1; done
  fi
  return 0
}
trap cleanup EXIT

# One wrk run; appends "target,round,requests,group=USER+SYSTEM ticks,..." to runs.csv.
measure() {  # measure TARGET ROUND PORT "name:pids"...
  local target=$1 round=$2 port=$3 g raw before=() line requests
  shift 3
  for g in "$@"; do before+=("$(cpu_ticks ${g#*:})"); done
  raw=$OUT_DIR/$target-r$round.txt
  KEYS=5000 VALUE_LEN=128 PUT_RATIO=0.3 timeout -k 5 120 wrk -t"$WRK_THREADS" -c"$CONNS" -d"$DURATION" \
    --timeout 2s -s "$here/mixed.lua" "http://127.0.0.1:$port" >"$raw" 2>&1 || true
  requests=$(awk '/requests in/ { print $1 }' "$raw")
  [[ -n $requests && $requests -gt 0 ]] || die "no requests in $raw"
  line="$target,$round,$requests"
  local i=0
  local now
  for g in "$@"; do
    read -r -a now < <(cpu_ticks ${g#*:})
    read -r -a was <<<"${before[i]}"
    line+=",${g%%:*}=$((now[0] - was[0]))+$((now[1] - was[1]))"
    i=$((i + 1))
  done
  echo "$line" >>"$OUT_DIR/runs.csv"
  echo "$line"
}

HAPROXY=${HAPROXY:-$(command -v haproxy || echo /usr/sbin/haproxy)}
cluster_up() {  # cluster_up VARIANT NAME
  local haproxy=$HAPROXY
  if [[ $1 == args:* ]]; then  # cluster.sh runs $HAPROXY: a wrapper adds the flags
    haproxy=$OUT_DIR/haproxy-$2.sh
    printf '#!/bin/sh\nexec %q %s "$@"\n' "$HAPROXY" "${1#args:}" | tr + ' ' >"$haproxy"
    chmod +x "$haproxy"
  fi
  RUN_DIR=$OUT_DIR/cluster HAPROXY_TEMPLATE=$OUT_DIR/haproxy-$2.cfg KVCACHE=$KVCACHE HAPROXY=$haproxy \
    NODE_FLAGS="--threads $KV_THREADS --memory-limit 256M" "$repo/tools/cluster.sh" up 2 "$PORT" \
    >/dev/null 2>"$OUT_DIR/cluster-up.err"
}

"$KVCACHE" --bind 127.0.0.1 --port "$KV_PORT" --threads "$KV_THREADS" --memory-limit 256M \
  >"$OUT_DIR/direct.log" 2>&1 </dev/null &
direct_pid=$!
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$KV_PORT/health" && break; sleep 0.1; done

echo "# $(date -u +%FT%TZ) rounds=$ROUNDS duration=$DURATION conns=$CONNS delay_ms=${DELAY_MS:-0} loadavg=$(cut -d' ' -f1-3 /proc/loadavg)" |
  tee "$OUT_DIR/notes.txt"
for ((round = 1; round <= ROUNDS; round++)); do
  measure direct "$round" "$KV_PORT" "node:$direct_pid"
  for v in $variants; do
    name=${v//[\/,]/_}
    variant_config "$v" >"$OUT_DIR/haproxy-$name.cfg"
    cluster_port=$PORT
    # On a busy box a node may miss cluster.sh's 10 s health wait: one retry.
    if ! cluster_up "$v" "$name" && ! { sleep 2; cluster_up "$v" "$name"; }; then
      echo "# $v round $round: cluster.sh up failed twice: $(tail -2 "$OUT_DIR/cluster-up.err" | tr '\n' ' ')" |
        tee -a "$OUT_DIR/notes.txt"
      continue
    fi
    hx=$(<"$OUT_DIR/cluster/haproxy.pid")
    measure "$name" "$round" "$PORT" "haproxy:$hx $(children "$hx")" "nodes:$(cat "$OUT_DIR"/cluster/node*.pid | xargs echo)"
    RUN_DIR=$OUT_DIR/cluster "$repo/tools/cluster.sh" down "$PORT" >/dev/null
    cluster_port=""
  done
done
echo "# loadavg at the end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT_DIR/notes.txt"

# Medians per target: requests/s, CPU us per request of HAProxy and of the nodes,
# and HAProxy's against the direct node's.
/usr/bin/python3 - "$OUT_DIR/runs.csv" "$TICK_US" "${DURATION%s}" <<'PY' | tee -a "$OUT_DIR/notes.txt"
import statistics, sys
rows = [line.strip().split(",") for line in open(sys.argv[1]) if line.strip()]
tick_us, seconds = int(sys.argv[2]), float(sys.argv[3])
by = {}
for target, rnd, requests, *groups in rows:
    g = {}
    for x in groups:
        k, v = x.split("=")
        user, system = (int(t) for t in v.split("+"))
        g[k], g[k + ".sys"] = user + system, system
    by.setdefault(target, []).append((int(requests), g))
def med(target, key):
    return statistics.median(g.get(key, 0) * tick_us / n for n, g in by[target])
direct = med("direct", "node")
print(f"{'target':<20}{'req/s':>8}{'proxy us/req':>14}{'of it kernel':>14}{'nodes us/req':>14}{'proxy/direct':>14}")
print(f"{'direct (1 node)':<20}{statistics.median(n for n, _ in by['direct']) / seconds:>8.0f}{'':>28}"
      f"{direct:>14.1f}{'':>14}")
for target in by:
    if target == "direct":
        continue
    proxy = med(target, "haproxy")
    print(f"{target:<20}{statistics.median(n for n, _ in by[target]) / seconds:>8.0f}{proxy:>14.1f}"
          f"{med(target, 'haproxy.sys'):>14.1f}{med(target, 'nodes'):>14.1f}{proxy / direct:>13.2f}x")
PY

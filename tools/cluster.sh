#!/usr/bin/env bash
# A kvcache cluster on this machine, without Docker: N kvcache nodes behind
# HAProxy (consistent hashing on the key), all on loopback.
#
#   tools/cluster.sh up N PORT    nodes on 127.0.0.1:PORT+1..PORT+N, HAProxy on 127.0.0.1:PORT
#                                 (Prometheus /metrics and /stats on 127.0.0.1:STATS_PORT)
#   tools/cluster.sh add PORT     one more node on the next port, config re-rendered,
#                                 HAProxy reloaded gracefully (no connection dropped)
#   tools/cluster.sh down PORT    stop exactly the processes "up" and "add" started
#
# Each command prints one line per process: name, pid, address. Pid files
# live in the run directory, so "down" stops those processes and nothing else
# (each pid is checked against its command line before it is signalled).
# HAProxy runs in master-worker mode (-W); its config is rendered from
# deploy/haproxy/haproxy.cfg, the shipped file.
#
# Env: KVCACHE (binary, default build/kvcache, built if missing), HAPROXY
#      (default: haproxy on PATH, else /usr/sbin/haproxy), HAPROXY_TEMPLATE (a
#      config in place of the shipped one, e.g. a variant to measure), RUN_DIR (default /tmp/kvcache-cluster-PORT),
#      STATS_PORT (default PORT+100), NODE_FLAGS (extra kvcache flags,
#      e.g. "--threads 1 --memory-limit 64M"). Every wait is bounded.
#
# Memory: the nodes share one machine, so "up N" gives each node
# --memory-limit = 70% of the machine / N (what a single node's "auto" takes,
# divided; the machine is the smaller of MemTotal and this cgroup's limit), and
# says so on stderr. A --memory-limit in NODE_FLAGS wins. "add" gives the new
# node the same share as the others, so N+1 nodes then hold (N+1)/N of it.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
template=${HAPROXY_TEMPLATE:-$repo/deploy/haproxy/haproxy.cfg}
# Debian installs it in /usr/sbin, which is not on a normal user's PATH.
HAPROXY=${HAPROXY:-$(command -v haproxy || echo /usr/sbin/haproxy)}
KVCACHE=${KVCACHE:-$repo/build/kvcache}
NODE_FLAGS=${NODE_FLAGS:-}
MAX_NODES=64

usage() {
  echo "usage: $0 up N PORT | add PORT | down PORT" >&2
  exit 2
}
die() {
  echo "cluster.sh: $*" >&2
  exit 1
}
is_number() { [[ $1 =~ ^[0-9]+$ ]]; }

setup_port() {  # setup_port PORT: the per-cluster paths and ports
  if ! is_number "$1" || (($1 < 1 || $1 + MAX_NODES > 65535)); then die "bad PORT '$1'"; fi
  port=$1
  run_dir=${RUN_DIR:-/tmp/kvcache-cluster-$port}
  stats_port=${STATS_PORT:-$((port + 100))}
  config=$run_dir/haproxy.cfg
}

# A port somebody answers on is taken: a second kvcache would even join the
# other one's SO_REUSEPORT group silently, so check before every start.
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Bytes the machine gives this process tree: MemTotal, or a smaller cgroup
# memory limit (v2 memory.max, v1 memory.limit_in_bytes) here or up the tree,
# the same sources as the binary's --memory-limit auto (src/app/memory_limit.cc).
machine_memory() {
  local best path dir file limit
  best=$(($(awk '$1 == "MemTotal:" { print $2 }' /proc/meminfo) * 1024))
  while IFS=: read -r _ controllers path; do
    if [[ -z $controllers ]]; then
      dir=/sys/fs/cgroup file=memory.max
    elif [[ ,$controllers, == *,memory,* ]]; then
      dir=/sys/fs/cgroup/memory file=memory.limit_in_bytes
    else
      continue
    fi
    while :; do
      limit=$(cat "$dir${path%/}/$file" 2>/dev/null || true)
      # "max" (v2) and v1's page-rounded LONG_MAX mean no limit.
      if is_number "$limit" && ((limit > 0 && limit < 1 << 60 && limit < best)); then best=$limit; fi
      [[ -z $path || $path == / ]] && break
      path=${path%/*}
    done
  done </proc/self/cgroup
  echo "$best"
}

node_memory_flag() {  # node_memory_flag N: "--memory-limit BYTES" for one of N nodes, unless NODE_FLAGS sets one
  [[ " $NODE_FLAGS" == *" --memory-limit"* ]] && return 0
  local share
  share=$(($(machine_memory) / 10 * 7 / $1))
  echo "memory: --memory-limit $share per node (70% of this machine's memory / $1 nodes; NODE_FLAGS=--memory-limit overrides)" >&2
  echo "--memory-limit $share"
}

healthy() { curl -sf --max-time 1 -o /dev/null "http://127.0.0.1:$1/health"; }

# The process behind a pid file, if it is still the one we started: its
# command line must contain the marker (a node's port, HAProxy's config path).
owned_pid() {  # owned_pid PIDFILE MARKER -> prints the pid or nothing
  local pid
  [[ -f $1 ]] || return 0
  pid=$(<"$1")
  is_number "$pid" || return 0
  [[ -r /proc/$pid/cmdline ]] || return 0
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$2" && echo "$pid"
  return 0
}

running() { [[ -d /proc/$1 ]] && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null; }

stop_pid() {  # stop_pid PID NAME: SIGTERM, up to 10 s, then SIGKILL
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 100; i++)); do
    running "$pid" || return 0
    sleep 0.1
  done
  echo "$2 pid $pid ignored SIGTERM for 10 s: SIGKILL" >&2
  kill -KILL "$pid" 2>/dev/null || true
}

node_count() {  # nodes recorded in the run directory
  local n=0
  while [[ -f $run_dir/node$((n + 1)).pid ]]; do n=$((n + 1)); done
  echo "$n"
}

start_node() {  # start_node I
  local i=$1 node_port=$((port + $1)) pid k
  port_in_use "$node_port" && die "port $node_port (node$i) is already in use"
  # shellcheck disable=SC2086  # flag lists
  "$KVCACHE" --bind 127.0.0.1 --port "$node_port" $memory_flag $NODE_FLAGS \
    </dev/null >"$run_dir/node$i.log" 2>&1 &
  pid=$!
  echo "$pid" >"$run_dir/node$i.pid"
  for ((k = 0; k < 100; k++)); do
    healthy "$node_port" && break
    kill -0 "$pid" 2>/dev/null || die "node$i exited at start: $(tail -3 "$run_dir/node$i.log")"
    sleep 0.1
  done
  healthy "$node_port" || die "node$i not healthy within 10 s (log: $run_dir/node$i.log)"
  echo "node$i pid $pid 127.0.0.1:$node_port"
}

render_config() {  # render_config N: the template with servers node1..nodeN
  local n=$1 tmp=$config.tmp
  awk -v n="$n" -v port="$port" '
    /^[ \t]*# BEGIN nodes[ \t]*$/ { print; for (i = 1; i <= n; i++) printf "    server node%d 127.0.0.1:%d id %d\n", i, port + i, i; skip = 1; next }
    /^[ \t]*# END nodes[ \t]*$/ { skip = 0 }
    !skip { print }' "$template" >"$tmp"
  (haproxy_env "$HAPROXY" -c -q -f "$tmp") || die "rendered config $tmp does not validate"
  mv "$tmp" "$config"
}

haproxy_env() {  # the listen addresses for the ${...} in the template
  exec env KVCACHE_PROXY_BIND="127.0.0.1:$port" KVCACHE_STATS_BIND="127.0.0.1:$stats_port" "$@"
}

# HAProxy's view of node I ("UP", "DOWN", ...), from the stats CSV.
node_status() {
  curl -sf --max-time 1 "http://127.0.0.1:$stats_port/stats;csv" |
    awk -F, -v s="node$1" '$1 == "nodes" && $2 == s { print $18 }'
}

wait_nodes_up() {  # wait_nodes_up N: HAProxy sees node1..nodeN UP, within 10 s
  local n=$1 i k up
  for ((k = 0; k < 100; k++)); do
    up=0
    # "no check": a config without health checks (tools/bench/proxy_factors.sh nocheck)
    for ((i = 1; i <= n; i++)); do [[ $(node_status "$i") == @(UP|no check) ]] && up=$((up + 1)); done
    ((up == n)) && return 0
    sleep 0.1
  done
  die "HAProxy does not see all $n nodes UP within 10 s (log: $run_dir/haproxy.log)"
}

haproxy_line() {
  echo "haproxy pid $1 127.0.0.1:$port (master; stats and /metrics on 127.0.0.1:$stats_port; config $config)"
}

cmd_up() {
  local n=$1 i pid k
  up_done=0
  if ! is_number "$n" || ((n < 1 || n > MAX_NODES)); then die "N must be 1..$MAX_NODES"; fi
  [[ -x $HAPROXY ]] || die "haproxy not found at $HAPROXY (tools/install-deps.sh test installs it)"
  if [[ ! -x $KVCACHE ]]; then
    "$repo/tools/build.sh" >&2 || die "build failed"
  fi
  mkdir -p "$run_dir"
  [[ -z $(owned_pid "$run_dir/haproxy.pid" "$config ") ]] || die "a cluster is already running from $run_dir"
  for ((i = 1; i <= MAX_NODES; i++)); do
    [[ -z $(owned_pid "$run_dir/node$i.pid" "--port $((port + i)) ") ]] ||
      die "node$i from an earlier cluster still runs: $0 down $port first"
  done
  rm -f "$run_dir"/node*.pid "$run_dir/haproxy.pid"
  port_in_use "$port" && die "port $port (haproxy) is already in use"
  port_in_use "$stats_port" && die "port $stats_port (haproxy stats) is already in use"
  # Anything that fails from here on stops what was started.
  trap '[[ $up_done == 1 ]] || cmd_down >/dev/null 2>&1' EXIT
  memory_flag=$(node_memory_flag "$n")
  echo "$memory_flag" >"$run_dir/memory_flag"
  for ((i = 1; i <= n; i++)); do start_node "$i"; done
  render_config "$n"
  # The background subshell execs HAProxy's master: $! is the master's pid.
  haproxy_env "$HAPROXY" -W -f "$config" </dev/null >"$run_dir/haproxy.log" 2>&1 &
  pid=$!
  echo "$pid" >"$run_dir/haproxy.pid"
  for ((k = 0; k < 100; k++)); do
    healthy "$port" && break
    kill -0 "$pid" 2>/dev/null || die "haproxy exited at start: $(tail -5 "$run_dir/haproxy.log")"
    sleep 0.1
  done
  healthy "$port" || die "haproxy not answering /health within 10 s (log: $run_dir/haproxy.log)"
  wait_nodes_up "$n"
  up_done=1
  haproxy_line "$pid"
}

cmd_add() {
  local master n
  master=$(owned_pid "$run_dir/haproxy.pid" "$config ")
  [[ -n $master ]] || die "no cluster running from $run_dir"
  n=$(($(node_count) + 1))
  ((n <= MAX_NODES)) || die "at most $MAX_NODES nodes"
  memory_flag=$(cat "$run_dir/memory_flag" 2>/dev/null || true)
  start_node "$n"
  render_config "$n"
  # SIGUSR2: the master re-reads the config and starts new workers, which
  # take over the listening sockets; old workers finish their connections.
  kill -USR2 "$master"
  wait_nodes_up "$n"
  haproxy_line "$master"
}

cmd_down() {
  local pid f i
  pid=$(owned_pid "$run_dir/haproxy.pid" "$config ")
  if [[ -n $pid ]]; then
    stop_pid "$pid" haproxy
    echo "haproxy pid $pid stopped"
  fi
  rm -f "$run_dir/haproxy.pid"
  for f in "$run_dir"/node*.pid; do
    [[ -f $f ]] || continue
    i=${f##*/node}
    i=${i%.pid}
    pid=$(owned_pid "$f" "--port $((port + i)) ")
    if [[ -n $pid ]]; then
      stop_pid "$pid" "node$i"
      echo "node$i pid $pid stopped"
    fi
    rm -f "$f"
  done
}

case "${1:-}" in
  up) (($# == 3)) || usage; setup_port "$3"; cmd_up "$2" ;;
  add) (($# == 2)) || usage; setup_port "$2"; cmd_add ;;
  down) (($# == 2)) || usage; setup_port "$2"; cmd_down ;;
  *) usage ;;
esac

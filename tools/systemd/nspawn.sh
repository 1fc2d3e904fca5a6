#!/usr/bin/env bash
# Boots tools/systemd/kvcache.service under a real systemd: a Debian 12 root
# (debootstrap) in a systemd-nspawn container, as an operator would install it.
#
#   tools/systemd/nspawn.sh root         build the root once, or reuse the cached one; prints its path
#   tools/systemd/nspawn.sh boot DIR     copy the root to DIR/root, install and enable the binary,
#                                        the unit and the env file as docs/operations.md says, boot
#                                        it in the background; prints "nspawn PID" and "init PID"
#   tools/systemd/nspawn.sh run DIR CMD  run CMD inside the container (all its namespaces)
#   tools/systemd/nspawn.sh halt DIR     power the container off (SIGTERM to nspawn, up to 30 s,
#                                        then SIGKILL), remove its cgroup and DIR/root
#
# tests/e2e/test_systemd_boot.py drives it. Needs root, systemd-nspawn (package
# systemd-container), nsenter, and debootstrap + Debian's mirror for the first
# root (about 3 minutes and 250 MB; later runs copy the cached root in seconds).
#
# The root is cached in $KVCACHE_NSPAWN_CACHE (default /var/cache/kvcache-test)
# under a name keyed by the package list and this script's root recipe, so a
# changed list builds a new one. The container has its own network namespace
# (--private-network: only its loopback), so the unit listens on its default
# 7171 without meeting anything on the host.
#
# Env: KVCACHE (binary, default build/kvcache), KVCACHE_NSPAWN_CACHE, DEBIAN_MIRROR.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
KVCACHE=${KVCACHE:-$repo/build/kvcache}
cache=${KVCACHE_NSPAWN_CACHE:-/var/cache/kvcache-test}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# systemd and what a booted root needs to be driven, curl for requests from
# inside, procps for the unit's ExecReload=kill (on every real Debian host),
# and the runtime libraries of build/kvcache (Debian 12 names, as in
# docs/operations.md).
packages=systemd,systemd-sysv,dbus,curl,procps,libevent-core-2.1-7,libsimdjson14,libfmt9,libabsl20220623,libisal2,libdeflate0
key=$(echo "bookworm minbase $packages v1" | sha256sum | cut -c1-12)
root_cache=$cache/nspawn-bookworm-$key
BOOT_TIMEOUT=60  # seconds until systemd reports the system running
HALT_TIMEOUT=30  # seconds for the poweroff before SIGKILL

die() {
  echo "nspawn.sh: $*" >&2
  exit 1
}
usage() {
  echo "usage: $0 root | boot DIR | run DIR CMD... | halt DIR" >&2
  exit 2
}

cmd_root() {
  [[ -d $root_cache/usr ]] && { echo "$root_cache"; return; }
  command -v debootstrap >/dev/null || die "debootstrap not installed (tools/install-deps.sh test)"
  mkdir -p "$cache"
  # One builder at a time; the others wait, then find it built.
  exec 9>"$cache/.lock"
  flock -w 600 9 || die "another build of $root_cache holds $cache/.lock"
  if [[ ! -d $root_cache/usr ]]; then
    local tmp=$root_cache.tmp.$$ start=$SECONDS
    rm -rf "$tmp"
    trap 'rm -rf "$tmp"' EXIT
    debootstrap --variant=minbase --include="$packages" bookworm "$tmp" "$mirror" >"$cache/debootstrap-$key.log" 2>&1 ||
      die "debootstrap failed: $(tail -3 "$cache/debootstrap-$key.log")"
    # The container's name and no console login prompt.
    echo kvcache-test >"$tmp/etc/hostname"
    rm -f "$tmp/etc/systemd/system/getty.target.wants/"*
    rm -rf "$tmp/var/cache/apt/archives/"*.deb
    mv "$tmp" "$root_cache"
    trap - EXIT
    echo "nspawn.sh: built $root_cache in $((SECONDS - start)) s" >&2
  fi
  echo "$root_cache"
}

pid_of() {  # pid_of DIR NAME: the recorded pid, if that process still runs
  local pid
  pid=$(cat "$1/$2.pid" 2>/dev/null) || return 0
  [[ $pid =~ ^[0-9]+$ && -d /proc/$pid ]] && echo "$pid"
  return 0
}

cmd_boot() {
  local dir=$1 base root nspawn init k cgroup
  [[ $(id -u) == 0 ]] || die "needs root"
  command -v systemd-nspawn >/dev/null || die "systemd-nspawn not installed (package systemd-container)"
  [[ -x $KVCACHE ]] || die "no binary at $KVCACHE (tools/build.sh)"
  base=$(cmd_root)
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  root=$dir/root
  [[ -z $(pid_of "$dir" nspawn) ]] || die "a container from $dir still runs: $0 halt $dir"
  rm -rf "$root"
  cp -a --reflink=auto "$base" "$root"
  # As docs/operations.md installs it.
  install -m 0755 "$KVCACHE" "$root/usr/local/bin/kvcache"
  install -m 0644 "$repo/tools/systemd/kvcache.service" "$root/etc/systemd/system/kvcache.service"
  install -d -m 0755 "$root/etc/kvcache"
  install -m 0644 "$repo/tools/systemd/kvcache.env" "$root/etc/kvcache/kvcache.env"
  # systemctl enable: it starts at boot (and stays loaded after a stop, so
  # `systemctl show` keeps its exit status).
  ln -sf /etc/systemd/system/kvcache.service "$root/etc/systemd/system/multi-user.target.wants/kvcache.service"

  # cgroup v1 host (as here): nspawn needs the legacy layout, and mounts the
  # container's controllers read-only, so systemd inside could not apply
  # MemoryMax=. The container gets a memory cgroup of its own on the host,
  # which "boot" makes writable inside and "halt" removes with everything in it.
  cgroup=""
  local v1=/sys/fs/cgroup/memory
  if [[ -d $v1 ]] && [[ ! -f /sys/fs/cgroup/cgroup.controllers ]]; then
    export SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=0
    cgroup=$v1$(awk -F: '$2 == "memory" { print $3 }' /proc/self/cgroup)
    cgroup=${cgroup%/}/kvcache-nspawn-$$
    mkdir "$cgroup" 2>/dev/null || cgroup=""
  fi
  echo "$cgroup" >"$dir/cgroup"
  # The subshell joins the cgroup, then becomes nspawn: $! is nspawn's pid.
  (
    [[ -z $cgroup ]] || echo "$BASHPID" >"$cgroup/cgroup.procs"
    exec systemd-nspawn -q -D "$root" -b --register=no --keep-unit --private-network \
      --machine="kvcache-test-$$" </dev/null >"$dir/console.log" 2>&1
  ) &
  nspawn=$!
  echo "$nspawn" >"$dir/nspawn.pid"
  for ((k = 0; k < 100; k++)); do
    init=$(pgrep -P "$nspawn" -x systemd || true)
    [[ -n $init ]] && break
    kill -0 "$nspawn" 2>/dev/null || die "systemd-nspawn exited: $(tail -5 "$dir/console.log")"
    sleep 0.1
  done
  [[ -n $init ]] || { cmd_halt "$dir"; die "no systemd in the container within 10 s"; }
  echo "$init" >"$dir/init.pid"
  # Until systemd's bus is up, systemctl cannot even ask; then wait for the boot.
  local state=""
  for ((k = 0; k < BOOT_TIMEOUT * 10; k++)); do
    state=$(timeout 5 nsenter -t "$init" -a systemctl is-system-running 2>&1 || true)
    # "degraded": a unit of the minimal root failed; what the unit needs is up.
    [[ $state == running || $state == degraded ]] && break
    kill -0 "$nspawn" 2>/dev/null || break
    sleep 0.1
  done
  [[ $state == running || $state == degraded ]] || { cmd_halt "$dir"; die "boot did not finish within $BOOT_TIMEOUT s: $state"; }
  if [[ -n $cgroup ]]; then
    nsenter -t "$init" -m mount -o remount,bind,rw /sys/fs/cgroup/memory &&
      nsenter -t "$init" -a systemctl daemon-reexec ||
      echo "nspawn.sh: the memory controller stays read-only in the container: MemoryMax= will not apply" >&2
  fi
  echo "nspawn pid $nspawn"
  echo "init pid $init"
}

cmd_run() {
  local dir=$1 init
  shift
  init=$(pid_of "$dir" init)
  [[ -n $init ]] || die "no container running from $dir"
  exec nsenter -t "$init" -a "$@"
}

cmd_halt() {
  local dir=$1 nspawn init cgroup k
  nspawn=$(pid_of "$dir" nspawn)
  init=$(pid_of "$dir" init)
  if [[ -n $nspawn ]]; then
    # SIGTERM makes nspawn ask the container's systemd to power off.
    kill -TERM "$nspawn" 2>/dev/null || true
    for ((k = 0; k < HALT_TIMEOUT * 10; k++)); do
      [[ -d /proc/$nspawn ]] || break
      sleep 0.1
    done
    if [[ -d /proc/$nspawn ]]; then
      echo "nspawn.sh: container did not power off within $HALT_TIMEOUT s: SIGKILL" >&2
      # Killing the container's init ends every process in its pid namespace.
      [[ -z $init ]] || kill -KILL "$init" 2>/dev/null || true
      kill -KILL "$nspawn" 2>/dev/null || true
      for ((k = 0; k < 50; k++)); do [[ -d /proc/$nspawn ]] || break; sleep 0.1; done
    fi
  fi
  rm -f "$dir/nspawn.pid" "$dir/init.pid"
  cgroup=$(cat "$dir/cgroup" 2>/dev/null || true)
  if [[ $cgroup == */kvcache-nspawn-* && -d $cgroup ]]; then
    # Children first: what the container's systemd created under it.
    find "$cgroup" -depth -type d -exec rmdir {} + 2>/dev/null || true
    [[ -d $cgroup ]] && echo "nspawn.sh: could not remove $cgroup" >&2
  fi
  rm -f "$dir/cgroup"
  # The container's mounts lived in its own mount namespace and went with it.
  rm -rf "$dir/root"
}

case "${1:-}" in
  root) (($# == 1)) || usage; cmd_root ;;
  boot) (($# == 2)) || usage; cmd_boot "$2" ;;
  run) (($# >= 3)) || usage; cmd_run "$2" "${@:3}" ;;
  halt) (($# == 2)) || usage; cmd_halt "$2" ;;
  *) usage ;;
esac

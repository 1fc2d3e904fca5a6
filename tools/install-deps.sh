#!/usr/bin/env bash
# Installs the Debian 12 packages kvcache needs to build and test, if missing.
# Usage: tools/install-deps.sh [build|test|sanitize|bench]   (default: test)
set -euo pipefail

build=(meson ninja-build pkg-config g++ cmake libevent-dev libsimdjson-dev libfmt-dev libabsl-dev doctest-dev libisal-dev libdeflate-dev libssl-dev)
# prometheus for promtool, docker-compose for the offline compose check,
# debootstrap + systemd-container to boot the unit under a real systemd;
# openssl (the command) for the TLS tests' certificates and s_client; wrk
# for the TLS test that drives it over https (the benchmarks need it too);
# python3-venv for the Python client's offline install test; fiu-utils
# (libfiu's fiu-run/fiu-ctrl) for the fault-injection tests.
test=(python3 python3-pytest python3-requests python3-prometheus-client python3-yaml python3-venv systemd curl haproxy
  prometheus docker-compose debootstrap systemd-container openssl wrk fiu-utils)
sanitize=(clang libclang-rt-14-dev llvm)
bench=(nginx-light redis-server memcached python3-locust python3-matplotlib valgrind)

case "${1:-test}" in
  build) wanted=("${build[@]}") ;;
  test) wanted=("${build[@]}" "${test[@]}") ;;
  sanitize) wanted=("${build[@]}" "${test[@]}" "${sanitize[@]}") ;;
  bench) wanted=("${build[@]}" "${test[@]}" "${bench[@]}") ;;
  *) echo "usage: $0 [build|test|sanitize|bench]" >&2; exit 2 ;;
esac

missing=()
for package in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
echo "installing: ${missing[*]}" >&2
$sudo apt-get update -qq
# nginx-light, redis-server and haproxy start system services on install (Debian's haproxy.cfg
# listens nowhere); the benchmarks and the cluster tests run their own.
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

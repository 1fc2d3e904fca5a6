#!/usr/bin/env bash
# Run the nginx baseline in the foreground (exec: the PID of this script IS nginx's master).
# usage: nginx-run.sh [PREFIX_DIR]
#   env NGINX_PORT (default 18080), NGINX_WORKERS (default: nproc)
# PREFIX_DIR (default: a new mktemp dir) receives the rendered config, pid, error log, temp dirs.
# Stop it with: kill <pid>   (SIGTERM = fast shutdown; SIGQUIT = graceful)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
prefix=${1:-$(mktemp -d /tmp/kvbench-nginx.XXXXXX)}
mkdir -p "$prefix"
prefix=$(cd "$prefix" && pwd)
port=${NGINX_PORT:-18080}
workers=${NGINX_WORKERS:-$(nproc)}
[[ $port =~ ^[0-9]+$ && $workers =~ ^[0-9]+$ ]] || { echo "nginx-run.sh: bad NGINX_PORT/NGINX_WORKERS" >&2; exit 2; }
chmod 755 "$prefix"   # workers run as nobody
sed -e "s|@PREFIX@|$prefix|g" -e "s|@PORT@|$port|g" -e "s|@WORKERS@|$workers|g" \
    "$here/nginx.conf" > "$prefix/nginx.conf"
# -e: error log before the config is read (else nginx opens the system log path)
exec /usr/sbin/nginx -p "$prefix/" -c "$prefix/nginx.conf" -e "$prefix/error.log"

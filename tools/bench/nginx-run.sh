#!/usr/bin/env bash
# Run the nginx baseline in the foreground (exec: the PID of this script IS nginx's master).
# usage: nginx-run.sh [PREFIX_DIR]
#   env NGINX_PORT (default 18080), NGINX_WORKERS (default: nproc), NGINX_TLS_PORT (18443),
#   NGINX_TLS_CERT + NGINX_TLS_KEY (default: an ECDSA P-256 pair made in PREFIX_DIR)
# PREFIX_DIR (default: a new mktemp dir) receives the rendered config, pid, error log, temp dirs.
# Stop it with: kill <pid>   (SIGTERM = fast shutdown; SIGQUIT = graceful)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
prefix=${1:-$(mktemp -d /tmp/kvbench-nginx.XXXXXX)}
mkdir -p "$prefix"
prefix=$(cd "$prefix" && pwd)
port=${NGINX_PORT:-18080}
workers=${NGINX_WORKERS:-$(nproc)}
tls_port=${NGINX_TLS_PORT:-18443}
[[ $port =~ ^[0-9]+$ && $workers =~ ^[0-9]+$ && $tls_port =~ ^[0-9]+$ ]] || { echo "nginx-run.sh: bad NGINX_PORT/NGINX_WORKERS/NGINX_TLS_PORT" >&2; exit 2; }
chmod 755 "$prefix"   # workers run as nobody
tls_cert=${NGINX_TLS_CERT:-$prefix/tls-cert.pem}
tls_key=${NGINX_TLS_KEY:-$prefix/tls-key.pem}
if [[ -z ${NGINX_TLS_CERT:-} ]]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$tls_key" -out "$tls_cert" 2>/dev/null
fi
sed -e "s|@PREFIX@|$prefix|g" -e "s|@PORT@|$port|g" -e "s|@WORKERS@|$workers|g" -e "s|@TLS_PORT@|$tls_port|g" \
    -e "s|@TLS_CERT@|$tls_cert|g" -e "s|@TLS_KEY@|$tls_key|g" "$here/nginx.conf" > "$prefix/nginx.conf"
# -e: error log before the config is read (else nginx opens the system log path)
exec /usr/sbin/nginx -p "$prefix/" -c "$prefix/nginx.conf" -e "$prefix/error.log"

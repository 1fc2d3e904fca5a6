#!/usr/bin/env bash
# gzip benchmark: POST /mget of 1,000 keys with 128-byte text values, with and without
# "Accept-Encoding: gzip", alternating rounds against one kvcache. Reports per variant
# (median of the rounds): req/s, response bytes per request on the wire (HTTP head + body,
# from wrk's byte count) and server CPU time per request (/proc/<pid>/stat utime+stime).
#
#   tools/bench/gzip.sh                       # ROUNDS=3 DURATION=10s CONNS=16
# Env: ROUNDS DURATION CONNS WRK_THREADS KV_PORT (17271) KV_THREADS (2) KVCACHE (build/kvcache)
# Loopback only; the kvcache started here is stopped by its PID.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-16}
WRK_THREADS=${WRK_THREADS:-2}
KV_PORT=${KV_PORT:-17271}
KV_THREADS=${KV_THREADS:-2}
KVCACHE=${KVCACHE:-$repo/build/kvcache}
out=$(mktemp -d /tmp/kvcache-gzip-bench.XXXXXX)

"$KVCACHE" --bind 127.0.0.1 --port "$KV_PORT" --threads "$KV_THREADS" --memory-limit 256M 2>"$out/kvcache.log" &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$KV_PORT/health" >/dev/null && break; sleep 0.1; done

# 1,000 keys gz:1..gz:1000, 128 bytes of word-like text each (as tools/bench/gzip_measure.cc).
/usr/bin/python3 - "$KV_PORT" <<'PY'
import json, random, sys, urllib.request
rng = random.Random(42)
words = "session user cart item price token the and of value cache profile id name list ok to data".split()
def text():
    v = ""
    while len(v) < 128:
        v += rng.choice(words) + (str(rng.randrange(100000)) if rng.randrange(3) == 0 else " ")
    return v[:128]
items = [{"key": f"gz:{i}", "value": text()} for i in range(1, 1001)]
for start in range(0, 1000, 250):
    body = json.dumps({"items": items[start:start + 250]}).encode()
    with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/mput", body), timeout=10) as r:
        assert r.status == 200
PY

cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
tick_hz=$(getconf CLK_TCK)
echo "variant,round,req_s,bytes_per_req,cpu_us_per_req,p99_us,non2xx" > "$out/rounds.csv"
for round in $(seq "$ROUNDS"); do
  for variant in identity gzip; do
    accept=""
    [ "$variant" = gzip ] && accept="gzip"
    before=$(cpu_ticks)
    ACCEPT_ENCODING=$accept timeout 120 wrk -t"$WRK_THREADS" -c"$CONNS" -d"$DURATION" -s "$here/mget.lua" \
      "http://127.0.0.1:$KV_PORT" > "$out/$variant-$round.txt"
    after=$(cpu_ticks)
    line=$(grep '^MGET ' "$out/$variant-$round.txt")
    requests=$(sed -E 's/.*requests=([0-9]+).*/\1/' <<<"$line")
    bytes=$(sed -E 's/.*bytes=([0-9]+).*/\1/' <<<"$line")
    p99=$(sed -E 's/.*p99_us=([0-9]+).*/\1/' <<<"$line")
    non2xx=$(sed -E 's/.*non2xx=([0-9]+).*/\1/' <<<"$line")
    rps=$(grep '^Requests/sec' "$out/$variant-$round.txt" | awk '{print $2}')
    cpu=$(awk -v t=$((after - before)) -v hz="$tick_hz" -v n="$requests" 'BEGIN{printf "%.1f", t / hz * 1e6 / n}')
    echo "$variant,$round,$rps,$((bytes / requests)),$cpu,$p99,$non2xx" >> "$out/rounds.csv"
    sleep 1
  done
done
/usr/bin/python3 - "$out/rounds.csv" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
print(f"{'variant':<9} {'req/s':>9} {'bytes/req':>10} {'CPU us/req':>11} {'p99 us':>8}  (median of {len(rows)//2} rounds)")
for v in ("identity", "gzip"):
    r = [x for x in rows if x["variant"] == v]
    med = lambda k: statistics.median(float(x[k]) for x in r)
    assert all(x["non2xx"] == "0" for x in r), "non-2xx responses"
    print(f"{v:<9} {med('req_s'):>9.0f} {med('bytes_per_req'):>10.0f} {med('cpu_us_per_req'):>11.1f} {med('p99_us'):>8.0f}")
PY
echo "raw: $out"

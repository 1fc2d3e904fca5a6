#!/usr/bin/python3
"""Soak test: mixed wrk load plus connection churn against one kvcache with a
memory limit, sampling the server's RSS every second.

    tools/soak.py                               # 600 s, --memory-limit 64M
    tools/soak.py --duration 120 --memory-limit 32M
    SOAK_DURATION=120 SOAK_MEMORY_LIMIT=64M tools/soak.py

Writes <out>/rss.csv (one row a second: elapsed, RSS, bytes charged to the
store, entries, evictions, open connections), <out>/wrk.txt and, if
python3-matplotlib is installed, <out>/rss.png. At the end it prints
min/max/last RSS, RSS at 25/50/75/100% of the run, whether RSS plateaued
(max of the last quarter within 5% of the max of the second quarter) and
whether it stayed under 1.1x the memory limit. Exit status: 0 if both hold,
1 if not, 2 on a setup problem.

Loopback only; every loop is bounded by the run's deadline; the only
processes it stops are the kvcache and wrk it started.
"""

import argparse
import csv
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

WRK_SCRIPT = r"""
-- Mixed kvcache load: puts (some with a TTL), gets, deletes, mputs, mgets
-- over a keyspace larger than the memory limit holds, so eviction runs.
local threads = {}
function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end
local KEYS = tonumber(os.getenv("SOAK_KEYSPACE") or "1000000")
local values = {}
function init(args)
  math.randomseed(os.time() * 7 + id * 104729)
  for n = 0, 256 do values[n] = string.rep(string.char(97 + n % 26), n) end
  counts = {}
end
local function key() return "soak:" .. math.random(1, KEYS) end
local json = {["Content-Type"] = "application/json"}
function request()
  local r = math.random(100)
  if r <= 45 then
    local ttl = ""
    if math.random(10) == 1 then ttl = ',"ttl":' .. math.random(1, 30) end
    return wrk.format("POST", "/put", json,
      '{"key":"' .. key() .. '","value":"' .. values[math.random(0, 256)] .. '"' .. ttl .. '}')
  elseif r <= 85 then
    return wrk.format("GET", "/get?key=" .. key())
  elseif r <= 90 then
    return wrk.format("POST", "/delete", json, '{"key":"' .. key() .. '"}')
  elseif r <= 95 then
    local items = {}
    for i = 1, 20 do
      items[i] = '{"key":"' .. key() .. '","value":"' .. values[math.random(0, 256)] .. '"}'
    end
    return wrk.format("POST", "/mput", json, '{"items":[' .. table.concat(items, ",") .. ']}')
  else
    local keys = {}
    for i = 1, 50 do keys[i] = '"' .. key() .. '"' end
    return wrk.format("POST", "/mget", json, '{"keys":[' .. table.concat(keys, ",") .. ']}')
  end
end
function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end
function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for status, n in pairs(t:get("counts")) do total[status] = (total[status] or 0) + n end
  end
  local parts = {}
  for status, n in pairs(total) do parts[#parts + 1] = status .. "=" .. n end
  table.sort(parts)
  io.write("SOAK statuses " .. table.concat(parts, " ") .. "\n")
end
"""


def log(msg):
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def scrape(port):
    """A few gauges from /metrics; {} if the scrape fails."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = {}
    for name in ("kvcache_memory_used_bytes", "kvcache_memory_limit_bytes", "kvcache_entries",
                 "kvcache_evictions_total", "kvcache_connections_open"):
        m = re.search(rf"^{name} (\d+)$", text, re.M)
        if m:
            out[name] = int(m.group(1))
    return out


def healthy(port, timeout=10.0):
    deadline = time.monotonic() + timeout
    for _ in range(1000):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return False


def abort(sock):
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass


class Churn(threading.Thread):
    """Opens and closes short connections until `end` (monotonic), at most
    `rate` a second: whole requests with Connection: close, keep-alive requests
    closed by the client, half-sent requests reset, connects reset at once."""

    def __init__(self, port, end, rate, seed):
        super().__init__(daemon=True)
        self.port, self.end, self.rate = port, end, rate
        self.rng = random.Random(seed)
        self.done = 0
        self.errors = 0
        self.unexpected = []

    def one(self):
        mode = self.rng.random()
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        try:
            if mode < 0.6:  # a whole request; the server closes
                s.sendall(b"GET /health HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n")
                data = b""
                for _ in range(100):
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                if not data.startswith(b"HTTP/1.1 200 ") and len(self.unexpected) < 5:
                    self.unexpected.append(data[:200])
                s.close()
            elif mode < 0.75:  # keep-alive put, then the client closes
                key = f"churn:{self.rng.randrange(100000)}"
                body = json.dumps({"key": key, "value": "c" * self.rng.randrange(257)}).encode()
                s.sendall(b"POST /put HTTP/1.1\r\nHost: soak\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                data = s.recv(4096)
                if not data.startswith(b"HTTP/1.1 200 ") and len(self.unexpected) < 5:
                    self.unexpected.append(data[:200])
                s.close()
            elif mode < 0.9:  # half a request, then reset
                s.sendall(b"POST /put HTTP/1.1\r\nHost: soak\r\nContent-Length: 40\r\n\r\n{\"key\":")
                abort(s)
            else:  # connect and reset
                abort(s)
        finally:
            s.close()

    def run(self):
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        for _ in range(100_000_000):
            now = time.monotonic()
            if now >= self.end:
                break
            if now < next_at:
                time.sleep(min(next_at - now, self.end - now))
                continue
            next_at += interval
            if next_at < now - 1:  # fell behind (busy box): do not burst
                next_at = now
            try:
                self.one()
                self.done += 1
            except OSError:
                self.errors += 1


def percentile_sample(rows, fraction):
    """The sample taken closest to fraction * run length."""
    target = rows[-1]["elapsed_s"] * fraction
    return min(rows, key=lambda r: abs(r["elapsed_s"] - target))


def plot(rows, limit, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    t = [r["elapsed_s"] for r in rows]
    fig, ax = plt.subplots(figsize=(10, 5))
    ax.plot(t, [r["rss_kb"] / 1024 for r in rows], label="RSS (MiB)")
    used = [(r["elapsed_s"], r["memory_used_bytes"] / 2**20) for r in rows if r["memory_used_bytes"] != ""]
    if used:
        ax.plot([u[0] for u in used], [u[1] for u in used], label="charged to store (MiB)")
    if limit:
        ax.axhline(limit / 2**20, color="gray", linestyle="--", label="--memory-limit")
        ax.axhline(1.1 * limit / 2**20, color="red", linestyle=":", label="1.1 x limit")
    ax.set_xlabel("seconds")
    ax.set_ylabel("MiB")
    ax.set_title("kvcache soak")
    ax.legend(loc="lower right")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=float(os.environ.get("SOAK_DURATION", 600)),
                   help="seconds of load (env SOAK_DURATION, default 600)")
    p.add_argument("--memory-limit", default=os.environ.get("SOAK_MEMORY_LIMIT", "64M"),
                   help="kvcache --memory-limit (env SOAK_MEMORY_LIMIT, default 64M)")
    p.add_argument("--binary", default=os.environ.get("KVCACHE_BIN", str(REPO / "build" / "kvcache")))
    p.add_argument("--threads", type=int, default=2, help="kvcache --threads")
    p.add_argument("--wrk-threads", type=int, default=2)
    p.add_argument("--wrk-connections", type=int, default=32)
    p.add_argument("--churn-threads", type=int, default=2)
    p.add_argument("--churn-rate", type=float, default=100, help="connections a second per churn thread")
    p.add_argument("--keyspace", type=int, default=1_000_000)
    p.add_argument("--out", default=None, help="output directory (default /tmp/kvcache-soak-<time>)")
    args = p.parse_args()

    if not (os.path.isfile(args.binary) and os.access(args.binary, os.X_OK)):
        print(f"soak: no kvcache binary at {args.binary} (build it: ninja -C build)", file=sys.stderr)
        return 2
    wrk = shutil.which("wrk")
    if wrk is None:
        print("soak: wrk not found (apt-get install wrk)", file=sys.stderr)
        return 2
    if args.duration < 8:
        print("soak: --duration must be at least 8 s (quarters of the run are compared)", file=sys.stderr)
        return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    out = Path(args.out or f"/tmp/kvcache-soak-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server_log = open(out / "kvcache.log", "wb")
    server = subprocess.Popen(
        [args.binary, "--bind", "127.0.0.1", "--port", str(port), "--threads", str(args.threads),
         "--memory-limit", args.memory_limit, "--drain-timeout", "5s"],
        stdin=subprocess.DEVNULL, stdout=server_log, stderr=subprocess.STDOUT)
    wrk_proc = None
    churners = []
    rows = []
    try:
        if not healthy(port):
            print(f"soak: kvcache did not become healthy; see {out / 'kvcache.log'}", file=sys.stderr)
            return 2
        limit = scrape(port).get("kvcache_memory_limit_bytes")
        log(f"kvcache pid {server.pid} on 127.0.0.1:{port}, memory limit {limit} bytes, "
            f"{args.duration:g} s of load; output in {out}")

        script = out / "soak.lua"
        script.write_text(WRK_SCRIPT)
        wrk_out = open(out / "wrk.txt", "wb")
        env = dict(os.environ, SOAK_KEYSPACE=str(args.keyspace))
        start = time.monotonic()
        end = start + args.duration
        wrk_proc = subprocess.Popen(
            [wrk, f"-t{args.wrk_threads}", f"-c{args.wrk_connections}", f"-d{int(round(args.duration))}s",
             "--timeout", "5s", "-s", str(script), f"http://127.0.0.1:{port}/"],
            stdin=subprocess.DEVNULL, stdout=wrk_out, stderr=subprocess.STDOUT, env=env)
        churners = [Churn(port, end, args.churn_rate, seed) for seed in range(args.churn_threads)]
        for c in churners:
            c.start()

        fields = ["elapsed_s", "rss_kb", "memory_used_bytes", "entries", "evictions", "connections_open"]
        with open(out / "rss.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            next_sample = start
            next_report = start + args.duration / 10
            for _ in range(int(args.duration) * 10 + 1000):
                now = time.monotonic()
                if now >= end + 0.5:
                    break
                if server.poll() is not None:
                    log(f"kvcache exited early with code {server.returncode}")
                    break
                if now < next_sample:
                    time.sleep(next_sample - now)
                    continue
                next_sample += 1.0
                rss = rss_kb(server.pid)
                m = scrape(port)
                row = {"elapsed_s": round(time.monotonic() - start, 2), "rss_kb": rss,
                       "memory_used_bytes": m.get("kvcache_memory_used_bytes", ""),
                       "entries": m.get("kvcache_entries", ""), "evictions": m.get("kvcache_evictions_total", ""),
                       "connections_open": m.get("kvcache_connections_open", "")}
                if rss is not None:
                    rows.append(row)
                writer.writerow(row)
                f.flush()
                if now >= next_report:
                    next_report += args.duration / 10
                    log(f"{row['elapsed_s']:.0f}s rss={rss / 1024:.1f}MiB entries={row['entries']} "
                        f"evictions={row['evictions']} open={row['connections_open']}")

        try:
            wrk_proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            wrk_proc.send_signal(signal.SIGINT)
            wrk_proc.wait(timeout=10)
        for c in churners:
            c.join(timeout=10)
        still_healthy = server.poll() is None and healthy(port, timeout=5)
    finally:
        if wrk_proc is not None and wrk_proc.poll() is None:
            wrk_proc.kill()
            wrk_proc.wait(timeout=5)
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=5)
        server_log.close()

    if len(rows) < 8:
        print("soak: too few RSS samples", file=sys.stderr)
        return 2
    wrk_report = (out / "wrk.txt").read_text(errors="replace")
    rss = [r["rss_kb"] for r in rows]
    q = len(rows) // 4
    second_q_max = max(rss[q:2 * q])
    last_q_max = max(rss[3 * q:])
    ratio = last_q_max / second_q_max
    plateaued = ratio <= 1.05
    under = limit is None or max(rss) * 1024 <= 1.1 * limit
    mib = lambda kb: f"{kb / 1024:.1f} MiB"  # noqa: E731

    print()
    print(f"kvcache soak: {rows[-1]['elapsed_s']:.0f} s, --memory-limit {args.memory_limit} "
          f"({limit} bytes), {len(rows)} samples in {out / 'rss.csv'}")
    print(f"  RSS min {mib(min(rss))}, max {mib(max(rss))}, last {mib(rss[-1])}")
    print("  RSS at " + ", ".join(f"{int(fr * 100)}%: {mib(percentile_sample(rows, fr)['rss_kb'])}"
                                  for fr in (0.25, 0.5, 0.75, 1.0)))
    print(f"  plateau: last-quarter max {mib(last_q_max)} vs second-quarter max {mib(second_q_max)} "
          f"(x{ratio:.3f}) -> {'yes' if plateaued else 'NO'}")
    if limit:
        print(f"  under 1.1 x limit ({mib(1.1 * limit / 1024)}): {'yes' if under else 'NO'} "
              f"(max RSS = {max(rss) * 1024 / limit:.2f} x limit)")
    last = rows[-1]
    print(f"  store at end: {last['entries']} entries, {last['memory_used_bytes']} bytes charged, "
          f"{last['evictions']} evictions")
    statuses = re.search(r"^SOAK statuses (.*)$", wrk_report, re.M)
    reqs = re.search(r"^\s*(\d+) requests in ([\d.]+\w+)", wrk_report, re.M)
    sock_err = re.search(r"^\s*Socket errors: (.*)$", wrk_report, re.M)
    print(f"  wrk: {reqs.group(1) + ' requests in ' + reqs.group(2) if reqs else '?'}; statuses "
          f"{statuses.group(1) if statuses else '?'}; socket errors: {sock_err.group(1) if sock_err else 'none'}")
    print(f"  churn: {sum(c.done for c in churners)} short connections, {sum(c.errors for c in churners)} "
          f"connect/IO errors, unexpected answers: {[u for c in churners for u in c.unexpected][:3]}")
    print(f"  server healthy at the end: {'yes' if still_healthy else 'NO'}; exit code after SIGTERM: "
          f"{server.returncode}")
    if plot(rows, limit, out / "rss.png"):
        print(f"  plot: {out / 'rss.png'}")
    else:
        print("  plot: skipped (python3-matplotlib not installed)")
    ok = plateaued and under and still_healthy and server.returncode == 0
    print(f"  result: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

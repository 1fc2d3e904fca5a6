#!/usr/bin/python3
"""Two kvcache nodes on this box, the same mixed load by three routes, and the
client's own CPU cost (docs/benchmarks.md, "The Python client's routes").

    flock /work/bench.lock /usr/bin/python3 clients/python/bench/routes.py

1. Routes: tools/cluster.sh starts 2 nodes (--threads 1 each) behind HAProxy
   (the shipped deploy/haproxy/haproxy.cfg). PROCS load processes each run the
   mixed load (5,000 keys, 128-byte values, 30% puts, back to back) for
   DURATION seconds through
     proxy   kvcache.Client(HAProxy)                 any HTTP client's route
     client  kvcache.Cluster([node1, node2])         straight to each key's node
     direct  kvcache.Client(node1)                   one node, no routing at all
     split   kvcache.Client(node1) and (node2) taken in turn, no ring: what two
             nodes sharing the load cost the server side, routing aside
   The routes alternate, ROUNDS times. Per route: requests/s, p50/p99 latency
   seen by the load processes, and the server side's CPU per request: user +
   system time of both nodes and of HAProxy (master and worker) from
   /proc/PID/stat, divided by the requests answered in that run. HAProxy runs
   during the client and direct routes too (health checks only): its CPU is
   counted in all three.
2. Client CPU: one process, the same mixed requests one at a time, CPU time
   (time.process_time, user + system) per request of a plain http.client loop
   to node1 (keep-alive, json.dumps/json.loads, as by hand), of
   kvcache.Client(node1), of kvcache.Cluster([node1]) (the same requests to the
   same node, through the ring, the pool and the breaker) and of
   kvcache.Cluster([node1, node2]); runs alternate, CLIENT_ROUNDS times,
   medians. Then the same without the network (each request() answered at once
   by a stub): the Python work alone of each, the part the client adds.

   RATE=N paces the load at N requests/s in all (each process sends on a
   schedule): every route then serves the same rate, so CPU per request is
   compared at equal load (unset: back to back, each route as fast as it goes).
Env: PARTS ("routes client": either or both) RATE (unset) DURATION (10) ROUNDS (3) PROCS (4) CLIENT_REQUESTS (20000) CLIENT_ROUNDS (3)
     PORT (17400: HAProxy, nodes on +1 and +2, stats on +100) KVCACHE (build/kvcache).
Loopback only; every wait bounded; only the processes started here are stopped.
"""

import http.client
import json
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import time
from urllib.parse import quote

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, os.path.dirname(HERE))
import kvcache  # noqa: E402

DURATION = float(os.environ.get("DURATION", "10"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
PROCS = int(os.environ.get("PROCS", "4"))
RATE = float(os.environ.get("RATE", "0"))
PARTS = os.environ.get("PARTS", "routes client").split()
CLIENT_REQUESTS = int(os.environ.get("CLIENT_REQUESTS", "20000"))
CLIENT_ROUNDS = int(os.environ.get("CLIENT_ROUNDS", "3"))
PORT = int(os.environ.get("PORT", "17400"))
KVCACHE = os.environ.get("KVCACHE", os.path.join(REPO, "build", "kvcache"))
KEYS = 5000
VALUE = "x" * 128
PUT_RATIO = 0.3
TICK = os.sysconf("SC_CLK_TCK")
ROUTES = ("proxy", "client", "direct", "split")


def ops(seed, n=None):
    """The mixed load's requests: (is_put, key), forever or n of them."""
    rng = random.Random(seed)
    i = 0
    while n is None or i < n:
        yield rng.random() < PUT_RATIO, f"key:{rng.randint(1, KEYS)}"
        i += 1


class Alternate:
    """Two clients taken in turn, whatever the key."""

    def __init__(self, a, b):
        self.clients = [a, b]
        self.n = 0

    def _next(self):
        self.n += 1
        return self.clients[self.n & 1]

    def put(self, key, value):
        return self._next().put(key, value)

    def get(self, key):
        return self._next().get(key)


def make(route, urls):
    if route == "client":
        return kvcache.Cluster([urls["node1"], urls["node2"]])
    if route == "split":
        return Alternate(kvcache.Client(urls["node1"]), kvcache.Client(urls["node2"]))
    return kvcache.Client(urls["proxy" if route == "proxy" else "node1"])


def load(route, urls, seed, start, stop_at, out):
    cache = make(route, urls)
    latencies, errors = [], 0
    start.wait(30)
    interval = PROCS / RATE if RATE else 0
    due = time.perf_counter()
    for is_put, key in ops(seed):
        if interval:
            due += interval
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
        t0 = time.perf_counter()
        if t0 >= stop_at.value:
            break
        try:
            if is_put:
                cache.put(key, VALUE)
            else:
                cache.get(key)
        except kvcache.KvcacheError:
            errors += 1
        latencies.append(time.perf_counter() - t0)
    out.put((len(latencies), errors, sorted(latencies)[::max(1, len(latencies) // 20000)], latencies))


def cpu_ticks(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except OSError:
                pass
    return out


def run_route(route, urls, pids):
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    stop_at = ctx.Value("d", 0.0)
    procs = [ctx.Process(target=load, args=(route, urls, 1000 * r + i, start, stop_at, out))
             for i in range(PROCS) for r in [hash(route) % 997]]
    for p in procs:
        p.start()
    time.sleep(0.5)
    before = cpu_ticks(pids)
    t0 = time.monotonic()
    stop_at.value = time.perf_counter() + DURATION
    start.set()
    results = [out.get(timeout=DURATION + 60) for _ in procs]
    elapsed = time.monotonic() - t0
    ticks = cpu_ticks(pids) - before
    for p in procs:
        p.join(timeout=10)
    n = sum(r[0] for r in results)
    errors = sum(r[1] for r in results)
    lat = sorted(x for r in results for x in r[3])
    return {"route": route, "requests": n, "errors": errors, "rps": n / elapsed,
            "p50_ms": lat[len(lat) // 2] * 1e3, "p99_ms": lat[int(len(lat) * 0.99)] * 1e3,
            "server_cpu_us": ticks / TICK * 1e6 / n}


# -- 2. the client's own CPU ------------------------------------------------

def plain_loop(url, n, seed):
    """What a caller writes by hand with http.client: one keep-alive connection."""
    host, port = url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    headers = {"Content-Type": "application/json"}
    for is_put, key in ops(seed, n):
        if is_put:
            conn.request("POST", "/put", json.dumps({"key": key, "value": VALUE}).encode(), headers)
            r = conn.getresponse()
            r.read()
            if r.status != 200:
                raise RuntimeError(r.status)
        else:
            conn.request("GET", "/get?key=" + quote(key, safe=""))
            r = conn.getresponse()
            data = r.read()
            if r.status == 200:
                json.loads(data)["value"]
            elif r.status != 404:
                raise RuntimeError(r.status)
    conn.close()


def with_client(cache, n, seed):
    for is_put, key in ops(seed, n):
        if is_put:
            cache.put(key, VALUE)
        else:
            cache.get(key)
    cache.close()


CLIENT_VARIANTS = ("http.client loop", "kvcache.Client", "Cluster, 1 node", "Cluster, 2 nodes")


def client_for(name, urls):
    if name == "kvcache.Client":
        return kvcache.Client(urls["node1"])
    if name == "Cluster, 1 node":
        return kvcache.Cluster([urls["node1"]])
    return kvcache.Cluster([urls["node1"], urls["node2"]])


def client_cpu(urls):
    runs = {name: [] for name in CLIENT_VARIANTS}
    for r in range(CLIENT_ROUNDS):
        for name in runs:
            seed = 7 + r
            t0 = time.process_time()
            if name == "http.client loop":
                plain_loop(urls["node1"], CLIENT_REQUESTS, seed)
            else:
                with_client(client_for(name, urls), CLIENT_REQUESTS, seed)
            runs[name].append((time.process_time() - t0) / CLIENT_REQUESTS * 1e6)
    return {name: statistics.median(v) for name, v in runs.items()}, runs


GET_ANSWER = (200, b'{"status":"OK","key":"k","value":"' + VALUE.encode() + b'"}')
PUT_ANSWER = (200, b'{"status":"OK","message":"Key inserted/updated successfully."}')


def stub(method, target, body=None, deadline=None):
    return PUT_ANSWER if method == "POST" else GET_ANSWER


def plain_no_network(n, seed):
    """plain_loop's own work: the same encoding and decoding, no socket."""
    for is_put, key in ops(seed, n):
        if is_put:
            status, _ = stub("POST", "/put", json.dumps({"key": key, "value": VALUE}).encode())
        else:
            status, data = stub("GET", "/get?key=" + quote(key, safe=""))
            json.loads(data)["value"]


def python_cpu(urls, n=50000):
    """us per request of each variant's Python work, the network replaced by stub()."""
    runs = {name: [] for name in CLIENT_VARIANTS}
    for r in range(CLIENT_ROUNDS):
        for name in runs:
            t0 = time.process_time()
            if name == "http.client loop":
                plain_no_network(n, 7 + r)
            else:
                cache = client_for(name, urls)
                for c in getattr(cache, "nodes", {0: cache}).values():
                    c.request = stub
                with_client(cache, n, 7 + r)
            runs[name].append((time.process_time() - t0) / n * 1e6)
    return {name: statistics.median(v) for name, v in runs.items()}


def cluster_sh(*args):
    env = dict(os.environ, KVCACHE=KVCACHE, NODE_FLAGS="--threads 1 --memory-limit 256M",
               RUN_DIR=f"/tmp/kvcache-routes-{PORT}")
    return subprocess.run(["bash", os.path.join(REPO, "tools", "cluster.sh"), *args, str(PORT)], env=env,
                          capture_output=True, text=True, timeout=120, check=True, stdin=subprocess.DEVNULL).stdout


def main():
    print(f"binary: {KVCACHE}; {PROCS} load processes, " + (f"{RATE:g} requests/s in all" if RATE else "back to back")
          + f", {DURATION:g} s per run; load average before: {os.getloadavg()}")
    out = cluster_sh("up", "2")
    pids = {}
    for line in out.splitlines():
        name, _, pid = line.split()[:3]
        pids[name] = int(pid)
    try:
        urls = {"proxy": f"http://127.0.0.1:{PORT}", "node1": f"http://127.0.0.1:{PORT + 1}",
                "node2": f"http://127.0.0.1:{PORT + 2}"}
        server_pids = [pids["node1"], pids["node2"], pids["haproxy"]] + children(pids["haproxy"])
        kvcache.Client(urls["node1"]).mput({f"key:{i}": VALUE for i in range(1, KEYS + 1, 2)})
        rows = []
        for r in range(ROUNDS if "routes" in PARTS else 0):
            for route in ROUTES:
                row = run_route(route, urls, server_pids)
                row["load"] = os.getloadavg()[0]
                rows.append(row)
                print(f"round {r + 1} {route:6s}: {row['rps']:8.0f} req/s  p50 {row['p50_ms']:.3f} ms  "
                      f"p99 {row['p99_ms']:.3f} ms  server CPU {row['server_cpu_us']:.1f} us/req  "
                      f"errors {row['errors']}  load {row['load']:.1f}", flush=True)
        if rows:
            report_routes(rows)
        if "client" in PARTS:
            report_client(urls)
        print(f"load average after: {os.getloadavg()}")
    finally:
        cluster_sh("down")


def report_routes(rows):
    by = {route: [r for r in rows if r["route"] == route] for route in ROUTES}
    med = {route: {k: statistics.median(r[k] for r in v) for k in ("rps", "p99_ms", "server_cpu_us")}
           for route, v in by.items()}
    d = med["direct"]
    for route in ("proxy", "client", "split"):
        m = med[route]
        print(f"{route} / direct: throughput {m['rps'] / d['rps']:.2f}x, p99 {m['p99_ms'] / d['p99_ms']:.2f}x, "
              f"server CPU per request {m['server_cpu_us'] / d['server_cpu_us']:.2f}x")


def report_client(urls):
    medians, runs = client_cpu(urls)
    python = python_cpu(urls)
    base = medians["http.client loop"]
    for name, us in medians.items():
        added = python[name] - python["http.client loop"]
        print(f"client CPU {name:17s}: {us:6.1f} us/request ({us / base:.2f}x; runs "
              f"{', '.join(f'{x:.1f}' for x in runs[name])}); without the network {python[name]:.1f} us, "
              f"{added:+.1f} us = {added / base * 100:+.1f}% of the plain loop's {base:.1f} us", flush=True)


if __name__ == "__main__":
    main()

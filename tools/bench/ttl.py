#!/usr/bin/python3
"""TTL rewrite: does rewriting keys with TTLs cost more than without, and do reads stall?

For each kvcache binary (--kvcache, and --baseline if given, in the same run) and each
mode (no TTL, then a TTL of 3,600..10,000 s that changes on every rewrite):

  1. start BINARY --bind 127.0.0.1 --port P --threads 2 --memory-limit 8G
  2. load --entries keys key:0..N-1 with 100-byte values: POST /mput batches of 300
     items, pipelined over two keep-alive connections (every response must be 200)
  3. rewrite every key --passes (3) times the same way (new values; in TTL mode a new
     TTL per item and pass), timed: rewrite time = wall time of all passes
  4. meanwhile a third connection, in its own process (no GIL shared with the writers),
     sends one GET /get?key=<random loaded key> every millisecond and records each
     latency (send to last byte); every answer must be 200. Reported: p99, p99.9, max of
     the GETs sent while the rewrite ran.
  5. stop the server (by its PID)

With --expiry: instead, load --entries keys with `ttl` 2 (same batches, no other
traffic), then poll kvcache_entries in /metrics every 100 ms; prints how long after the
last key expired (last put + 2 s) the count reached 0 (goal: <= 5 s).

With --expiry-under-load: the same load with `ttl` EXPIRE_TTL (or without), then at once
wrk runs tools/bench/run.sh's mixed load (mixed.lua, its own 5,000 keys, -c50) for
EXPIRE_WRK seconds, during which every loaded key expires and the sweep reclaims them;
rounds alternate the order. Prints wrk's req/s with and without the expiring keys and
their ratio (goal: >= 0.9x), and the entries left at the end.

Request bodies are generated before each clock starts. Prints one markdown row per
binary and mode, then the TTL / no-TTL ratios per binary (rewrite throughput ratio =
no-TTL time / TTL time; goals: >= 0.9, and p99.9 and max <= 1.5x).

  /usr/bin/python3 tools/bench/ttl.py                                  # 1M keys, build/kvcache
  /usr/bin/python3 tools/bench/ttl.py --entries 3000000 --baseline /path/to/old/kvcache
  /usr/bin/python3 tools/bench/ttl.py --expiry --baseline /path/to/old/kvcache
  /usr/bin/python3 tools/bench/ttl.py --rounds 3      # pairs in alternating order, medians
  /usr/bin/python3 tools/bench/ttl.py --expiry-under-load --rounds 3

The box should be otherwise idle; the load average at the start and end is printed.
Exit status: 0 ok, 1 a failed request, 2 usage or kvcache could not be started.
Standard library only; loopback only.
"""
import argparse
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import density as d  # noqa: E402 - shared process/socket helpers (same directory)
import report  # noqa: E402 - wrk output parser (same directory)

BATCH = 300
WRITERS = 2
TTL_MIN, TTL_MAX = 3600, 10000
EXPIRE_TTL = 6  # seconds: the loaded keys expire a few seconds into the wrk run
EXPIRE_WRK = 12  # seconds of wrk after the load


def ttl_for(i, rewrite):
    """A TTL per key and pass, different on every rewrite."""
    return TTL_MIN + (i * 7919 + rewrite * 104729) % (TTL_MAX - TTL_MIN + 1)


def mput_chunks(n, value_size, rewrite, with_ttl, fixed_ttl=None):
    chunks = []
    for b in range(0, n, BATCH):
        items = []
        for i in range(b, min(n, b + BATCH)):
            value = d.value_for(i * 31 + rewrite, value_size)
            ttl = f',"ttl":{fixed_ttl or ttl_for(i, rewrite)}' if with_ttl else ""
            items.append(f'{{"key":"key:{i}","value":"{value}"{ttl}}}')
        body = ('{"items":[' + ",".join(items) + "]}").encode()
        chunks.append(d.Chunk(d.http_request("POST", "/mput", body), len(items), 1))
    return chunks


def write_all(port, chunks, timeout):
    """Sends the chunks over WRITERS connections (interleaved halves); returns seconds."""
    lists = [chunks[k::WRITERS] for k in range(WRITERS)]
    start = time.monotonic()
    d.run_pipelined(port, lists, d.kvcache_replies, start + timeout)
    return time.monotonic() - start


def prober(port, n, stop, out):
    """One GET a millisecond until `stop` is set; sends (start, latency) pairs back."""
    rng = random.Random(7)
    c = d.Conn(port, timeout=10)
    samples, bad = [], 0
    next_at = time.monotonic()
    while not stop.is_set():
        now = time.monotonic()
        if now < next_at:
            time.sleep(next_at - now)
        next_at += 0.001
        t0 = time.monotonic()
        status, _ = c.request("GET", f"/get?key=key:{rng.randrange(n)}")
        samples.append((t0, time.monotonic() - t0))
        bad += status != 200
        if next_at < time.monotonic() - 0.1:
            next_at = time.monotonic()  # fell behind (a stall): do not burst to catch up
    c.close()
    out.send((samples, bad))


def percentile(sorted_values, p):
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, int(round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def run_one(binary, mode_ttl, args, logdir):
    port = d.free_port()
    server = d.start_kvcache(binary, port, logdir, "8G")
    try:
        load = mput_chunks(args.entries, args.value_size, 0, mode_ttl)
        write_all(port, load, args.timeout)
        del load
        passes = [mput_chunks(args.entries, args.value_size, r, mode_ttl) for r in range(1, args.passes + 1)]
        stop = multiprocessing.Event()
        receive, send = multiprocessing.Pipe(duplex=False)
        probe = multiprocessing.Process(target=prober, args=(port, args.entries, stop, send), daemon=True)
        probe.start()
        time.sleep(0.5)  # the prober is connected and steady
        start = time.monotonic()
        seconds = sum(write_all(port, chunks, args.timeout) for chunks in passes)
        end = time.monotonic()
        time.sleep(0.2)
        stop.set()
        samples, bad = receive.recv()
        probe.join(10)
        if bad:
            raise d.BenchError(f"{bad} GETs did not answer 200")
        during = sorted(lat for t0, lat in samples if start <= t0 <= end)
        entries = d.kv_metrics(port).get("kvcache_entries")
        return {
            "seconds": seconds,
            "gets": len(during),
            "p99": percentile(during, 99) * 1000,
            "p999": percentile(during, 99.9) * 1000,
            "max": (during[-1] if during else float("nan")) * 1000,
            "entries": entries,
        }
    finally:
        server.stop()


def run_expiry(binary, args, logdir):
    """Seconds from the last key's expiry until kvcache_entries is 0 (None: not in 60 s)."""
    port = d.free_port()
    server = d.start_kvcache(binary, port, logdir, "8G")
    try:
        load = mput_chunks(args.entries, args.value_size, 0, True, fixed_ttl=2)
        write_all(port, load, args.timeout)
        expired_at = time.monotonic() + 2
        c = d.Conn(port, timeout=10)
        try:
            while time.monotonic() < expired_at + 60:
                if d.kv_metrics(port, c).get("kvcache_entries") == 0:
                    return time.monotonic() - expired_at
                time.sleep(0.1)
        finally:
            c.close()
        return None
    finally:
        server.stop()


def run_expiry_under_load(binary, expiring, args, logdir):
    """wrk's mixed req/s right after loading the keys with a short TTL (or without one)."""
    port = d.free_port()
    server = d.start_kvcache(binary, port, logdir, "8G")
    try:
        load = mput_chunks(args.entries, args.value_size, 0, expiring, fixed_ttl=EXPIRE_TTL)
        started = time.monotonic()
        write_all(port, load, args.timeout)
        loaded_in = time.monotonic() - started
        if expiring and loaded_in >= EXPIRE_TTL:
            raise d.BenchError(f"the load took {loaded_in:.1f} s: keys expired before wrk started; use fewer --entries")
        raw = os.path.join(logdir, f"wrk-{port}.txt")
        here = os.path.dirname(os.path.abspath(__file__))
        env = dict(os.environ, KEYS="5000", VALUE_LEN="128", PUT_RATIO="0.3", KEY_PREFIX="mixed:")
        with open(raw, "wb") as f:
            subprocess.run(["timeout", "-k", "5", str(EXPIRE_WRK + 60), "wrk", "-t2", "-c50", f"-d{EXPIRE_WRK}s",
                            "--timeout", "2s", "--latency", "-s", os.path.join(here, "mixed.lua"),
                            f"http://127.0.0.1:{port}"], stdout=f, stderr=subprocess.STDOUT, env=env, check=True)
        row = report.parse(raw)
        return row["rps"], d.kv_metrics(port).get("kvcache_entries")
    finally:
        server.stop()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entries", type=int, default=1_000_000)
    p.add_argument("--value-size", type=int, default=100)
    p.add_argument("--passes", type=int, default=3, help="rewrites of every key")
    p.add_argument("--kvcache", default=d.DEFAULT_KVCACHE, help="kvcache binary")
    p.add_argument("--baseline", help="another kvcache binary, measured in the same run first")
    p.add_argument("--timeout", type=float, default=900, help="seconds allowed for each fill or pass")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat each binary's pair, the mode order alternating; medians reported")
    p.add_argument("--expiry", action="store_true", help="measure how soon keys with ttl 2 are gone instead")
    p.add_argument("--expiry-under-load", action="store_true",
                   help="measure the mixed load while the loaded keys expire, against the same without TTL")
    args = p.parse_args()
    binaries = ([("baseline", args.baseline)] if args.baseline else []) + [("kvcache", args.kvcache)]
    print(f"load average at start: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)", flush=True)
    if args.expiry:
        with tempfile.TemporaryDirectory(prefix="kv-ttl-bench-") as logdir:
            for name, binary in binaries:
                seconds = run_expiry(binary, args, logdir)
                gone = f"{seconds:.1f} s" if seconds is not None else "not within 60 s"
                print(f"{name:9}: {args.entries:,} keys with ttl 2 gone from kvcache_entries {gone} after they expired",
                      flush=True)
        print(f"load average at end: {os.getloadavg()[0]:.2f}")
        return 0
    if args.expiry_under_load:
        with tempfile.TemporaryDirectory(prefix="kv-ttl-bench-") as logdir:
            for name, binary in binaries:
                rps = {True: [], False: []}
                for round_number in range(args.rounds):
                    for expiring in ((False, True) if round_number % 2 == 0 else (True, False)):
                        r, left = run_expiry_under_load(binary, expiring, args, logdir)
                        rps[expiring].append(r)
                        print(f"{name:9} {'expiring' if expiring else 'no TTL  '}: mixed {r:,.0f} req/s "
                              f"({left:.0f} entries at the end)", flush=True)
                a, b = statistics.median(rps[False]), statistics.median(rps[True])
                print(f"{name:9}: mixed while {args.entries:,} keys expire {b:,.0f} req/s vs without {a:,.0f} "
                      f"= {b / a:.2f}x (medians of {args.rounds})", flush=True)
        print(f"load average at end: {os.getloadavg()[0]:.2f}")
        return 0
    runs = {}
    with tempfile.TemporaryDirectory(prefix="kv-ttl-bench-") as logdir:
        for round_number in range(args.rounds):
            for name, binary in binaries:
                for mode_ttl in ((False, True) if round_number % 2 == 0 else (True, False)):
                    try:
                        r = run_one(binary, mode_ttl, args, logdir)
                    except (d.BenchError, OSError) as e:
                        print(f"{name} {'TTL' if mode_ttl else 'no TTL'}: FAILED: {e}", file=sys.stderr)
                        return 1
                    runs.setdefault((name, mode_ttl), []).append(r)
                    print(f"{name:9} {'TTL   ' if mode_ttl else 'no TTL'}: rewrite {r['seconds']:.1f} s, "
                          f"GET p99 {r['p99']:.1f} ms, p99.9 {r['p999']:.1f} ms, max {r['max']:.1f} ms "
                          f"({r['gets']} GETs, {r['entries']:.0f} entries)", flush=True)
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    results = {key: {field: statistics.median(r[field] for r in rs) for field in rs[0]} for key, rs in runs.items()}
    print()
    print(f"medians of {args.rounds} round(s):")
    print(f"| binary | N | rewrite time, no TTL / TTL | rewrite throughput TTL/no-TTL | GET p99 | GET p99.9 | GET max |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, _ in binaries:
        a, b = results[(name, False)], results[(name, True)]
        print(f"| {name} | {args.entries:,} | {a['seconds']:.1f} s / {b['seconds']:.1f} s | "
              f"{a['seconds'] / b['seconds']:.2f}x | {a['p99']:.1f} / {b['p99']:.1f} ms | "
              f"{a['p999']:.1f} / {b['p999']:.1f} ms ({b['p999'] / a['p999']:.2f}x) | "
              f"{a['max']:.1f} / {b['max']:.1f} ms ({b['max'] / a['max']:.2f}x) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

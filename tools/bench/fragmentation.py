#!/usr/bin/python3
"""Alternate-and-delete: does a churned cache keep its mappings bounded and its RSS
within --memory-limit?

Starts kvcache --threads 2 --memory-limit LIMIT (default build/kvcache; --kvcache for
another binary, e.g. one built from an older commit), then:

  1. fill    --puts keys f:0..f:N-1 over pipelined /mput batches (240 items), values
             alternating 200 and 100 bytes in runs of 40 keys (keys 0-39: 200 B,
             40-79: 100 B, ...); every response must be 200;
  2. delete  the 200-byte half, pipelined /delete; every response must be 200 or 404
             (404: evicted earlier, when the fill overran the limit);
  3. refill  --puts / 2 new keys g:0.. with 100-byte values (they should reuse the
             memory the deletes gave back).

After each phase it prints the number of mappings (lines of /proc/PID/maps), VmRSS,
kvcache_memory_used_bytes, entries and evictions; and checks a sample of the newest
keys of the phase. --puts defaults to 5,000,000 x limit / 1400 MiB (so the fill writes
about 0.6x the limit of data: 1400M -> 5M puts, 4G -> ~14.6M).

PASS when every phase ends with fewer than --max-mappings (1000) mappings and RSS <=
--max-ratio (1.05) x limit. Work is split over --procs client processes (one keep-alive
connection each), bounded by --timeout per phase.

  /usr/bin/python3 tools/bench/fragmentation.py --limit 1400M
  /usr/bin/python3 tools/bench/fragmentation.py --limit 4G
  /usr/bin/python3 tools/bench/fragmentation.py --limit 1400M --kvcache /tmp/main/build/kvcache

Exit status: 0 PASS, 1 FAIL, 2 usage or kvcache could not be started. Standard library
only; loopback only.
"""
import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import density as d  # noqa: E402 - shared process/socket helpers (same directory)

MIB = 1024 * 1024
BATCH = 240  # 240 x (200 B value + JSON) < the 64 KiB body limit
WINDOW = 4


def parse_size(text):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)


def value_size(i):
    return 200 if (i // 40) % 2 == 0 else 100


def mput_body(prefix, lo, hi, size_of):
    items = ",".join(f'{{"key":"{prefix}{i}","value":"{("v" * size_of(i))}"}}' for i in range(lo, hi))
    return d.http_request("POST", "/mput", ('{"items":[' + items + "]}").encode())


def pipeline(port, requests, check, deadline):
    """Sends an iterable of (raw, n_replies) with WINDOW in flight; check(status) per reply."""
    c = d.Conn(port, timeout=60)
    inflight = []
    it = iter(requests)
    done = False
    while True:
        while not done and len(inflight) < WINDOW:
            nxt = next(it, None)
            if nxt is None:
                done = True
                break
            c.sendall(nxt[0])
            inflight.append(nxt[1])
        if not inflight:
            break
        if time.monotonic() > deadline:
            raise d.BenchError("phase timed out")
        for _ in range(inflight.pop(0)):
            status, body = c.read_response()
            if not check(status):
                raise d.BenchError(f"HTTP {status}: {body[:200]!r}")
    c.close()


def fill_part(port, lo, hi, prefix, size_of, deadline):
    reqs = ((mput_body(prefix, b, min(hi, b + BATCH), size_of), 1) for b in range(lo, hi, BATCH))
    pipeline(port, reqs, lambda s: s == 200, deadline)


def delete_part(port, lo, hi, deadline):
    def reqs():
        group = []
        for i in range(lo, hi):
            if value_size(i) == 200:
                group.append(d.http_request("POST", "/delete", f'{{"key":"f:{i}"}}'.encode()))
                if len(group) == 200:
                    yield b"".join(group), len(group)
                    group = []
        if group:
            yield b"".join(group), len(group)
    pipeline(port, reqs(), lambda s: s in (200, 404), deadline)


def run_parallel(target, ranges, args):
    errors = multiprocessing.Queue()

    def wrap(*a):
        try:
            target(*a)
        except Exception as e:  # noqa: BLE001 - reported by the parent
            errors.put(f"{type(e).__name__}: {e}")
    procs = [multiprocessing.Process(target=wrap, args=(*args[:1], *r, *args[1:])) for r in ranges]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    if not errors.empty():
        raise d.BenchError(errors.get())


def split(lo, hi, parts):
    n = hi - lo
    # Whole runs of 40 per part, so the alternation does not depend on the split.
    cuts = [lo + (n * k // parts) // 40 * 40 for k in range(parts)] + [hi]
    return [(cuts[k], cuts[k + 1]) for k in range(parts)]


def mappings(pid):
    with open(f"/proc/{pid}/maps") as f:
        return sum(1 for _ in f)


def snapshot(srv, port, phase, seconds):
    m = d.kv_metrics(port)
    return {"phase": phase, "seconds": seconds, "mappings": mappings(srv.pid), "rss": d.rss_bytes(srv.pid),
            "used": int(m.get("kvcache_memory_used_bytes", 0)), "entries": int(m.get("kvcache_entries", 0)),
            "evictions": int(m.get("kvcache_evictions_total", 0))}


def check_present(port, keys, size_of):
    c = d.Conn(port, timeout=30)
    bad = 0
    for g in range(0, len(keys), 100):
        group = keys[g:g + 100]
        c.sendall(b"".join(d.http_request("GET", f"/get?key={k}") for k, _ in group))
        for k, i in group:
            status, body = c.read_response()
            if status != 200 or json.loads(body)["value"] != "v" * size_of(i):
                bad += 1
    c.close()
    return bad


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", default="1400M")
    p.add_argument("--puts", type=int, default=0, help="fill size (default: 5M x limit / 1400M)")
    p.add_argument("--kvcache", default=d.DEFAULT_KVCACHE)
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--timeout", type=float, default=900, help="seconds per phase")
    p.add_argument("--max-mappings", type=int, default=1000)
    p.add_argument("--max-ratio", type=float, default=1.05)
    args = p.parse_args()
    limit = parse_size(args.limit)
    puts = args.puts or int(5_000_000 * limit / (1400 * MIB)) // 40 * 40
    if puts < 80 or not 1 <= args.procs <= 8:
        p.error("--puts >= 80, --procs 1..8")

    snaps = []
    failures = []
    with tempfile.TemporaryDirectory(prefix="kv-frag-") as logdir:
        port = d.free_port()
        try:
            srv = d.start_kvcache(args.kvcache, port, logdir, args.limit, threads=2)
        except RuntimeError as e:
            print(f"fragmentation: {e}", file=sys.stderr)
            return 2
        try:
            snaps.append(snapshot(srv, port, "start", 0))
            phases = [
                ("fill", lambda: run_parallel(fill_part, split(0, puts, args.procs),
                                              (port, "f:", value_size, time.monotonic() + args.timeout))),
                ("delete", lambda: run_parallel(delete_part, split(0, puts, args.procs),
                                                (port, time.monotonic() + args.timeout))),
                ("refill", lambda: run_parallel(fill_part, split(0, puts // 2, args.procs),
                                                (port, "g:", lambda i: 100, time.monotonic() + args.timeout))),
            ]
            for name, run in phases:
                print(f"fragmentation: {name} ...", file=sys.stderr, flush=True)
                t0 = time.monotonic()
                run()
                snaps.append(snapshot(srv, port, name, time.monotonic() - t0))
                if not srv.alive():
                    raise d.BenchError(f"kvcache died:\n{srv.log_tail()}")
            # The newest keys of the last phases are there, whole.
            bad = check_present(port, [(f"g:{i}", i) for i in range(puts // 2 - 1000, puts // 2)], lambda i: 100)
            bad += check_present(port, [(f"f:{i}", i) for i in range(puts - 2000, puts) if value_size(i) == 100],
                                 value_size)
            if bad:
                failures.append(f"{bad} of the newest keys missing or wrong")
        except d.BenchError as e:
            failures.append(str(e))
        finally:
            srv.stop()

    print(f"\n### Alternate-and-delete: --memory-limit {args.limit}, {puts:,} puts "
          f"(200 B / 100 B values in runs of 40), delete the 200 B half, refill {puts // 2:,} x 100 B\n")
    print(f"binary: `{args.kvcache}`\n")
    print("| phase | seconds | mappings | RSS MiB | RSS / limit | memory_used MiB | entries | evictions |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for s in snaps:
        print(f"| {s['phase']} | {s['seconds']:.0f} | {s['mappings']:,} | {s['rss'] / MIB:.0f} | "
              f"{s['rss'] / limit:.3f} | {s['used'] / MIB:.0f} | {s['entries']:,} | {s['evictions']:,} |")
    worst_maps = max(s["mappings"] for s in snaps)
    worst_rss = max(s["rss"] for s in snaps)
    if worst_maps >= args.max_mappings:
        failures.append(f"{worst_maps} mappings (bound {args.max_mappings})")
    if worst_rss > args.max_ratio * limit:
        failures.append(f"RSS {worst_rss / limit:.3f}x the limit (bound {args.max_ratio})")
    print(f"\nmax mappings {worst_maps:,}; max RSS / limit {worst_rss / limit:.3f}")
    for f in failures:
        print(f"FAIL: {f}")
    print("RESULT:", "FAIL" if failures else "PASS")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

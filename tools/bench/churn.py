#!/usr/bin/python3
"""Churn: does kvcache's RSS stay within its --memory-limit while entries are evicted and
replaced by entries of other sizes?

Starts build/kvcache --bind 127.0.0.1 --port P --threads 2 --memory-limit LIMIT and writes
continuously for --seconds, in three phases of equal length:

  1. 8-byte values      2. 256-byte values      3. 8-byte values again
  (--random-sizes: key and value sizes uniform 1..256 in every phase)

Each write is a pipelined POST /mput batch (<= 400 items, < 64 KiB body) over --conns
keep-alive connections (one thread each); 75% of the items are new keys (a global counter,
so keys are written oldest to newest), 25% overwrite one of the 20,000 most recent keys of
the same connection (so phase 2 grows 8-byte entries to 256 bytes in place, phase 3
shrinks them back). Every response must be 200. A sampler reads VmRSS from
/proc/PID/status and kvcache_memory_used_bytes, kvcache_entries and kvcache_evictions_total
from /metrics every --interval seconds.

At the end it checks that the newest 1000 keys are all present with the last value written
and that the oldest 1000 keys are gone (evicted), then prints per phase: max RSS / limit,
max memory_used / limit, items written, new keys, turnover (new keys / entries resident:
how many times the cache contents were replaced), data written / limit, evictions; then the steady-state RSS
(median of the second half of phase 3) / limit and PASS/FAIL against
max RSS <= --max-ratio (1.1) x limit.

  /usr/bin/python3 tools/bench/churn.py                         # 64M, 60 s
  /usr/bin/python3 tools/bench/churn.py --limit 64M --seconds 60 --random-sizes

Keys are c:<n> (fixed sizes) or base62(n) padded with '-' to the drawn length
(--random-sizes; a drawn length shorter than base62(n), at most 4 characters, is raised
to it so keys stay unique). A phase that wrote less than 2 x limit (items x memory_used
per entry) is flagged: the client was too slow, raise --seconds.

Exit status: 0 PASS, 1 FAIL (RSS over the bound, a failed write or a failed check),
2 usage or kvcache could not be started. Standard library only; loopback only.
"""
import argparse
import collections
import os
import random
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import density as d  # noqa: E402 - shared process/socket helpers (same directory)

MIB = 1024 * 1024
BATCH_ITEMS = 400
BODY_MAX = 60000          # < kvcache's 64 KiB body limit, with room for the last item
RECENT = 20000            # overwrites pick among this many most recent keys of the connection
OVERWRITE_FRACTION = 0.25
B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def b62(n):
    if n == 0:
        return "0"
    out = []
    while n:
        n, r = divmod(n, 62)
        out.append(B62[r])
    return "".join(reversed(out))


class KeySpace:
    """Global key counter shared by the writers (blocks of indices, handed out in order)."""

    def __init__(self, random_sizes):
        self.random_sizes = random_sizes
        self.next = 0
        self.lock = threading.Lock()

    def take(self, n):
        with self.lock:
            lo = self.next
            self.next += n
            return lo

    def key(self, i):
        if not self.random_sizes:
            return f"c:{i}"
        # The drawn length is a pure function of i, so the key of i is always the same.
        length = 1 + (i * 2654435761 + 12345) % 256
        k = b62(i)
        return k + "-" * (length - len(k)) if length > len(k) else k


class Writer(threading.Thread):
    def __init__(self, wid, port, keys, state, deadline, conns):
        super().__init__(daemon=True)
        self.wid = wid
        self.port = port
        self.keys = keys
        self.state = state  # shared: phase index, value size rule, stop flag
        self.deadline = deadline
        self.conns = conns
        self.rnd = random.Random(1000 + wid)
        self.recent = []         # own key indices, newest last (trimmed to RECENT..2*RECENT)
        self.batches = 0
        self.last = {}           # index -> last value written (own keys, pruned)
        self.written = collections.Counter()       # phase -> items acknowledged
        self.payload = collections.Counter()       # phase -> key+value bytes acknowledged
        self.new_keys = collections.Counter()      # phase -> new keys acknowledged
        self.error = None

    def batch(self, phase):
        """One /mput request: (raw bytes, [(index, value)], payload bytes). 25% of the items
        overwrite random keys among this connection's RECENT newest, the rest are new keys."""
        rnd = self.rnd
        rand = self.state["random"]
        vsize = self.state["value_size"]
        bound = 22 + (256 + 256 if rand else 16 + vsize)  # upper bound of one item's JSON
        n = max(1, min(BATCH_ITEMS, (BODY_MAX - 12) // bound))
        recent = self.recent
        n_over = min(len(recent), int(n * OVERWRITE_FRACTION))
        idx = [recent[-1 - rnd.randrange(min(len(recent), RECENT))] for _ in range(n_over)]
        lo = self.keys.take(n - n_over)
        new = range(lo, lo + n - n_over)
        recent.extend(new)
        if len(recent) > 2 * RECENT:
            del recent[:-RECENT]
        idx.extend(new)
        self.batches += 1
        tag = f"{b62(self.batches)}{self.wid}:{phase}:"  # differs on every write of a key
        if rand:
            key = self.keys.key
            sizes = [rnd.randint(1, 256) for _ in idx]
            out = [(i, (f"{tag}{i}." * (sz // 8 + 1))[:sz]) for i, sz in zip(idx, sizes)]
            keys = [key(i) for i in idx]
        else:
            reps = vsize // 8 + 1
            out = [(i, (f"{tag}{i}." * reps)[:vsize]) for i in idx]
            keys = [f"c:{i}" for i in idx]
        body = ('{"items":[' + ",".join([f'{{"key":"{k}","value":"{v}"}}' for k, (_, v) in zip(keys, out)])
                + "]}").encode()
        if len(body) > 65536:
            raise d.BenchError(f"internal: body of {len(body)} bytes")
        payload = sum(map(len, keys)) + sum(len(v) for _, v in out)
        return d.http_request("POST", "/mput", body), out, (payload, n - n_over)

    def run(self):
        window = 4
        try:
            c = d.Conn(self.port, timeout=30)
            inflight = collections.deque()
            while True:
                if time.monotonic() > self.deadline:
                    raise d.BenchError("writer passed the hard deadline")
                stop = self.state["stop"]
                while not stop and len(inflight) < window:
                    phase = self.state["phase"]
                    raw, out, payload = self.batch(phase)
                    c.sendall(raw)
                    inflight.append((phase, out, payload))
                    stop = self.state["stop"]
                if not inflight:
                    break
                phase, out, payload = inflight.popleft()
                status, body = c.read_response()
                if status != 200:
                    raise d.BenchError(f"/mput answered HTTP {status}: {body[:200]!r}")
                for i, v in out:
                    self.last[i] = v
                self.written[phase] += len(out)
                self.payload[phase] += payload[0]
                self.new_keys[phase] += payload[1]
                if len(self.last) > 4 * RECENT:
                    # overwrites reach back RECENT own keys, i.e. about RECENT * conns global ones
                    floor = self.keys.next - 2 * RECENT * self.conns
                    self.last = {i: v for i, v in self.last.items() if i >= floor}
            c.close()
        except Exception as e:  # noqa: BLE001 - reported by main
            self.error = f"{type(e).__name__}: {e}"
            self.state["stop"] = True


class Sampler(threading.Thread):
    def __init__(self, pid, port, state, interval, deadline):
        super().__init__(daemon=True)
        self.pid, self.port, self.state = pid, port, state
        self.interval, self.deadline = interval, deadline
        self.samples = []  # (t, phase, rss, memory_used, entries, evictions)
        self.halt = threading.Event()
        self.error = None

    def sample(self, c, phase):
        m = d.kv_metrics(self.port, c)
        self.samples.append((time.monotonic(), phase, d.rss_bytes(self.pid),
                             int(m.get("kvcache_memory_used_bytes", 0)), int(m.get("kvcache_entries", 0)),
                             int(m.get("kvcache_evictions_total", 0))))

    def run(self):
        try:
            c = d.Conn(self.port, timeout=10)
            nxt = time.monotonic()
            while not self.halt.is_set() and time.monotonic() < self.deadline:
                self.sample(c, self.state["phase"])
                nxt += self.interval
                self.halt.wait(max(0.0, nxt - time.monotonic()))
            c.close()
        except Exception as e:  # noqa: BLE001
            self.error = f"{type(e).__name__}: {e}"


def check_keys(port, keys, expected, newest, oldest):
    """Newest keys must hold their last value, oldest keys must be gone. Returns failures."""
    import json
    fails = []
    c = d.Conn(port, timeout=30)
    try:
        for want_present, idx in ((True, newest), (False, oldest)):
            for g in range(0, len(idx), 100):
                group = idx[g:g + 100]
                c.sendall(b"".join(d.http_request("GET", f"/get?key={keys.key(i)}") for i in group))
                for i in group:
                    status, body = c.read_response()
                    if want_present:
                        got = json.loads(body).get("value") if status == 200 else None
                        if got != expected.get(i):
                            fails.append(f"newest key {keys.key(i)[:40]}: HTTP {status}, "
                                         f"value {'wrong' if status == 200 else 'missing'}")
                    elif status != 404:
                        fails.append(f"oldest key {keys.key(i)[:40]}: HTTP {status}, expected 404")
    finally:
        c.close()
    return fails


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", default="64M", help="kvcache --memory-limit")
    p.add_argument("--seconds", type=float, default=60, help="total write time, split into 3 equal phases")
    p.add_argument("--random-sizes", action="store_true", help="key and value sizes uniform 1..256")
    p.add_argument("--conns", type=int, default=2, help="writer connections (threads), 1..4")
    p.add_argument("--interval", type=float, default=0.5, help="RSS / metrics sampling period, seconds")
    p.add_argument("--max-ratio", type=float, default=1.1, help="PASS when max RSS <= this x limit")
    p.add_argument("--check", type=int, default=1000, help="newest / oldest keys checked at the end")
    p.add_argument("--threads", type=int, default=2, help="kvcache --threads")
    p.add_argument("--kvcache", default=d.DEFAULT_KVCACHE, help="kvcache binary")
    p.add_argument("--samples-csv", help="also write every sample to this CSV file")
    args = p.parse_args()
    if not 3 <= args.seconds <= 3600 or not 1 <= args.conns <= 4 or not 0.05 <= args.interval <= 10:
        p.error("--seconds 3..3600, --conns 1..4, --interval 0.05..10")
    if args.check < 1:
        p.error("--check >= 1")

    phases = ([("random 1..256", None)] * 3 if args.random_sizes
              else [("8 B values", 8), ("256 B values", 256), ("8 B values", 8)])
    phase_s = args.seconds / 3
    hard_deadline = time.monotonic() + args.seconds + 120
    keys = KeySpace(args.random_sizes)
    state = {"phase": 0, "value_size": phases[0][1], "random": args.random_sizes, "stop": False}

    with tempfile.TemporaryDirectory(prefix="kv-churn-") as logdir:
        port = d.free_port()
        try:
            srv = d.start_kvcache(args.kvcache, port, logdir, args.limit, threads=args.threads)
        except RuntimeError as e:
            print(f"churn: {e}", file=sys.stderr)
            return 2
        try:
            m0 = d.kv_metrics(port)
            limit = int(m0["kvcache_memory_limit_bytes"])
            rss0 = d.rss_bytes(srv.pid)
            sampler = Sampler(srv.pid, port, state, args.interval, hard_deadline)
            sampler.start()
            writers = [Writer(w, port, keys, state, hard_deadline, args.conns) for w in range(args.conns)]
            t_start = time.monotonic()
            for w in writers:
                w.start()
            bounds = []
            for ph, (name, vsize) in enumerate(phases):
                state["value_size"] = vsize
                state["phase"] = ph
                t_ph = time.monotonic()
                print(f"churn: phase {ph + 1}: {name} for {phase_s:.0f}s", file=sys.stderr, flush=True)
                while time.monotonic() < t_ph + phase_s and not state["stop"]:
                    time.sleep(0.1)
                bounds.append((t_ph, time.monotonic()))
                if state["stop"]:
                    break
            state["stop"] = True
            for w in writers:
                w.join(max(1.0, hard_deadline - time.monotonic()))
            write_s = time.monotonic() - t_start
            time.sleep(max(1.0, 2 * args.interval))  # a couple of samples after the last write
            sampler.halt.set()
            sampler.join(15)
            alive = srv.alive()
            failures = [f"writer {w.wid}: {w.error}" for w in writers if w.error]
            failures += [f"writer {w.wid} did not stop" for w in writers if w.is_alive()]
            if sampler.error:
                failures.append(f"sampler: {sampler.error}")
            if not alive:
                failures.append(f"kvcache died: {srv.log_tail()}")
            expected = {}
            for w in writers:
                expected.update(w.last)
            total = keys.next
            n_check = min(args.check, total // 4)
            newest = list(range(total - n_check, total))
            oldest = list(range(0, n_check))
            if alive and not failures:
                missing = [i for i in newest if i not in expected]
                if missing:
                    failures.append(f"internal: {len(missing)} newest keys not tracked")
                failures += check_keys(port, keys, expected, newest, oldest)
            rss_final = d.rss_bytes(srv.pid) if alive else 0
            m1 = d.kv_metrics(port) if alive else {}
        finally:
            srv.stop()

    # ---- report
    S = sampler.samples
    ratio = args.max_ratio
    written = collections.Counter()
    payload = collections.Counter()
    new_keys = collections.Counter()
    for w in writers:
        written.update(w.written)
        payload.update(w.payload)
        new_keys.update(w.new_keys)
    mode = "random key/value sizes 1..256" if args.random_sizes else "8 B -> 256 B -> 8 B values"
    print(f"\n### Churn: kvcache --memory-limit {args.limit} ({limit / MIB:.1f} MiB), {mode}, "
          f"{args.seconds:.0f} s, {args.conns} conns, 25% overwrites of recent keys\n")
    print(f"RSS at start: {rss0 / MIB:.1f} MiB ({rss0 / limit:.3f} x limit); samples every {args.interval} s\n")
    print("| phase | values | max RSS MiB | max RSS / limit | max memory_used / limit | entries at end "
          "| items written | items/s | new keys | turnover | written / limit | evictions |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    prev_evict = 0
    max_rss_all = max((s[2] for s in S), default=0)
    flagged = []
    for ph, (name, _) in enumerate(phases):
        ss = [s for s in S if s[1] == ph]
        if not ss:
            continue
        t0, t1 = bounds[ph] if ph < len(bounds) else (ss[0][0], ss[-1][0])
        mx = max(s[2] for s in ss)
        mu = max(s[3] for s in ss)
        ent = ss[-1][4]
        ev = ss[-1][5] - prev_evict
        prev_evict = ss[-1][5]
        turnover = new_keys[ph] / ent if ent else 0
        # data written in the server's own currency: items x (memory_used / entries) at phase end
        charged = written[ph] * (ss[-1][3] / ent if ent else 0) / limit
        if charged < 2:
            flagged.append(ph + 1)
        print(f"| {ph + 1} | {name} | {mx / MIB:.1f} | {mx / limit:.3f} | {mu / limit:.3f} | {ent:,} "
              f"| {written[ph]:,} | {written[ph] / max(1e-9, t1 - t0):,.0f} | {new_keys[ph]:,} | {turnover:.1f} "
              f"| {charged:.1f} | {ev:,} |")
    last = [s for s in S if s[1] == len(phases) - 1]
    steady = last[len(last) // 2:] or S[-1:]
    steady_rss = statistics.median(s[2] for s in steady) if steady else 0
    print()
    print(f"- steady-state RSS (median of the second half of phase {len(phases)}): "
          f"{steady_rss / MIB:.1f} MiB = {steady_rss / limit:.3f} x limit")
    print(f"- max RSS over the run: {max_rss_all / MIB:.1f} MiB = {max_rss_all / limit:.3f} x limit; "
          f"RSS after the writes stopped: {rss_final / MIB:.1f} MiB = {rss_final / limit:.3f} x limit")
    if m1:
        print(f"- final /metrics: memory_used {int(m1.get('kvcache_memory_used_bytes', 0)):,} "
              f"({m1.get('kvcache_memory_used_bytes', 0) / limit:.3f} x limit), "
              f"entries {int(m1.get('kvcache_entries', 0)):,}, evictions {int(m1.get('kvcache_evictions_total', 0)):,}; "
              f"RSS / memory_used = {rss_final / max(1, m1.get('kvcache_memory_used_bytes', 1)):.3f}")
    print(f"- {keys.next:,} keys created, {sum(written.values()):,} items written in {write_s:.1f} s; "
          f"{len(S)} samples; checked newest {n_check} keys present and oldest {n_check} gone")
    if flagged:
        print(f"- WARNING: less than 2 x limit written in phase(s) {flagged}: the client was too slow "
              f"to write several limits' worth of data, raise --seconds")
    print("- turnover = new keys / entries at phase end; written / limit = items written x "
          "(memory_used / entries at phase end) / limit; payload (key+value bytes) written: "
          + ", ".join(f"{payload[ph] / MIB:,.0f} MiB" for ph in range(len(phases))))
    if args.samples_csv:
        with open(args.samples_csv, "w") as f:
            f.write("t_s,phase,rss_bytes,memory_used_bytes,entries,evictions\n")
            for s in S:
                f.write(f"{s[0] - S[0][0]:.2f},{s[1] + 1},{s[2]},{s[3]},{s[4]},{s[5]}\n")
    for f in failures[:10]:
        print(f"- CHECK FAILED: {f}")
    if len(failures) > 10:
        print(f"- ... {len(failures) - 10} more check failures")
    rss_ok = 0 < max_rss_all <= ratio * limit
    verdict = "PASS" if rss_ok and not failures else "FAIL"
    why = [] if rss_ok else [f"max RSS {max_rss_all / limit:.3f} x limit > {ratio}"]
    if failures:
        why.append(f"{len(failures)} check failure(s)")
    print(f"\nRESULT: {verdict} (max RSS <= {ratio} x limit{'; ' + '; '.join(why) if why else ''})")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())

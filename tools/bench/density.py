#!/usr/bin/python3
"""Memory density: RSS per stored entry of kvcache vs redis-server vs memcached.

For each system: start a private instance on a free loopback port (redis and memcached
with persistence off), wait until it answers, read VmRSS from /proc/PID/status, insert
--entries keys key:0..key:N-1 with --value-size byte values as fast as the protocol
allows (pipelined, every reply checked), check 1000 random keys read back exactly and
the server's entry count is N, read VmRSS again, stop the instance (by its PID).

  kvcache    build/kvcache --bind 127.0.0.1 --port P --threads 2 --memory-limit 8G;
             pipelined POST /mput batches (~400 items, < 64 KiB body) over --conns
             keep-alive sockets, one thread each; every response must be 200
  redis      redis-server --port P --save '' --appendonly no --bind 127.0.0.1;
             pipelined RESP SET, every reply must be +OK
  memcached  memcached -l 127.0.0.1 -p P -m 4096 -U 0 -t 2; pipelined text `set`,
             every reply must be STORED

Request bytes are generated before the clock starts, so fill time measures the
server and the loopback, not Python string formatting.

Prints a markdown table per fill point (bytes of RSS per entry = (RSS end - RSS start) / N, payload =
average key length + value size, overhead = the difference; peak/end RSS = VmHWM / VmRSS at
the end, the growth spike), then kvcache's own kvcache_memory_used_bytes and the ratio RSS
delta / memory_used; with several fill points, a summary of each system's overhead at each
and its median.

  /usr/bin/python3 tools/bench/density.py                       # 1,000,000 x 128 B
  /usr/bin/python3 tools/bench/density.py --entries 200000 --value-size 32 --systems kvcache
  /usr/bin/python3 tools/bench/density.py --systems kvcache --kvcache-ttl 86400   # with a TTL
  /usr/bin/python3 tools/bench/density.py --entries 500000,750000,1000000,1400000,2000000 \
      --systems kvcache,baseline,redis,memcached   # each fill point, and a second kvcache binary

Exit status: 0 ok, 1 a verification failed (or a server died / timed out), 2 usage or
a server could not be started. Standard library only; loopback only.
"""
import argparse
import atexit
import collections
import json
import os
import random
import shutil
import statistics
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_KVCACHE = os.path.join(REPO, "build", "kvcache")
BODY_LIMIT = 65536  # kvcache rejects larger bodies with 413
MIB = 1024 * 1024


class BenchError(Exception):
    """A verification or protocol failure: the run is invalid."""


# ---------------------------------------------------------------- processes

_started = []  # Server objects this process started; stopped on exit


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid, field="VmRSS"):
    """VmRSS (or VmHWM, the peak RSS) of pid in bytes (from /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise BenchError(f"no {field} for pid {pid}")


class Server:
    """A child process we started; stop() signals only its PID."""

    def __init__(self, name, argv, logdir):
        self.name = name
        self.argv = argv
        self.log_path = os.path.join(logdir, f"{name}.log")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, cwd=logdir)
        self.pid = self.proc.pid
        _started.append(self)

    def alive(self):
        return self.proc.poll() is None

    def log_tail(self, n=2000):
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode("latin-1")
        except OSError:
            return ""

    def stop(self, timeout=10.0):
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()
        if self in _started:
            _started.remove(self)


def stop_all():
    for s in list(_started):
        try:
            s.stop()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def _on_signal(signum, _frame):
    stop_all()
    sys.exit(128 + signum)


atexit.register(stop_all)
signal.signal(signal.SIGTERM, _on_signal)
signal.signal(signal.SIGINT, _on_signal)


def wait_ready(server, probe, timeout=15.0):
    """Call probe() until it returns True; bounded by timeout; the server must stay up."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"{server.name} exited with {server.proc.returncode}:\n{server.log_tail()}")
        try:
            if probe():
                return
        except OSError as e:
            last = e
        time.sleep(0.05)
    raise RuntimeError(f"{server.name} not ready after {timeout:.0f}s ({last}):\n{server.log_tail()}")


def start_kvcache(binary, port, logdir, memory_limit, threads=2, extra=()):
    if not os.access(binary, os.X_OK):
        raise RuntimeError(f"{binary} not found; build it with: cd {REPO} && tools/build.sh")
    argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--threads", str(threads),
            "--memory-limit", memory_limit, "--log-level", "warn", *extra]
    s = Server("kvcache", argv, logdir)

    def probe():
        c = Conn(port, timeout=2)
        try:
            status, _ = c.request("GET", "/health")
            return status == 200
        finally:
            c.close()
    wait_ready(s, probe)
    return s


def start_redis(port, logdir):
    exe = shutil.which("redis-server")
    if not exe:
        raise RuntimeError("redis-server not installed (apt-get install -y redis-server)")
    argv = [exe, "--port", str(port), "--save", "", "--appendonly", "no", "--bind", "127.0.0.1",
            "--dir", logdir, "--daemonize", "no"]
    s = Server("redis", argv, logdir)

    def probe():
        c = Conn(port, timeout=2)
        try:
            c.sendall(b"PING\r\n")
            return c.readline() == b"+PONG"
        finally:
            c.close()
    wait_ready(s, probe)
    return s


def start_memcached(port, logdir):
    exe = shutil.which("memcached")
    if not exe:
        raise RuntimeError("memcached not installed (apt-get install -y memcached)")
    argv = [exe, "-l", "127.0.0.1", "-p", str(port), "-m", "4096", "-U", "0", "-t", "2"]
    if os.geteuid() == 0:
        argv += ["-u", "root"]  # memcached refuses to run as root without -u
    s = Server("memcached", argv, logdir)

    def probe():
        c = Conn(port, timeout=2)
        try:
            c.sendall(b"version\r\n")
            return c.readline().startswith(b"VERSION")
        finally:
            c.close()
    wait_ready(s, probe)
    return s


# ---------------------------------------------------------------- connections

class Conn:
    """A loopback TCP connection with a read buffer (HTTP/1.1, RESP and memcached text)."""

    def __init__(self, port, timeout=30.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def close(self):
        self.sock.close()

    def sendall(self, data):
        self.sock.sendall(data)

    def fill(self):
        chunk = self.sock.recv(262144)
        if not chunk:
            raise BenchError("server closed the connection")
        self.buf += chunk

    def readline(self):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line, self.buf = self.buf[:i], self.buf[i + 2:]
                return line
            self.fill()

    def readexact(self, n):
        while len(self.buf) < n:
            self.fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def expect_lines(self, n, line):
        """Consume exactly n reply lines, each must equal `line` (with its CRLF)."""
        got = 0
        size = len(line)
        while got < n:
            end = self.buf.rfind(b"\r\n")
            if end < 0:
                self.fill()
                continue
            k = self.buf.count(b"\r\n", 0, end + 2)
            cut = end + 2
            if got + k > n:
                k = n - got
                cut = k * size
            block = self.buf[:cut]
            if block != line * k:
                bad = next((x for x in block.split(b"\r\n") if x + b"\r\n" != line), block[:200])
                raise BenchError(f"unexpected reply {bad[:200]!r} (expected {line!r})")
            self.buf = self.buf[cut:]
            got += k

    # -- HTTP/1.1
    def read_response(self):
        """(status, body) of the next HTTP response."""
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i >= 0:
                break
            self.fill()
        lines = self.buf[:i].decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            raise BenchError(f"bad status line {lines[0]!r}") from None
        length = 0
        for line in lines[1:]:
            name, _, val = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(val.strip())
            elif name.strip().lower() == "transfer-encoding":
                raise BenchError("chunked responses are not expected from kvcache")
        return status, self.readexact(i + 4 + length)[i + 4:]

    def request(self, method, path, body=b""):
        self.sendall(http_request(method, path, body))
        return self.read_response()


def http_request(method, path, body=b""):
    if body:
        return (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


def kv_metrics(port, conn=None):
    """Unlabelled samples of kvcache's /metrics as {name: float}."""
    c = conn or Conn(port, timeout=5)
    try:
        status, body = c.request("GET", "/metrics")
    finally:
        if conn is None:
            c.close()
    if status != 200:
        raise BenchError(f"/metrics answered {status}")
    out = {}
    for line in body.decode("latin-1").splitlines():
        if not line or line.startswith("#") or "{" in line:
            continue
        name, _, val = line.partition(" ")
        try:
            out[name] = float(val)
        except ValueError:
            pass
    return out


# ---------------------------------------------------------------- pipelined fill

Chunk = collections.namedtuple("Chunk", "data items replies")  # replies: requests/commands in it


def run_pipelined(port, chunk_lists, read_replies, deadline, window=4):
    """One thread + one connection per list of chunks; at most `window` chunks in flight per
    connection. read_replies(conn, chunk) must consume and check the chunk's replies.
    Returns the number of items acknowledged; raises BenchError on the first failure."""
    errors = []
    done = [0] * len(chunk_lists)

    def worker(k, chunks):
        try:
            c = Conn(port)
            inflight = collections.deque()
            nxt = 0
            while nxt < len(chunks) or inflight:
                if errors:
                    return
                if time.monotonic() > deadline:
                    raise BenchError("fill timed out")
                while nxt < len(chunks) and len(inflight) < window:
                    c.sendall(chunks[nxt].data)
                    inflight.append(chunks[nxt])
                    nxt += 1
                ch = inflight.popleft()
                read_replies(c, ch)
                done[k] += ch.items
            c.close()
        except Exception as e:  # noqa: BLE001 - reported to the caller
            errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=worker, args=(k, cl), daemon=True) for k, cl in enumerate(chunk_lists)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(1.0, deadline - time.monotonic() + 5))
    if any(t.is_alive() for t in threads):
        errors.append("a fill thread did not finish before the deadline")
    if errors:
        raise BenchError(errors[0])
    return sum(done)


def split(items, parts):
    """Split a list into `parts` contiguous, nearly equal lists."""
    n = len(items)
    return [items[n * k // parts:n * (k + 1) // parts] for k in range(parts)]


def value_for(i, size):
    """Deterministic, key-specific ASCII value of exactly `size` bytes (JSON and URL safe)."""
    s = f"v{i}-"
    return (s * (size // len(s) + 1))[:size]


def key_for(i):
    return f"key:{i}"


# -- kvcache

def kvcache_item_extra(ttl):
    return f',"ttl":{ttl}' if ttl else ""


def kvcache_batch_size(n, value_size, ttl=0, want=400):
    longest = len(key_for(max(0, n - 1)))
    item = len('{"key":"","value":""},') + longest + value_size + len(kvcache_item_extra(ttl))
    return max(1, min(want, 1000, (BODY_LIMIT - 64) // item))


def kvcache_chunks(n, value_size, batch, ttl=0):
    extra = kvcache_item_extra(ttl)
    chunks = []
    for b in range(0, n, batch):
        hi = min(n, b + batch)
        body = ('{"items":[' + ",".join(f'{{"key":"{key_for(i)}","value":"{value_for(i, value_size)}"{extra}}}'
                                        for i in range(b, hi)) + "]}").encode()
        chunks.append(Chunk(http_request("POST", "/mput", body), hi - b, 1))
    return chunks


def kvcache_replies(c, ch):
    for _ in range(ch.replies):
        status, body = c.read_response()
        if status != 200:
            raise BenchError(f"/mput answered HTTP {status}: {body[:200]!r}")


# -- redis

def redis_chunks(n, value_size, per_chunk=1000):
    chunks = []
    for b in range(0, n, per_chunk):
        hi = min(n, b + per_chunk)
        parts = []
        for i in range(b, hi):
            k, v = key_for(i), value_for(i, value_size)
            parts.append(f"*3\r\n$3\r\nSET\r\n${len(k)}\r\n{k}\r\n${len(v)}\r\n{v}\r\n")
        chunks.append(Chunk("".join(parts).encode(), hi - b, hi - b))
    return chunks


def redis_replies(c, ch):
    c.expect_lines(ch.replies, b"+OK\r\n")


def redis_cmd(c, *args):
    """Send one RESP command, return the raw reply (simple types and bulk strings only)."""
    parts = [f"*{len(args)}\r\n"]
    for a in args:
        parts.append(f"${len(a)}\r\n{a}\r\n")
    c.sendall("".join(parts).encode())
    return read_resp(c)


def read_resp(c):
    line = c.readline()
    if line[:1] == b"$":
        n = int(line[1:])
        return None if n < 0 else c.readexact(n + 2)[:-2]
    if line[:1] in (b"+", b":"):
        return line[1:]
    raise BenchError(f"redis replied {line[:200]!r}")


# -- memcached

def memcached_chunks(n, value_size, per_chunk=1000):
    chunks = []
    for b in range(0, n, per_chunk):
        hi = min(n, b + per_chunk)
        parts = []
        for i in range(b, hi):
            v = value_for(i, value_size)
            parts.append(f"set {key_for(i)} 0 0 {len(v)}\r\n{v}\r\n")
        chunks.append(Chunk("".join(parts).encode(), hi - b, hi - b))
    return chunks


def memcached_replies(c, ch):
    c.expect_lines(ch.replies, b"STORED\r\n")


def memcached_stats(c):
    c.sendall(b"stats\r\n")
    out = {}
    while True:
        line = c.readline()
        if line == b"END":
            return out
        parts = line.decode("latin-1").split(" ")
        if len(parts) >= 3 and parts[0] == "STAT":
            out[parts[1]] = parts[2]


# ---------------------------------------------------------------- verification

def verify_sample(system, port, n, value_size, sample=1000, seed=1):
    """Read back `sample` random keys; return the list of failures (empty = ok)."""
    rnd = random.Random(seed)
    idx = [rnd.randrange(n) for _ in range(min(sample, n))]
    bad = []
    c = Conn(port, timeout=30)
    try:
        for g in range(0, len(idx), 100):
            group = idx[g:g + 100]
            if system == "kvcache":
                c.sendall(b"".join(http_request("GET", f"/get?key={key_for(i)}") for i in group))
                for i in group:
                    status, body = c.read_response()
                    got = json.loads(body).get("value") if status == 200 else None
                    if status != 200 or got != value_for(i, value_size):
                        bad.append(f"{key_for(i)}: HTTP {status} {body[:80]!r}")
            elif system == "redis":
                c.sendall(b"".join(f"*2\r\n$3\r\nGET\r\n${len(key_for(i))}\r\n{key_for(i)}\r\n".encode()
                                   for i in group))
                for i in group:
                    got = read_resp(c)
                    if got != value_for(i, value_size).encode():
                        bad.append(f"{key_for(i)}: {got[:80] if got else got!r}")
            else:
                c.sendall(b"".join(f"get {key_for(i)}\r\n".encode() for i in group))
                for i in group:
                    line = c.readline()
                    got = None
                    if line.startswith(b"VALUE "):
                        got = c.readexact(int(line.split()[3]) + 2)[:-2]
                        line = c.readline()
                    if line != b"END" or got != value_for(i, value_size).encode():
                        bad.append(f"{key_for(i)}: {got[:80] if got else line[:80]!r}")
    finally:
        c.close()
    return bad


# ---------------------------------------------------------------- one system

def measure(system, args, logdir, n):
    vs = args.value_size
    port = free_port()
    # Build every request before the clock starts.
    t_build = time.monotonic()
    if system in ("kvcache", "baseline"):
        batch = kvcache_batch_size(n, vs, args.kvcache_ttl)
        chunks, reader = kvcache_chunks(n, vs, batch, args.kvcache_ttl), kvcache_replies
        ttl = f", ttl {args.kvcache_ttl} s" if args.kvcache_ttl else ""
        detail = f"/mput x{batch} items{ttl}, {args.conns} conns"
    elif system == "redis":
        chunks, reader = redis_chunks(n, vs), redis_replies
        detail = f"RESP SET, 1000/chunk, {args.conns} conns"
    else:
        chunks, reader = memcached_chunks(n, vs), memcached_replies
        detail = f"text set, 1000/chunk, {args.conns} conns"
    build_s = time.monotonic() - t_build
    sent_bytes = sum(len(ch.data) for ch in chunks)

    if system in ("kvcache", "baseline"):
        binary = args.kvcache if system == "kvcache" else args.baseline
        srv = start_kvcache(binary, port, logdir, args.kvcache_memory_limit, threads=args.kvcache_threads)
    elif system == "redis":
        srv = start_redis(port, logdir)
    else:
        srv = start_memcached(port, logdir)
    res = {"system": system, "pid": srv.pid, "detail": detail, "failures": []}
    try:
        time.sleep(0.2)  # let the allocator settle after the readiness probe
        res["rss_start"] = rss_bytes(srv.pid)
        t0 = time.monotonic()
        acked = run_pipelined(port, split(chunks, args.conns), reader, t0 + args.timeout, window=args.window)
        res["fill_s"] = time.monotonic() - t0
        del chunks
        if acked != n:
            res["failures"].append(f"{acked} of {n} entries acknowledged")
        if not srv.alive():
            raise BenchError(f"{system} died during the fill:\n{srv.log_tail()}")
        bad = verify_sample("kvcache" if system == "baseline" else system, port, n, vs, sample=args.verify)
        if bad:
            res["failures"].append(f"{len(bad)} of {min(args.verify, n)} sampled keys wrong, e.g. {bad[:3]}")
        # The server's own view: entry count (and memory accounting).
        c = Conn(port, timeout=10)
        try:
            if system in ("kvcache", "baseline"):
                m = kv_metrics(port, c)
                res["entries"] = int(m.get("kvcache_entries", -1))
                res["memory_used"] = int(m.get("kvcache_memory_used_bytes", 0))
                res["evictions"] = int(m.get("kvcache_evictions_total", 0))
                if res["evictions"]:
                    res["failures"].append(f"kvcache evicted {res['evictions']} entries (raise --kvcache-memory-limit)")
            elif system == "redis":
                res["entries"] = int(redis_cmd(c, "DBSIZE"))
                info = redis_cmd(c, "INFO", "memory").decode()
                mem = dict(l.split(":", 1) for l in info.split("\r\n") if ":" in l)
                res["memory_used"] = int(mem.get("used_memory", 0))
                res["allocator"] = mem.get("mem_allocator", "?")
            else:
                st = memcached_stats(c)
                res["entries"] = int(st.get("curr_items", -1))
                res["memory_used"] = int(st.get("bytes", 0))
                res["evictions"] = int(st.get("evictions", 0))
        finally:
            c.close()
        if res["entries"] != n:
            res["failures"].append(f"server reports {res['entries']} entries, expected {n}")
        time.sleep(0.2)
        res["rss_end"] = rss_bytes(srv.pid)
        res["rss_peak"] = rss_bytes(srv.pid, "VmHWM")
    finally:
        srv.stop()
    res["build_s"] = build_s
    res["payload"] = sum(len(key_for(i)) for i in range(n)) / n + vs
    res["sent_mib"] = sent_bytes / MIB
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entries", default="1000000",
                   help="entries, or a comma list of fill points each measured on a fresh instance")
    p.add_argument("--value-size", type=int, default=128, help="bytes per value (0..256)")
    p.add_argument("--systems", default="kvcache,redis,memcached",
                   help="comma list of kvcache,baseline,redis,memcached (baseline: --baseline's kvcache binary)")
    p.add_argument("--conns", type=int, default=2, help="parallel keep-alive connections (threads), 1..8")
    p.add_argument("--window", type=int, default=4, help="pipelined chunks in flight per connection")
    p.add_argument("--verify", type=int, default=1000, help="random keys read back per system")
    p.add_argument("--timeout", type=float, default=600, help="seconds allowed for each fill")
    p.add_argument("--kvcache", default=DEFAULT_KVCACHE, help="kvcache binary")
    p.add_argument("--baseline", default="/work/baseline/build/kvcache", help="a second kvcache binary (system baseline)")
    p.add_argument("--kvcache-threads", type=int, default=2)
    p.add_argument("--kvcache-memory-limit", default="8G")
    p.add_argument("--kvcache-ttl", type=int, default=0,
                   help="seconds of TTL on every kvcache entry (0: none): the price of an expiry")
    args = p.parse_args()
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if not systems or any(s not in ("kvcache", "baseline", "redis", "memcached") for s in systems):
        p.error("--systems: kvcache, baseline, redis, memcached")
    try:
        points = [int(x.replace("_", "")) for x in args.entries.split(",") if x.strip()]
    except ValueError:
        p.error("--entries: a number or a comma list of numbers")
    if not points or min(points) < 1 or not 0 <= args.value_size <= 256:
        p.error("--entries >= 1 and --value-size 0..256")
    if not 1 <= args.conns <= 8 or not 1 <= args.window <= 64 or args.verify < 1:
        p.error("--conns 1..8, --window 1..64, --verify >= 1")

    failed = False
    tables = []
    for n in points:
        results = []
        with tempfile.TemporaryDirectory(prefix="kv-density-") as logdir:
            for system in systems:
                print(f"density: {system}: {n} entries x {args.value_size} B ...", file=sys.stderr, flush=True)
                try:
                    r = measure(system, args, logdir, n)
                except RuntimeError as e:  # could not start
                    print(f"density: {system}: {e}", file=sys.stderr)
                    return 2
                except BenchError as e:
                    print(f"density: {system}: FAILED: {e}", file=sys.stderr)
                    failed = True
                    continue
                for f in r["failures"]:
                    print(f"density: {system}: FAILED: {f}", file=sys.stderr)
                failed |= bool(r["failures"])
                results.append(r)
                print(f"density: {system}: filled in {r['fill_s']:.2f}s ({r['sent_mib']:.0f} MiB of requests, "
                      f"built in {r['build_s']:.1f}s), verify {'ok' if not r['failures'] else 'FAILED'}",
                      file=sys.stderr, flush=True)
        print_table(args, n, results)
        tables.append((n, results))
    if len(points) > 1:
        print_summary(tables, systems)
    if failed:
        print("\nRESULT: FAIL (see stderr)")
        return 1
    return 0


def print_table(args, n, results):
    avg_key = sum(len(key_for(i)) for i in range(n)) / n
    payload = avg_key + args.value_size
    print(f"\n### Memory density: {n:,} entries, keys key:0..key:{n - 1} (avg {avg_key:.2f} B), "
          f"values {args.value_size} B\n")
    print("| system | entries | RSS start MiB | RSS end MiB | RSS B/entry | payload B/entry "
          "| overhead B/entry | peak/end RSS | fill s | entries/s | verify |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in results:
        per = (r["rss_end"] - r["rss_start"]) / n
        print(f"| {r['system']} | {n:,} | {r['rss_start'] / MIB:.1f} | {r['rss_end'] / MIB:.1f} | {per:.1f} "
              f"| {payload:.1f} | {per - payload:.1f} | {r['rss_peak'] / r['rss_end']:.3f} | {r['fill_s']:.2f} "
              f"| {n / r['fill_s']:,.0f} | {'ok' if not r['failures'] else 'FAIL'} |")
    print()
    for r in results:
        delta = r["rss_end"] - r["rss_start"]
        if r["system"] in ("kvcache", "baseline"):
            mu = r.get("memory_used", 0)
            ratio = f"{delta / mu:.3f}" if mu else "n/a"
            print(f"- {r['system']}: kvcache_memory_used_bytes = {mu:,} ({mu / n:.1f} B/entry); "
                  f"RSS delta / memory_used = {ratio}; entries = {r['entries']:,}")
        elif r["system"] == "redis":
            print(f"- redis: used_memory = {r['memory_used']:,} ({r['memory_used'] / n:.1f} B/entry, "
                  f"allocator {r.get('allocator')}); dbsize = {r['entries']:,}")
        else:
            print(f"- memcached: stats bytes = {r['memory_used']:,} ({r['memory_used'] / n:.1f} B/entry); "
                  f"curr_items = {r['entries']:,}; evictions = {r.get('evictions', 0)}")
    print(f"- fill: {', '.join(r['system'] + ': ' + r['detail'] for r in results)}; "
          f"{os.cpu_count()} CPUs, client on the same host")


def print_summary(tables, systems):
    """Overhead B/entry of every system at every fill point, and each one's median."""
    print("\n### Overhead per entry (B) at each fill point\n")
    print("| entries | " + " | ".join(systems) + " |")
    print("| ---: | " + " | ".join("---:" for _ in systems) + " |")
    per_system = {s: [] for s in systems}
    for n, results in tables:
        by = {r["system"]: r for r in results}
        cells = []
        for s in systems:
            if s in by:
                r = by[s]
                o = (r["rss_end"] - r["rss_start"]) / n - r["payload"]
                per_system[s].append(o)
                cells.append(f"{o:.1f}")
            else:
                cells.append("-")
        print(f"| {n:,} | " + " | ".join(cells) + " |")
    print("| median | " + " | ".join(f"{statistics.median(v):.1f}" if v else "-" for v in per_system.values()) + " |")


if __name__ == "__main__":
    sys.exit(main())

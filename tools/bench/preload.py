#!/usr/bin/python3
"""Preload keys into kvcache fast: pipelined raw HTTP/1.1 over a few keep-alive sockets.

Keys are <prefix><i> for i in [start, start+keys), values are VALUE_LEN x's, i.e. exactly
what mixed.lua/get.lua/put.lua use, so a later get of any of those keys is a hit.

Mode "mput" (default) sends POST /mput batches sized to stay under the 64 KiB body
limit (max 1000 items); if the server rejects /mput (non-200 on the first batch) it falls back
to mode "put" (pipelined POST /put). Bounded by --timeout seconds and by the key count.
Loopback only.

  /usr/bin/python3 tools/bench/preload.py --port 7171 --keys 2000000
Exit status: 0 ok, 1 errors/timeout, 2 usage.
"""
import argparse
import json
import multiprocessing as mp
import random
import socket
import sys
import time

BODY_LIMIT = 65536


class Conn:
    def __init__(self, host, port, timeout):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def read_response(self):
        """Return (status, body) of the next response; raises on EOF."""
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i >= 0:
                break
            chunk = self.sock.recv(262144)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buf += chunk
        head = self.buf[:i].decode("latin-1")
        lines = head.split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = 0
        for line in lines[1:]:
            name, _, val = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(val.strip())
        need = i + 4 + length
        while len(self.buf) < need:
            chunk = self.sock.recv(262144)
            if not chunk:
                raise ConnectionError("server closed the connection mid-body")
            self.buf += chunk
        body = self.buf[i + 4:need]
        self.buf = self.buf[need:]
        return status, body

    def close(self):
        self.sock.close()


def req(method, path, body=b""):
    if body:
        return (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


def build_requests(mode, prefix, value, lo, hi, batch):
    """Yield (raw_request, n_keys) for keys [lo, hi)."""
    if mode == "mput":
        for b in range(lo, hi, batch):
            items = ",".join(f'{{"key":"{prefix}{i}","value":"{value}"}}'
                             for i in range(b, min(b + batch, hi)))
            yield req("POST", "/mput", ('{"items":[' + items + "]}").encode()), min(b + batch, hi) - b
    else:
        for i in range(lo, hi):
            yield req("POST", "/put", f'{{"key":"{prefix}{i}","value":"{value}"}}'.encode()), 1


def worker(args, lo, hi, mode, deadline, out):
    """Store keys [lo, hi); put (stored, failed, error_text) in out."""
    value = "x" * args.value_len
    window = args.window if mode == "put" else max(2, args.window // 32)
    stored = failed = 0
    err = ""
    try:
        c = Conn(args.host, args.port, 30)
        gen = build_requests(mode, args.prefix, value, lo, hi, args.batch)
        pending = []  # n_keys of in-flight requests, in order
        done = False
        while not done or pending:
            if time.monotonic() > deadline:
                err = "timeout"
                break
            out_bytes = []
            while not done and len(pending) < window:
                try:
                    r, n = next(gen)
                except StopIteration:
                    done = True
                    break
                out_bytes.append(r)
                pending.append(n)
            if out_bytes:
                c.sock.sendall(b"".join(out_bytes))
            # read half the window before refilling (keeps the pipe full)
            for _ in range(max(1, len(pending) // 2) if not done else len(pending)):
                status, body = c.read_response()
                n = pending.pop(0)
                if status == 200:
                    stored += n
                else:
                    failed += n
                    if not err:
                        err = f"HTTP {status}: {body[:200]!r}"
        c.close()
    except Exception as e:  # noqa: BLE001 - report, don't crash the bench
        err = f"{type(e).__name__}: {e}"
    out.put((stored, failed, err))


def mput_supported(args):
    value = "x" * args.value_len
    try:
        c = Conn(args.host, args.port, 10)
        body = ('{"items":[{"key":"%s%d","value":"%s"}]}' % (args.prefix, args.start, value)).encode()
        c.sock.sendall(req("POST", "/mput", body))
        status, _ = c.read_response()
        c.close()
        return status == 200
    except Exception:  # noqa: BLE001
        return False


def verify(args, n):
    """GET n random preloaded keys; return number of hits."""
    rnd = random.Random(12345)
    c = Conn(args.host, args.port, 10)
    keys = [rnd.randrange(args.start, args.start + args.keys) for _ in range(n)]
    c.sock.sendall(b"".join(req("GET", f"/get?key={args.prefix}{k}") for k in keys))
    hits = 0
    for _ in keys:
        status, body = c.read_response()
        hits += status == 200 and json.loads(body).get("value") == "x" * args.value_len
    c.close()
    return hits


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7171)
    p.add_argument("--keys", type=int, default=5000)
    p.add_argument("--start", type=int, default=1)
    p.add_argument("--prefix", default="key:")
    p.add_argument("--value-len", type=int, default=128)
    p.add_argument("--mode", choices=["mput", "put"], default="mput")
    p.add_argument("--batch", type=int, default=0, help="items per /mput (0: fit in 64 KiB, max 1000)")
    p.add_argument("--conns", type=int, default=2, help="parallel connections (processes)")
    p.add_argument("--window", type=int, default=128, help="pipelined requests in flight per connection")
    p.add_argument("--timeout", type=float, default=300, help="give up after this many seconds")
    p.add_argument("--verify", type=int, default=200, help="GET this many random keys afterwards (0: skip)")
    args = p.parse_args()
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        p.error("loopback targets only")
    if args.keys < 1 or args.conns < 1 or args.window < 1:
        p.error("--keys, --conns, --window must be >= 1")
    if args.batch <= 0:
        item = len('{"key":"","value":""},') + len(args.prefix) + len(str(args.start + args.keys)) + args.value_len
        args.batch = max(1, min(1000, (BODY_LIMIT - 4096) // item))

    t0 = time.monotonic()
    deadline = t0 + args.timeout
    mode = args.mode
    if mode == "mput" and not mput_supported(args):
        print("preload: /mput not accepted, falling back to pipelined /put", file=sys.stderr)
        mode = "put"
    conns = min(args.conns, args.keys)
    step = (args.keys + conns - 1) // conns
    out = mp.Queue()
    procs = []
    for k in range(conns):
        lo = args.start + k * step
        hi = min(args.start + args.keys, lo + step)
        pr = mp.Process(target=worker, args=(args, lo, hi, mode, deadline, out))
        pr.start()
        procs.append(pr)
    results = [out.get(timeout=args.timeout + 60) for _ in procs]
    for pr in procs:
        pr.join(10)
    stored = sum(r[0] for r in results)
    failed = sum(r[1] for r in results)
    errs = [r[2] for r in results if r[2]]
    dt = time.monotonic() - t0
    print(f"preload: mode={mode} batch={args.batch if mode == 'mput' else 1} keys={args.keys} "
          f"stored={stored} failed={failed} seconds={dt:.1f} keys_per_s={stored / dt if dt else 0:.0f}")
    ok = stored == args.keys and not errs
    for e in errs:
        print(f"preload: error: {e}", file=sys.stderr)
    if args.verify and ok:
        n = min(args.verify, args.keys)
        hits = verify(args, n)
        print(f"preload: verify {hits}/{n} random keys hit")
        # under eviction (--memory-limit) misses are legitimate; the caller decides
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/python3
"""Idle TLS connections against one kvcache: RSS against --memory-limit.

Starts kvcache with --tls-cert (an ECDSA P-256 pair made here) and
--memory-limit LIMIT; with --fill, first fills the store to its limit (mput
over TLS until it evicts, then as much again); opens N TLS connections that
each complete the handshake and one keep-alive GET /health, then holds them
idle, and reports the server's peak and final RSS against the limit, how
many of the held connections are still open (the server closes the
longest-idle ones when the connection buffer budget cannot pay for a new
one) and /metrics (buffer bytes charged, idle closes, refusals).

With --partial each connection instead sends half a request and stops
(the server's --read-timeout is raised to 600 s): none is idle, so once the
budget is spent new connections are refused at accept.

  tools/bench/tls_idle.py [--connections 10000] [--memory-limit 256M] [--fill] [--partial] [--kvcache build/kvcache]

Loopback only; every wait is bounded; only the kvcache started here is stopped.
"""

import argparse
import os
import json
import re
import resource
import select
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def rss_kb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def metrics(port, ctx):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return s.makefile("rb").read().decode(errors="replace")


def metric(text, name):
    m = re.search(rf"^{name} (\S+)", text, re.M)
    return float(m.group(1)) if m else 0.0


def fill(port, ctx, deadline):
    """mput 200-byte values over one keep-alive TLS connection until the store
    evicts, then as many again: a full store, its oldest keys evicted."""
    value = "v" * 200
    sent = 0
    full_at = None
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # else Nagle and delayed ACKs: 40 ms a request
        reader = s.makefile("rb")
        batch = 0
        while time.monotonic() < deadline:
            items = [{"key": f"fill:{sent + i}", "value": value} for i in range(250)]
            body = json.dumps({"items": items}, separators=(",", ":")).encode()
            s.sendall(b"POST /mput HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            status = reader.readline()
            length = 0
            for line in iter(reader.readline, b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            reader.read(length)
            if not status.startswith(b"HTTP/1.1 200"):
                sys.exit(f"fill: {status!r}")
            sent += len(items)
            batch += 1
            if full_at is None and batch % 100 == 0 and metric(metrics(port, ctx), "kvcache_evictions_total") > 0:
                full_at = sent
            if full_at is not None and sent >= 2 * full_at:
                return sent
    sys.exit(f"fill: not full after {sent} keys")


def still_open(conns):
    """The held connections the server has not closed (a closed one has its close_notify and FIN to read)."""
    poller = select.poll()
    by_fd = {}
    for s in conns:
        poller.register(s, select.POLLIN)
        by_fd[s.fileno()] = s
    closed = 0
    for fd, _ in poller.poll(0):
        s = by_fd[fd]
        s.setblocking(False)
        try:  # readable: session tickets not read yet, or the server's close
            closed += s.recv(1) == b""
        except ssl.SSLWantReadError:
            pass
        except OSError:
            closed += 1
    return len(conns) - closed


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument("--memory-limit", default="256M")
    ap.add_argument("--kvcache", default=str(REPO / "build" / "kvcache"))
    ap.add_argument("--port", type=int, default=17191)
    ap.add_argument("--fill", action="store_true", help="fill the store to its limit first")
    ap.add_argument("--partial", action="store_true", help="each connection sends half a request and stops")
    args = ap.parse_args()
    limit_bytes = int(args.memory_limit[:-1]) << {"K": 10, "M": 20, "G": 30}[args.memory_limit[-1].upper()]

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, args.connections + 1000)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < args.connections + 100:
        sys.exit(f"open files limit {hard} is too low for {args.connections} connections")

    tmp = Path(tempfile.mkdtemp(prefix="kvcache-tls-idle-"))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", str(tmp / "key.pem"), "-out", str(tmp / "cert.pem")], check=True, capture_output=True)
    log = open(tmp / "kvcache.log", "wb")
    server = subprocess.Popen([args.kvcache, "--bind", "127.0.0.1", "--port", str(args.port), "--threads", "2",
                               "--memory-limit", args.memory_limit, "--max-connections", str(args.connections + 100),
                               "--idle-timeout", "600", "--read-timeout", "600" if args.partial else "2",
                               "--tls-cert", str(tmp / "cert.pem"),
                               "--tls-key", str(tmp / "key.pem")], stdout=subprocess.DEVNULL, stderr=log)
    ctx = ssl.create_default_context(cafile=str(tmp / "cert.pem"))
    conns = []
    try:
        for _ in range(100):
            try:
                metrics(args.port, ctx)
                break
            except OSError:
                time.sleep(0.1)
        filled = fill(args.port, ctx, time.monotonic() + 300) if args.fill else 0
        rss_start = rss_kb(server.pid)
        rss_peak = rss_start
        started = time.monotonic()
        refused_seen = 0
        deadline = started + 600
        for i in range(args.connections):
            if time.monotonic() > deadline:
                sys.exit(f"only {i} connections in 600 s")
            raw = socket.create_connection(("127.0.0.1", args.port), timeout=10)
            try:
                s = ctx.wrap_socket(raw, server_hostname="localhost")
            except OSError:  # refused at accept
                raw.close()
                refused_seen += 1
                continue
            if args.partial:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            else:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                if not s.recv(4096).startswith(b"HTTP/1.1 200"):
                    sys.exit(f"connection {i}: no 200")
            conns.append(s)
            if i % 100 == 0:
                rss_peak = max(rss_peak, rss_kb(server.pid))
        opened = time.monotonic() - started
        time.sleep(2)
        rss = rss_kb(server.pid)
        rss_peak = max(rss_peak, rss)
        open_now = still_open(conns)
        if args.partial:
            # No room for another connection until these go; the counters stay.
            for s in conns:
                s.close()
            conns = []
        text = ""
        for _ in range(50):
            try:
                text = metrics(args.port, ctx)
                break
            except OSError:
                time.sleep(0.1)
        handshakes = sum(float(v) for v in re.findall(r"^kvcache_tls_handshakes_total\{[^}]*\} (\S+)", text, re.M))
        if args.fill:
            print(f"store filled: {filled:,} keys written, {metric(text, 'kvcache_entries'):,.0f} entries, "
                  f"{metric(text, 'kvcache_memory_used_bytes') / 2**20:.1f} MiB of a "
                  f"{metric(text, 'kvcache_store_budget_bytes') / 2**20:.1f} MiB store budget")
        print(f"{args.connections} TLS connections opened and held {'with half a request' if args.partial else 'idle'} (in {opened:.1f} s, {handshakes:.0f} handshakes): "
              f"RSS {rss_start / 1024:.1f} MiB before them -> {rss / 1024:.1f} MiB "
              f"= {rss * 1024 / limit_bytes:.3f}x --memory-limit {args.memory_limit} "
              f"(peak {rss_peak * 1024 / limit_bytes:.3f}x); still open: {open_now}; "
              f"closed by the server as the longest idle: {metric(text, 'kvcache_connections_idle_closed_total'):.0f}; "
              f"refused: {metric(text, 'kvcache_connections_refused_total'):.0f} ({refused_seen} seen by the client); charged to the connection buffer "
              f"budget: {metric(text, 'kvcache_connection_buffer_bytes') / 2**20:.1f} of "
              f"{metric(text, 'kvcache_connection_buffer_budget_bytes') / 2**20:.1f} MiB")
    finally:
        for s in conns:
            s.close()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""Idle TLS connections against one kvcache: RSS against --memory-limit.

Starts kvcache with --tls-cert (an ECDSA P-256 pair made here) and
--memory-limit LIMIT, opens N TLS connections that each complete the
handshake and one keep-alive GET /health, then holds them idle and reads the
server's RSS and /metrics (connection buffer bytes charged, TLS handshakes).

  tools/bench/tls_idle.py [--connections 10000] [--memory-limit 256M] [--kvcache build/kvcache]

Loopback only; every wait is bounded; only the kvcache started here is stopped.
"""

import argparse
import os
import re
import resource
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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument("--memory-limit", default="256M")
    ap.add_argument("--kvcache", default=str(REPO / "build" / "kvcache"))
    ap.add_argument("--port", type=int, default=17191)
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
                               "--idle-timeout", "600", "--tls-cert", str(tmp / "cert.pem"),
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
        rss_start = rss_kb(server.pid)
        started = time.monotonic()
        deadline = started + 600
        for i in range(args.connections):
            if time.monotonic() > deadline:
                sys.exit(f"only {i} connections in 600 s")
            raw = socket.create_connection(("127.0.0.1", args.port), timeout=10)
            s = ctx.wrap_socket(raw, server_hostname="localhost")
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            if not s.recv(4096).startswith(b"HTTP/1.1 200"):
                sys.exit(f"connection {i}: no 200")
            conns.append(s)
        opened = time.monotonic() - started
        time.sleep(2)
        rss = rss_kb(server.pid)
        text = metrics(args.port, ctx)
        charged = re.search(r"^kvcache_connection_buffer_bytes (\S+)", text, re.M)
        handshakes = sum(float(v) for v in re.findall(r"^kvcache_tls_handshakes_total\{[^}]*\} (\S+)", text, re.M))
        print(f"{args.connections} idle TLS connections (opened in {opened:.1f} s, {handshakes:.0f} handshakes): "
              f"RSS {rss_start / 1024:.1f} MiB at start -> {rss / 1024:.1f} MiB "
              f"= {rss * 1024 / limit_bytes:.2f}x --memory-limit {args.memory_limit} "
              f"({(rss - rss_start) * 1024 / args.connections:,.0f} B per connection); "
              f"charged to the connection buffer budget: {float(charged.group(1)) / 2**20 if charged else 0:.1f} MiB")
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

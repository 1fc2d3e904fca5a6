"""Hostile clients: slowloris, pipelining without reading, 10,000 idle
connections, --max-connections, half-closed and resetting clients, invalid
bytes at every position of a request, SIGTERM under wrk load, and running
out of file descriptors.

Every server here gets a short --read-timeout so the file stays fast; every
loop is bounded by a deadline and an iteration count. Timing assertions have
generous margins (the test box is shared and has 2 cores) and nothing asserts
on throughput.
"""

import json
import os
import random
import re
import resource
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest
import requests

from helpers import (
    KVCACHE_BIN,
    OK_HEALTH,
    OK_PUT,
    RawConn,
    SANITIZER,
    SANITIZER_SLOWDOWN,
    build_request,
    compact,
    error_body,
    free_port,
    get_body,
    memory_bound,
    require_binary,
    rss_kb,
    unique,
    wait_healthy,
)

READ_TIMEOUT = 1.0  # --read-timeout of the servers in this file (seconds)


# ---------------------------------------------------------------------------
# helpers


def raise_nofile():
    """Raise this process's soft RLIMIT_NOFILE to the hard limit; returns (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def abort(sock):
    """Close with SO_LINGER 0: the kernel sends RST and keeps no TIME_WAIT."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def connect_small_rcvbuf(port, rcvbuf=4096, timeout=5.0):
    """A client socket whose receive buffer is set before connect, so the
    window stays small and the server's backpressure really kicks in."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.settimeout(timeout)
    s.connect(("127.0.0.1", port))
    return s


STATUS_LINE = re.compile(rb"^HTTP/1\.[01] (\d{3})(?: [^\r\n]*)?$")


class ResponseParser:
    """Incremental parser of a stream of responses (Content-Length framing,
    which is all kvcache sends). feed() returns the complete responses as
    (status, headers-dict-lowercase, body); raises AssertionError on garbage."""

    MAX_HEAD = 16 * 1024

    def __init__(self):
        self.buf = b""

    def feed(self, data):
        self.buf += data
        out = []
        for _ in range(1_000_000):
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                assert len(self.buf) <= self.MAX_HEAD, f"response head too large: {self.buf[:200]!r}"
                return out
            lines = self.buf[:end].split(b"\r\n")
            m = STATUS_LINE.match(lines[0])
            assert m, f"bad status line {lines[0][:200]!r}"
            headers = {}
            for line in lines[1:]:
                assert b":" in line, f"bad header line {line!r}"
                k, v = line.split(b":", 1)
                headers[k.strip().lower().decode("latin-1")] = v.strip().decode("latin-1")
            status = int(m.group(1))
            if 100 <= status < 200:
                out.append((status, headers, b""))
                self.buf = self.buf[end + 4:]
                continue
            assert "content-length" in headers, f"response without Content-Length: {lines!r}"
            n = int(headers["content-length"])
            if len(self.buf) < end + 4 + n:
                return out
            body = self.buf[end + 4:end + 4 + n]
            self.buf = self.buf[end + 4 + n:]
            out.append((status, headers, body))
        raise AssertionError("too many responses in one feed")


def check_well_formed(status, headers, body):
    """A final response must be 200 or 4xx/5xx with a JSON body of the documented shape."""
    if 100 <= status < 200:
        return
    assert status == 200 or 400 <= status <= 599, f"unexpected status {status}"
    assert headers.get("content-type") == "application/json", (status, headers)
    doc = json.loads(body)
    assert isinstance(doc, dict), body
    if status == 200:
        assert doc.get("status") == "OK", body
    else:
        assert doc.get("status") == "ERROR" and isinstance(doc.get("message"), str) and doc["message"], body


class PromptClient(threading.Thread):
    """Does put/get requests in a keep-alive loop until stopped and records
    every latency; an error or a slow answer is recorded, never raised."""

    def __init__(self, port, max_requests=100_000):
        super().__init__(daemon=True)
        self.port = port
        self.max_requests = max_requests
        self.stop_event = threading.Event()
        self.latencies = []
        self.errors = []

    def run(self):
        key = unique("prompt")
        conn = None
        try:
            conn = RawConn(self.port, timeout=5)
            for i in range(self.max_requests):
                if self.stop_event.is_set():
                    break
                start = time.monotonic()
                if i % 2 == 0:
                    r = conn.request("POST", "/put", compact({"key": key, "value": f"v{i}"}))
                    ok = r.status == 200 and r.body == OK_PUT
                else:
                    r = conn.request("GET", f"/get?key={key}")
                    ok = r.status == 200 and r.body == get_body(key, f"v{i - 1}")
                self.latencies.append(time.monotonic() - start)
                if not ok:
                    self.errors.append(f"request {i}: {r!r}")
                    break
                self.stop_event.wait(0.02)
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.errors.append(f"{type(e).__name__}: {e}")
        finally:
            if conn is not None:
                conn.close()

    def finish(self, timeout=10):
        self.stop_event.set()
        self.join(timeout)
        assert not self.is_alive(), "prompt client thread did not stop"

    def assert_prompt(self, limit=1.0, min_requests=5):
        # A stall detector, not a speed test: a sanitizer build runs several
        # times slower, so the bound widens with it.
        limit *= SANITIZER_SLOWDOWN
        assert not self.errors, f"normal client failed: {self.errors[:3]}"
        assert len(self.latencies) >= min_requests, f"normal client made only {len(self.latencies)} requests"
        worst = max(self.latencies)
        assert worst < limit, (
            f"normal client waited {worst:.3f}s for an answer "
            f"(median {sorted(self.latencies)[len(self.latencies) // 2]:.4f}s over {len(self.latencies)} requests)"
        )


def assert_healthy(srv):
    assert srv.alive(), srv.describe()
    with RawConn(srv.port, timeout=5) as c:
        assert c.request("GET", "/health", timeout=5).body == OK_HEALTH
        key = unique()
        assert c.request("POST", "/put", compact({"key": key, "value": "ok"}), timeout=5).body == OK_PUT
        assert c.request("GET", f"/get?key={key}", timeout=5).body == get_body(key, "ok")


def metric(srv, name):
    """One sample of /metrics, e.g. metric(srv, 'kvcache_requests_total{endpoint="get",code="200"}')."""
    r = requests.get(f"{srv.url}/metrics", timeout=5)
    m = re.search(rf"^{re.escape(name)} (\d+)$", r.text, re.M)
    return int(m.group(1)) if m else 0


@pytest.fixture(scope="module", autouse=True)
def _nofile():
    """Several tests here hold thousands of sockets."""
    raise_nofile()


# ---------------------------------------------------------------------------
# slowloris


def test_slowloris_connections_are_dropped_at_the_read_timeout(start_server):
    srv = start_server("--read-timeout", "1s", "--log-level", "error")
    n_conns = 300
    payload = b"GET /get?key=" + b"a" * 4000  # never finishes within the dribble
    rng = random.Random(7)
    sel = selectors.DefaultSelector()
    conns = []
    prompt = PromptClient(srv.port)
    try:
        for i in range(n_conns):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            st = {"i": i, "sock": s, "sent": 0, "first": None, "next": 0.0, "closed": None, "data": b""}
            conns.append(st)
            sel.register(s, selectors.EVENT_READ, st)
        prompt.start()
        begin = time.monotonic()
        for st in conns:  # stagger the first bytes over ~150 ms
            st["next"] = begin + rng.uniform(0, 0.15)
        deadline = begin + READ_TIMEOUT + 3.0 * SANITIZER_SLOWDOWN + 1.0
        open_count = n_conns
        for _ in range(1_000_000):
            now = time.monotonic()
            if open_count == 0 or now > deadline:
                break
            for st in conns:
                if st["closed"] is None and now >= st["next"]:
                    try:
                        st["sock"].send(payload[st["sent"]:st["sent"] + 1])
                        st["sent"] += 1
                        if st["first"] is None:
                            st["first"] = now
                    except (BlockingIOError, InterruptedError):
                        pass
                    except OSError:  # EPIPE / ECONNRESET: the server dropped us
                        st["closed"] = now
                        sel.unregister(st["sock"])
                        open_count -= 1
                        continue
                    st["next"] = now + rng.uniform(0.1, 0.2)
            for key, _ in sel.select(timeout=0.01):
                st = key.data
                try:
                    chunk = st["sock"].recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    chunk = b""
                if chunk:
                    st["data"] += chunk
                    if len(st["data"]) < 4096:
                        continue
                st["closed"] = time.monotonic()
                sel.unregister(st["sock"])
                open_count -= 1
        prompt.finish()
    finally:
        prompt.stop_event.set()
        sel.close()
        for st in conns:
            abort(st["sock"])

    still_open = [st["i"] for st in conns if st["closed"] is None]
    assert not still_open, f"{len(still_open)} slowloris connections still open at the deadline"
    lifetimes = sorted(st["closed"] - st["first"] for st in conns if st["first"] is not None)
    assert len(lifetimes) == n_conns
    # "About the read timeout": not before it (minus clock granularity), not far after it.
    assert lifetimes[0] >= READ_TIMEOUT - 0.25, f"dropped after {lifetimes[0]:.2f}s, before the read timeout"
    assert lifetimes[-1] <= READ_TIMEOUT + 3.0 * SANITIZER_SLOWDOWN, f"a slowloris connection lived {lifetimes[-1]:.2f}s"
    for st in conns:
        if st["data"]:  # a 408 or nothing at all, then the close
            assert st["data"].startswith(b"HTTP/1.1 408 "), st["data"][:200]
            assert st["data"].endswith(error_body("request timeout")), st["data"][:400]
    prompt.assert_prompt(limit=1.0)
    assert_healthy(srv)


# ---------------------------------------------------------------------------
# pipelining without reading


N_PIPELINED = 10_000
VALUE_LEN = 256


def pipelined_value(i):
    return f"{i:06d}-" + "v" * (VALUE_LEN - 7)


def prefill_pipelined_keys(srv, prefix):
    with requests.Session() as s:
        for start in range(0, N_PIPELINED, 200):  # bodies are limited to 64 KiB
            items = [{"key": f"{prefix}{i}", "value": pipelined_value(i)} for i in range(start, start + 200)]
            r = s.post(f"{srv.url}/mput", data=compact({"items": items}), timeout=10)
            assert r.status_code == 200, r.text


N_MGET, MGET_KEYS = 2000, 100  # 2000 responses of ~26 KB: far beyond any kernel socket buffer


def pipelined_case(prefix, kind):
    """(requests, expected (status, body) list, metrics endpoint) for one kind of pipeline."""
    if kind == "get":
        reqs = [build_request("GET", f"/get?key={prefix}{i}") for i in range(N_PIPELINED)]
        expected = [(200, get_body(f"{prefix}{i}", pipelined_value(i))) for i in range(N_PIPELINED)]
    elif kind == "put":
        reqs = [build_request("POST", "/put", compact({"key": f"{prefix}{i}", "value": pipelined_value(i)}))
                for i in range(N_PIPELINED)]
        expected = [(200, OK_PUT)] * N_PIPELINED
    else:
        reqs, expected = [], []
        for j in range(N_MGET):
            idx = [(j * MGET_KEYS + t) % N_PIPELINED for t in range(MGET_KEYS)]
            reqs.append(build_request("POST", "/mget", compact({"keys": [f"{prefix}{i}" for i in idx]})))
            expected.append((200, compact({"status": "OK", "values": [pipelined_value(i) for i in idx]})))
    return reqs, expected, kind


def pipeline_without_reading(srv, reqs, endpoint, stall_seconds):
    """Pipelines reqs without reading a byte; stalls stall_seconds, sampling
    the server's RSS and running a PromptClient; then reads everything.
    Returns a dict: baseline_kb, peak_kb, prompt, responses, error,
    answered (requests the server answered during the stall)."""
    data = b"".join(reqs)
    counter = f'kvcache_requests_total{{endpoint="{endpoint}",code="200"}}'
    answered_before = metric(srv, counter)
    baseline = rss_kb(srv.proc.pid)
    peak = baseline
    sock = connect_small_rcvbuf(srv.port)
    sock.setblocking(False)
    sent = 0
    # 1. send until the server stops taking bytes or all is sent
    stalled_since = None
    start = time.monotonic()
    for _ in range(1_000_000):
        if sent == len(data) or time.monotonic() - start > 15:
            break
        try:
            sent += sock.send(data[sent:sent + 65536])
            stalled_since = None
        except (BlockingIOError, InterruptedError):
            now = time.monotonic()
            stalled_since = stalled_since or now
            if now - stalled_since > 0.5:
                break
            time.sleep(0.01)
        peak = max(peak, rss_kb(srv.proc.pid))
    # 2. stall: RSS stays flat and others are served
    prompt = PromptClient(srv.port)
    prompt.start()
    stall_end = time.monotonic() + stall_seconds
    for _ in range(10_000):
        if time.monotonic() >= stall_end:
            break
        peak = max(peak, rss_kb(srv.proc.pid))
        time.sleep(0.05)
    prompt.finish()
    # the prompt client's own puts and gets are counted too
    answered = metric(srv, counter) - answered_before - (len(prompt.latencies) + 1) // 2
    # 3. read everything, sending the rest as the server takes it
    parser = ResponseParser()
    responses = []
    error = None
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
    deadline = time.monotonic() + 60
    try:
        for _ in range(10_000_000):
            if len(responses) >= len(reqs) or time.monotonic() > deadline:
                break
            if sent == len(data):
                sel.modify(sock, selectors.EVENT_READ)
            for _key, events in sel.select(timeout=0.5):
                if events & selectors.EVENT_WRITE and sent < len(data):
                    try:
                        sent += sock.send(data[sent:sent + 65536])
                    except (BlockingIOError, InterruptedError):
                        pass
                if events & selectors.EVENT_READ:
                    try:
                        chunk = sock.recv(262144)
                    except (BlockingIOError, InterruptedError):
                        continue
                    if not chunk:
                        raise ConnectionError("server closed the connection")
                    for status, _headers, body in parser.feed(chunk):
                        responses.append((status, body))
            peak = max(peak, rss_kb(srv.proc.pid))
    except (ConnectionError, OSError) as e:
        error = (f"{type(e).__name__}: {e} after {len(responses)} of {len(reqs)} responses "
                 f"(sent {sent} of {len(data)} bytes); last: {responses[-1:]!r:.300}")
    finally:
        sel.close()
        abort(sock)
    return {"baseline_kb": baseline, "peak_kb": peak, "prompt": prompt, "responses": responses,
            "error": error, "answered": answered}


@pytest.mark.parametrize("kind", ["get", "put", "mget"])
def test_pipelining_without_reading_is_bounded_and_answered_in_order(start_server, kind):
    """10,000 pipelined gets or puts (or 2,000 mgets, ~52 MB of responses)
    sent without reading. The read timeout is long here: a stall longer
    than the read timeout is the next test."""
    srv = start_server("--read-timeout", "30s", "--memory-limit", "64M", "--log-level", "error")
    prefix = unique("pipe") + "-"
    prefill_pipelined_keys(srv, prefix)
    reqs, expected, endpoint = pipelined_case(prefix, kind)
    res = pipeline_without_reading(srv, reqs, endpoint, 2.5)
    growth_mb = (res["peak_kb"] - res["baseline_kb"]) / 1024
    # RSS is only the cache's own memory in the release build (see helpers.memory_bound)
    assert SANITIZER or growth_mb <= 30, f"RSS grew {growth_mb:.1f} MB (from {res['baseline_kb']} to {res['peak_kb']} KiB)"
    if kind == "mget":  # responses far beyond kernel buffers: the server must have paused
        assert res["answered"] < len(reqs), f"all {len(reqs)} mgets answered while the client read nothing"
    res["prompt"].assert_prompt(limit=1.0)
    assert res["error"] is None, res["error"]
    got = res["responses"]
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected)):
        assert g == e, f"response {i}: {g!r:.300}"
    assert_healthy(srv)


def test_pipelining_client_stalled_longer_than_read_timeout_gets_all_responses(start_server):
    """Requests held back by backpressure are complete: the read timeout
    (meant for clients that send slowly) must not cut off a client that only
    reads slowly. Regression: the held-back input armed the read timer, so a
    stall over --read-timeout got a 408 (or a reset) after a few thousand
    responses and the rest were never answered."""
    srv = start_server("--read-timeout", "1s", "--memory-limit", "64M", "--log-level", "error")
    prefix = unique("pipe") + "-"
    prefill_pipelined_keys(srv, prefix)
    reqs, expected, endpoint = pipelined_case(prefix, "mget")
    res = pipeline_without_reading(srv, reqs, endpoint, 2.5)
    assert res["error"] is None, res["error"]
    assert res["responses"] == expected


# ---------------------------------------------------------------------------
# 10,000 idle connections


N_IDLE = 10_000


def test_ten_thousand_idle_connections_do_not_stop_new_clients(start_server):
    soft, hard = raise_nofile()
    if hard < N_IDLE + 2000:
        pytest.skip(f"RLIMIT_NOFILE hard limit is {hard}; holding {N_IDLE} connections needs >= {N_IDLE + 2000}")
    srv = start_server("--read-timeout", "1s", "--idle-timeout", "120s", "--max-connections", str(N_IDLE + 1000))
    m = re.search(r"open_files=(\d+)", srv.stderr())
    assert m, f"startup line does not log open_files: {srv.stderr()[:500]!r}"
    assert int(m.group(1)) >= N_IDLE + 1000, f"server open files limit {m.group(1)} is too low for the test"
    socks = []
    try:
        deadline = time.monotonic() + 40
        for i in range(N_IDLE):
            assert time.monotonic() < deadline, f"only {i} connections made in 40 s"
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            socks.append(s)
        # wait until the server has accepted them all
        opened = 0
        for _ in range(100):
            opened = metric(srv, "kvcache_connections_open")  # includes this /metrics connection
            if opened >= N_IDLE + 1:  # the /metrics connection itself
                break
            time.sleep(0.1)
        assert opened >= N_IDLE + 1, f"server holds only {opened} connections"
        # a new client is served promptly
        start = time.monotonic()
        with RawConn(srv.port, timeout=5) as c:
            assert c.request("GET", "/health").body == OK_HEALTH
            key = unique()
            assert c.request("POST", "/put", compact({"key": key, "value": "x"})).body == OK_PUT
        assert time.monotonic() - start < 2.0 * SANITIZER_SLOWDOWN  # a stall detector, not a speed test
        # the idle ones are still open and still work
        for s in random.Random(3).sample(socks, 50):
            s.sendall(build_request("GET", "/health"))
            parser, got = ResponseParser(), []
            for _ in range(100):
                chunk = s.recv(4096)
                assert chunk, "an idle connection was closed"
                got += parser.feed(chunk)
                if got:
                    break
            assert got[0][0] == 200 and got[0][2] == OK_HEALTH
    finally:
        for s in socks:
            abort(s)
    assert "accept:" not in srv.stderr(), srv.describe()
    assert_healthy(srv)


# ---------------------------------------------------------------------------
# --max-connections


def test_max_connections_answers_503_and_recovers(start_server):
    srv = start_server("--read-timeout", "1s", "--max-connections", "50")
    conns = []
    try:
        for _ in range(50):
            c = RawConn(srv.port, timeout=5)
            conns.append(c)
            assert c.request("GET", "/health").body == OK_HEALTH  # accepted and counted
        with RawConn(srv.port, timeout=5) as extra:
            r = extra.read_response(timeout=5)
            assert r.status == 503, r
            assert r.body == error_body("too many connections")
            assert r.header("Content-Type") == "application/json"
            assert extra.wait_closed(3), "the rejected connection was not closed"
        for c in conns:  # the first 50 still work
            assert c.request("GET", "/health").body == OK_HEALTH
        for c in conns[:10]:
            c.close()
        del conns[:10]
        # the server notices the closes; then new connections are accepted again
        deadline = time.monotonic() + 5
        for _ in range(100):
            c = RawConn(srv.port, timeout=5)
            r = c.request("GET", "/health")
            if r.status == 200:
                conns.append(c)
                break
            c.close()
            assert time.monotonic() < deadline, "no new connection accepted 5 s after closing 10"
            time.sleep(0.05)
        for _ in range(9):
            c = RawConn(srv.port, timeout=5)
            conns.append(c)
            assert c.request("GET", "/health").body == OK_HEALTH
        assert len(conns) == 50
        with RawConn(srv.port, timeout=5) as extra:  # full again
            assert extra.read_response(timeout=5).status == 503
            assert extra.wait_closed(3)
        r = conns[0].request("GET", "/metrics")
        rejected = re.search(rb"^kvcache_connections_rejected_total (\d+)$", r.body, re.M)
        assert rejected and int(rejected.group(1)) >= 2, r.body[-500:]
    finally:
        for c in conns:
            c.close()
    assert_healthy(srv)


# ---------------------------------------------------------------------------
# half-closed and resetting clients


def test_half_closed_client_still_gets_its_responses(start_server):
    srv = start_server("--read-timeout", "1s")
    key = unique()
    with RawConn(srv.port, timeout=5) as c:
        c.send(build_request("POST", "/put", compact({"key": key, "value": "half"})))
        c.sock.shutdown(socket.SHUT_WR)
        r = c.read_response(timeout=5)
        assert r.status == 200 and r.body == OK_PUT
        assert c.wait_closed(3)
    with RawConn(srv.port, timeout=5) as c:  # a pipelined pair, then half-close
        c.send(build_request("GET", f"/get?key={key}") + build_request("GET", "/health"))
        c.sock.shutdown(socket.SHUT_WR)
        assert c.read_response(timeout=5).body == get_body(key, "half")
        assert c.read_response(timeout=5).body == OK_HEALTH
        assert c.wait_closed(3)
    assert_healthy(srv)


def test_client_reset_during_large_mget_response_does_not_harm_the_server(start_server):
    srv = start_server("--read-timeout", "1s", "--memory-limit", "64M")
    prefix = unique("big") + "-"
    keys = [f"{prefix}{i}" for i in range(1000)]
    values = [f"{i:04d}" + "x" * 252 for i in range(1000)]
    for start in range(0, 1000, 200):  # bodies are limited to 64 KiB
        items = [{"key": k, "value": v} for k, v in zip(keys[start:start + 200], values[start:start + 200])]
        r = requests.post(f"{srv.url}/mput", data=compact({"items": items}), timeout=10)
        assert r.status_code == 200, r.text
    mget = build_request("POST", "/mget", compact({"keys": keys}))
    for round_ in range(6):
        s = connect_small_rcvbuf(srv.port)
        s.sendall(mget * 20)  # ~5 MB of responses
        got = 0
        for _ in range(1000):  # read some of the first response, then reset
            chunk = s.recv(4096)
            got += len(chunk)
            if not chunk or got >= 2000 * (round_ + 1):
                break
        abort(s)
        time.sleep(0.05)
    # the next client gets the full answer
    with RawConn(srv.port, timeout=10) as c:
        r = c.request("POST", "/mget", compact({"keys": keys}), timeout=10)
        assert r.status == 200
        assert r.json() == {"status": "OK", "values": values}
    assert_healthy(srv)


# ---------------------------------------------------------------------------
# invalid bytes


FUZZ_BASE = build_request(
    "POST", "/put", compact({"key": "fz", "value": "v1"}), headers=[("Host", "x"), ("Connection", "close")]
)


def fuzz_positions():
    """Every position of FUZZ_BASE (it is short: ~90 bytes)."""
    return list(range(len(FUZZ_BASE) + 1))


PROBE = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def test_invalid_bytes_at_every_position_get_a_clean_answer(start_server):
    """Each byte value 0x00..0xff inserted at each position of a small valid
    request (with Connection: close), each case on its own connection, 400 at
    a time. Every case must end, within the read timeout plus a margin, with
    well-formed responses and a close. A case the server answers with
    keep-alive (the Connection header itself was mutated) gets a probe
    request with Connection: close; if the server still held a partial
    request, the probe completes it or the read timeout ends it."""
    srv = start_server("--read-timeout", "1s", "--log-level", "error")
    cases = [FUZZ_BASE[:p] + bytes([b]) + FUZZ_BASE[p:] for p in fuzz_positions() for b in range(256)]
    wait_limit = READ_TIMEOUT + 2.5  # the close must come within this
    concurrency = 400
    sel = selectors.DefaultSelector()
    failures = []
    outcomes = {}
    pending = list(enumerate(cases))
    pending.reverse()
    active = 0
    overall_deadline = time.monotonic() + 50

    def finish(st, how):
        nonlocal active
        sel.unregister(st["sock"])
        abort(st["sock"])
        active -= 1
        if st["error"]:
            failures.append((st["i"], st["error"]))
        elif how == "open":
            failures.append((st["i"], f"not closed within {wait_limit}s; responses {[r[0] for r in st['resps']]}, "
                                      f"partial {st['parser'].buf[:100]!r}"))
        elif st["parser"].buf:
            failures.append((st["i"], f"closed after a partial response {st['parser'].buf[:200]!r}"))
        key = (how, st["probed"], tuple(r[0] for r in st["resps"]))
        outcomes[key] = outcomes.get(key, 0) + 1

    try:
        for _ in range(10_000_000):
            assert time.monotonic() < overall_deadline, f"fuzz took over 50 s ({len(pending)} cases left)"
            while pending and active < concurrency:
                i, data = pending.pop()
                s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
                s.setblocking(False)
                st = {"i": i, "sock": s, "parser": ResponseParser(), "resps": [], "error": None, "probed": False,
                      "deadline": time.monotonic() + wait_limit}
                try:
                    s.send(data)  # < 100 bytes: always fits
                except OSError as e:
                    st["error"] = f"send: {e}"
                sel.register(s, selectors.EVENT_READ, st)
                active += 1
            if not pending and active == 0:
                break
            for key, _ in sel.select(timeout=0.05):
                st = key.data
                try:
                    chunk = st["sock"].recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except ConnectionResetError:
                    chunk = b""
                if not chunk:
                    finish(st, "closed")
                    continue
                try:
                    for resp in st["parser"].feed(chunk):
                        check_well_formed(*resp)
                        st["resps"].append(resp)
                except (AssertionError, ValueError) as e:
                    st["error"] = f"malformed response: {e}"
                    finish(st, "closed")
                    continue
                last = st["resps"][-1] if st["resps"] else None
                if (last and last[0] >= 200 and not st["probed"]
                        and last[1].get("connection", "").lower() != "close"):
                    st["probed"] = True
                    try:
                        st["sock"].send(PROBE)
                    except OSError:
                        pass
            now = time.monotonic()
            for key in list(sel.get_map().values()):
                if now > key.data["deadline"]:
                    finish(key.data, "open")
    finally:
        for key in list(sel.get_map().values()):
            abort(key.data["sock"])
        sel.close()

    def show(i):
        p, b = divmod(i, 256)
        return f"byte 0x{b:02x} at {p}: {cases[i][:120]!r}"

    assert not failures, f"{len(failures)} of {len(cases)} bad: " + "; ".join(
        f"[{show(i)}] {why}" for i, why in failures[:10])
    assert sum(outcomes.values()) == len(cases)
    assert srv.alive(), srv.describe()
    assert_healthy(srv)


# ---------------------------------------------------------------------------
# graceful shutdown under load


WRK_SCRIPT = r"""
-- puts and gets of prefilled keys; every response is checked
local threads = {}
function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end
function init(args)
  n = 0; good = 0; bad = 0; example = ""
end
function request()
  n = n + 1
  local key = "w" .. id .. "-" .. (math.floor(n / 2) % 1000)
  if n % 2 == 1 then
    return wrk.format("POST", "/put", {["Content-Type"] = "application/json"},
      '{"key":"' .. key .. '","value":"v-' .. key .. '"}')
  end
  return wrk.format("GET", "/get?key=" .. key)
end
function response(status, headers, body)
  local ok = false
  if status == 200 and headers["Content-Type"] == "application/json" then
    if body == '{"status":"OK","message":"Key inserted/updated successfully."}' then
      ok = true
    else
      local k, v = string.match(body, '^{"status":"OK","key":"([^"]+)","value":"([^"]+)"}$')
      ok = k ~= nil and v == "v-" .. k
    end
  end
  if ok then good = good + 1 else
    bad = bad + 1
    if example == "" then example = status .. " " .. tostring(body) end
  end
end
function done(summary, latency, requests)
  local good, bad, example = 0, 0, ""
  for _, t in ipairs(threads) do
    good = good + t:get("good"); bad = bad + t:get("bad")
    if example == "" then example = t:get("example") end
  end
  io.write(string.format("HOSTILE good=%d bad=%d example=%q\n", good, bad, example))
end
"""


def test_sigterm_under_wrk_load_drains_and_exits_zero(start_server, tmp_path):
    wrk = shutil.which("wrk")
    if wrk is None:
        pytest.skip("wrk is not installed (apt-get install wrk)")
    drain = 2.0
    srv = start_server("--read-timeout", "1s", "--drain-timeout", f"{drain:g}s", "--memory-limit", "64M")
    items = [{"key": f"w{t}-{i}", "value": f"v-w{t}-{i}"} for t in range(2) for i in range(1000)]
    for start in range(0, len(items), 500):
        r = requests.post(f"{srv.url}/mput", data=compact({"items": items[start:start + 500]}), timeout=10)
        assert r.status_code == 200, r.text
    script = tmp_path / "hostile.lua"
    script.write_text(WRK_SCRIPT)
    out_path = tmp_path / "wrk.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen([wrk, "-t2", "-c50", "-d10s", "--timeout", "5s", "-s", str(script), srv.url + "/"],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        # SIGTERM under load: once wrk's 50 connections are open (wrk can take
        # seconds to start on a busy box; before, it found the port closed).
        deadline = time.monotonic() + 10.0 * SANITIZER_SLOWDOWN
        while metric(srv, "kvcache_connections_open") < 50 + 1 and time.monotonic() < deadline:
            assert proc.poll() is None, out_path.read_text()
            time.sleep(0.1)
        time.sleep(1.0)
        assert proc.poll() is None, out_path.read_text()
        srv.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        rc = srv.wait(timeout=drain + 1.0)
        took = time.monotonic() - sent
        # wrk prints its report on SIGINT; no need to wait out -d10s
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
            pytest.fail("wrk did not exit")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    report = out_path.read_text(errors="replace")
    assert rc == 0, f"exit code {rc} ({took:.2f}s after SIGTERM; None = still running, killed): {srv.describe()}"
    assert took <= drain + 1.0 * SANITIZER_SLOWDOWN
    assert "received SIGTERM" in srv.stderr() and "stopped" in srv.stderr(), srv.describe()
    m = re.search(r"HOSTILE good=(\d+) bad=(\d+) example=(.*)", report)
    assert m, f"wrk report without the script summary:\n{report}"
    good, bad = int(m.group(1)), int(m.group(2))
    assert bad == 0, f"{bad} invalid responses, e.g. {m.group(3)}\n{report}"
    assert good > 0, report
    assert "Non-2xx or 3xx responses" not in report, report


# ---------------------------------------------------------------------------
# out of file descriptors


def cpu_seconds(pid):
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# The sanitizer runtimes need descriptors of their own: UBSan's vptr check
# probes memory through a pipe (at RLIMIT_NOFILE it fails and reports a false
# "invalid vptr"), and a report opens its log file. Release build only.
@pytest.mark.skipif(SANITIZER is not None, reason=f"{SANITIZER}'s runtime itself needs file descriptors")
def test_running_out_of_file_descriptors_neither_spins_nor_stops_serving(tmp_path):
    """With RLIMIT_NOFILE 64, 100 clients connect: accept fails with EMFILE
    and the extra connections wait in the backlog. The server must not spin
    on the ever-readable listener, must keep serving the connections it has,
    and must accept the waiting ones once descriptors are free again."""
    require_binary()
    port = free_port()
    log_path = tmp_path / "kvcache.stderr"

    def limit_fds():
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    with open(log_path, "wb") as err:
        proc = subprocess.Popen(
            [KVCACHE_BIN, "--bind", "127.0.0.1", "--port", str(port), "--threads", "2", "--read-timeout", "1s",
             "--drain-timeout", "2s"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, preexec_fn=limit_fds)
    conns = []
    try:
        assert wait_healthy(port, proc), log_path.read_text()
        first = RawConn(port, timeout=5)
        conns.append(first)
        assert first.request("GET", "/health").body == OK_HEALTH
        for _ in range(100):
            conns.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(0.5)  # let the server hit EMFILE
        cpu_before, t_before = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(2.0)
        cpu_used = cpu_seconds(proc.pid) - cpu_before
        wall = time.monotonic() - t_before
        # CPU over wall time: a loaded box only lowers it; a busy loop takes a whole core.
        assert cpu_used < 0.5 * wall, f"server burned {cpu_used:.2f}s of CPU in {wall:.2f}s while out of descriptors"
        assert "accept:" in log_path.read_text(), "EMFILE was not logged"
        # the connection it already has still works
        start = time.monotonic()
        assert first.request("GET", "/health", timeout=5).body == OK_HEALTH
        assert time.monotonic() - start < 1.0 * SANITIZER_SLOWDOWN  # a stall detector, not a speed test
        # free descriptors: the waiting clients and new ones are served
        for s in conns[1:]:
            abort(s)
        del conns[1:]
        deadline = time.monotonic() + 10
        for _ in range(200):
            try:
                with RawConn(port, timeout=2) as c:
                    if c.request("GET", "/health", timeout=2).body == OK_HEALTH:
                        break
            except (OSError, AssertionError):
                pass
            assert time.monotonic() < deadline, "no new client served 10 s after descriptors were freed"
            time.sleep(0.1)
    finally:
        for c in conns:
            c.close() if isinstance(c, RawConn) else abort(c)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
    assert proc.returncode == 0, f"exit code {proc.returncode}: {log_path.read_text()[-2000:]}"


# ---------------------------------------------------------------------------
# error responses survive a client that is still sending


def read_slowly_until_closed(sock, timeout=10.0, pause=0.002):
    """Reads in pieces of 4 KiB (64 KiB without a pause) with a pause between
    them (a slow reader) until EOF; returns (bytes, how it ended: "eof",
    "reset" or "timeout")."""
    data = b""
    deadline = time.monotonic() + timeout
    sock.settimeout(1.0)
    for _ in range(1_000_000):
        if time.monotonic() > deadline:
            return data, "timeout"
        try:
            chunk = sock.recv(4096 if pause else 65536)
        except socket.timeout:
            continue
        except OSError:  # ECONNRESET, or EPIPE for a reset after the server's FIN
            return data, "reset"
        if not chunk:
            return data, "eof"
        data += chunk
        time.sleep(pause)
    return data, "timeout"


def send_for_a_while(sock, data, seconds=0.3):
    """Sends as much of data as the peer takes within `seconds` (it may stop reading or reset)."""
    sock.settimeout(seconds)
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError, socket.timeout):
        pass


def store_value_of_256(srv):
    key = unique("v256")
    r = requests.post(f"{srv.url}/put", data=compact({"key": key, "value": "v" * 256}), timeout=5)
    assert r.status_code == 200, r.text
    return key


def test_413_reaches_a_client_still_sending_its_body(start_server):
    """The server answers 413 and closes while the body is still arriving:
    closing with unread input would make the kernel reset the connection and
    drop the responses it has not sent yet. A small receive window and a slow
    reader make sure some are still queued: the server must shut down its
    side, read and discard, and close only then (lingering close)."""
    srv = start_server("--read-timeout", "5s")
    key = store_value_of_256(srv)
    gets = 300
    for _ in range(3):
        s = connect_small_rcvbuf(srv.port)
        try:
            s.sendall(build_request("GET", f"/get?key={key}") * gets
                      + b"POST /put HTTP/1.1\r\nHost: x\r\nContent-Length: 70000\r\n\r\n")
            time.sleep(0.05)  # the 413 is queued and the server closes meanwhile
            send_for_a_while(s, b"x" * 70000)
            time.sleep(0.3)  # a slow reader
            data, ended = read_slowly_until_closed(s)
        finally:
            abort(s)
        responses = ResponseParser().feed(data)
        assert ended == "eof", f"{ended} after {len(responses)} responses"
        assert [r[0] for r in responses] == [200] * gets + [413]
        assert responses[-1][2] == error_body("request body too large")
    assert_healthy(srv)


def test_400_after_a_pipeline_reaches_a_slow_reader_that_keeps_sending(start_server):
    """1,000 pipelined gets, a malformed request, then more bytes, on an 8 KiB
    receive buffer read slowly: every answer and the 400 arrive, then a clean
    end of stream (no reset)."""
    srv = start_server("--read-timeout", "5s")
    key = store_value_of_256(srv)
    s = connect_small_rcvbuf(srv.port, rcvbuf=8192)
    try:
        s.setblocking(False)
        data = build_request("GET", f"/get?key={key}") * 1000 + b"GARBAGE\r\n\r\n" + b"y" * 65536
        sent, deadline = 0, time.monotonic() + 5
        while sent < len(data) and time.monotonic() < deadline:  # the server stops reading at some point
            try:
                sent += s.send(data[sent:sent + 65536])
            except (BlockingIOError, InterruptedError):
                time.sleep(0.01)
            except (BrokenPipeError, ConnectionResetError):
                break
        s.setblocking(True)
        time.sleep(0.3)
        got, ended = read_slowly_until_closed(s, pause=0.001)
    finally:
        abort(s)
    responses = ResponseParser().feed(got)
    assert ended == "eof", f"{ended} after {len(responses)} responses"
    assert [r[0] for r in responses] == [200] * 1000 + [400]
    assert responses[-1][2] == error_body("malformed request line")
    assert_healthy(srv)


def test_lingering_close_is_bounded_by_time_not_bytes(start_server):
    """1,000 pipelined gets, a malformed request, then 600,000 more bytes sent
    from another thread while the client reads slowly on an 8 KiB receive
    buffer: more than the 256 KiB that the linger used to discard before it
    closed, reset the client and dropped the answers it had not read (with
    300,000 bytes 0e59145 lost them in 2 of 5 runs; with 600,000, in every
    run: "reset after 29 responses"). Bounded by time only, every answer and
    the 400 arrive, then a clean end of stream. Three rounds."""
    srv = start_server("--read-timeout", "5s")
    key = store_value_of_256(srv)
    data = build_request("GET", f"/get?key={key}") * 1000 + b"GARBAGE\r\n\r\n" + b"y" * 600_000
    for _ in range(3):
        s = connect_small_rcvbuf(srv.port, rcvbuf=8192)
        writer = s.dup()  # its own timeout: the reader's does not cut the sending short
        sender = threading.Thread(target=send_for_a_while, args=(writer, data, 10.0 * SANITIZER_SLOWDOWN))
        try:
            sender.start()
            time.sleep(0.3)
            got, ended = read_slowly_until_closed(s, timeout=20.0 * SANITIZER_SLOWDOWN)
            sender.join(15 * SANITIZER_SLOWDOWN)
        finally:
            abort(s)
            writer.close()
        responses = ResponseParser().feed(got)
        assert ended == "eof", f"{ended} after {len(responses)} responses"
        assert [r[0] for r in responses] == [200] * 1000 + [400]
        assert responses[-1][2] == error_body("malformed request line")
    assert_healthy(srv)


def test_503_over_max_connections_reaches_a_client_that_has_sent_its_request(start_server):
    """The rejected client's request is already waiting when the server
    accepts (the server is stopped meanwhile, so it is): closing with it
    unread would reset the connection. The server shuts its side down and
    discards what arrives, so the client reads its 503 and then the end of
    the stream."""
    srv = start_server("--read-timeout", "5s", "--max-connections", "1")
    body = compact({"key": unique(), "value": "z" * 200})
    put = b"POST /put HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    holder = None
    for _ in range(50):  # the start-up health check's connection may still be closing
        holder = RawConn(srv.port, timeout=5)
        if holder.request("GET", "/health").status == 200:
            break
        holder.close()
        time.sleep(0.1)
    with holder:
        assert holder.request("GET", "/health").body == OK_HEALTH
        for _ in range(3):
            srv.send_signal(signal.SIGSTOP)
            try:
                c = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
                c.sendall(put * 20)
            finally:
                srv.send_signal(signal.SIGCONT)
            try:
                time.sleep(0.2)
                data, ended = read_slowly_until_closed(c)
            finally:
                abort(c)
            responses = ResponseParser().feed(data)
            assert [(r[0], r[2]) for r in responses] == [(503, error_body("too many connections"))], data[:300]
            assert ended == "eof"
        assert holder.request("GET", "/health").body == OK_HEALTH
    assert metric(srv, "kvcache_connections_rejected_total") >= 3


def big_mget_keys(srv, count=500, value="v" * 256):
    """Stores count keys, short ones (the server is the test's own): small
    requests for large responses."""
    prefix = "k"
    keys = [f"{prefix}{i}" for i in range(count)]
    batch = 30  # bodies are limited to 64 KiB, and an escaped value takes up to 1.5 KB of one
    for start in range(0, count, batch):
        items = [{"key": k, "value": value} for k in keys[start:start + batch]]
        r = requests.post(f"{srv.url}/mput", data=compact({"items": items}), timeout=10)
        assert r.status_code == 200, r.text
    return keys


def test_half_close_after_a_held_back_pipeline_answers_every_request(start_server):
    """20 to 60 mgets of 1,000 keys (~260 KB each, more than kernel buffers
    hold) and a put, then shutdown(SHUT_WR): the server holds requests back
    while the client has not read their answers, and may read the FIN
    meanwhile. A FIN means no more requests, not "forget the ones you have".
    (Before the fix 2 to 3 of these 8 tries lost requests.)"""
    srv = start_server("--read-timeout", "5s")
    keys = big_mget_keys(srv, count=1000)
    mget = build_request("POST", "/mget", compact({"keys": keys}))
    expected_mget = compact({"status": "OK", "values": ["v" * 256] * len(keys)})
    for attempt, mgets in enumerate([20, 31, 45, 60] * 2):
        key = unique("after")
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        data = mget * mgets + build_request("POST", "/put", compact({"key": key, "value": "last"}))

        def send_then_half_close(sock=s, data=data):
            try:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        sender = threading.Thread(target=send_then_half_close, daemon=True)
        try:
            sender.start()
            if attempt >= 4:
                time.sleep(0.3)  # nothing read yet: the server holds requests back
            got, ended = read_slowly_until_closed(s, timeout=30, pause=0)
        finally:
            sender.join(5)
            abort(s)
        responses = ResponseParser().feed(got)
        where = f"try {attempt} ({mgets} mgets)"
        assert ended == "eof", f"{where}: {ended} after {len(responses)} responses"
        assert len(responses) == mgets + 1, f"{where}: {len(responses)} of {mgets + 1} answered"
        assert all(r[0] == 200 and r[2] == expected_mget for r in responses[:mgets]), where
        assert (responses[mgets][0], responses[mgets][2]) == (200, OK_PUT), where
        r = requests.get(f"{srv.url}/get", params={"key": key}, timeout=5)
        assert r.status_code == 200 and r.json()["value"] == "last", f"{where}: the put after the mgets was not stored"


def server_send_queue(port, client_port):
    """Bytes queued in the kernel for sending on the server's side of a
    loopback connection (tx_queue in /proc/net/tcp)."""
    local = f"0100007F:{port:04X}"
    remote = f"0100007F:{client_port:04X}"
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == local and fields[2] == remote:
                return int(fields[4].split(":")[0], 16)
    raise AssertionError(f"no server socket for {local} <- {remote} in /proc/net/tcp")


def test_sigterm_closes_a_connection_as_soon_as_its_output_is_sent(start_server):
    """A connection that only has unsent output at SIGTERM closes once that is
    sent, not at --drain-timeout."""
    drain = 20
    srv = start_server("--read-timeout", "5s", "--drain-timeout", f"{drain}s")
    keys = big_mget_keys(srv, count=1000, value="\x01" * 256)
    mget = build_request("POST", "/mget", compact({"keys": keys}))
    answer_size = 1000 * (256 * 6 + 3)  # escaped values, quotes and commas
    s = connect_small_rcvbuf(srv.port)
    try:
        # One mget at a time until the kernel cannot take a whole answer: that
        # one was answered, and the rest of it waits in the server, with
        # nothing else to do on the connection.
        mgets, queued = 0, 0
        for _ in range(20):
            s.sendall(mget)
            mgets += 1
            time.sleep(0.3)
            now = server_send_queue(srv.port, s.getsockname()[1])
            for _ in range(50 * SANITIZER_SLOWDOWN):  # a loaded or sanitized server may take longer
                if now > queued:
                    break
                time.sleep(0.1)
                now = server_send_queue(srv.port, s.getsockname()[1])
            assert now > queued, "the server did not answer the mget"
            if now - queued < answer_size - 65536:  # the client has taken a few KiB
                break
            queued = now
        srv.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        sent_at = time.monotonic()
        data, ended = read_slowly_until_closed(s, timeout=drain / 2, pause=0)
        took = time.monotonic() - sent_at
    finally:
        abort(s)
    responses = ResponseParser().feed(data)
    assert [r[0] for r in responses] == [200] * mgets
    assert ended == "eof", f"{ended}: the drained connection stayed open {took:.1f}s"
    assert srv.wait(timeout=drain / 2) == 0, srv.describe()


NON_READERS = 600


@memory_bound
def test_non_reading_clients_stay_within_the_memory_limit(start_server):
    """600 clients pipeline /mget for 1,000 keys whose values escape to 1.5 KB
    each (1.5 MB per response) and never read. Connection buffers come out of
    one budget (1/8 of --memory-limit): RSS stays under 1.1x the limit, a
    normal client is still served, and the non-readers are closed after
    --send-timeout."""
    limit_mb = 64
    srv = start_server("--read-timeout", "5s", "--memory-limit", f"{limit_mb}M", "--send-timeout", "3s",
                       "--max-connections", str(NON_READERS + 100), "--log-level", "error")
    keys = big_mget_keys(srv, count=1000, value="\x01" * 256)
    mget = build_request("POST", "/mget", compact({"keys": keys}))
    socks = []
    peak = rss_kb(srv.proc.pid)
    prompt = PromptClient(srv.port)
    try:
        for _ in range(NON_READERS):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", srv.port))
            s.setblocking(False)
            try:
                s.send(mget * 3)  # 4.5 MB of answers: more than a kernel send buffer takes (tcp_wmem)
            except (BlockingIOError, InterruptedError):
                pass
            socks.append(s)
            if len(socks) % 50 == 0:
                peak = max(peak, rss_kb(srv.proc.pid))
        # Until the server has answered what it can: the non-readers hold the whole budget.
        budget, held = (limit_mb << 20) // 8, 0
        deadline = time.monotonic() + 30
        while held < budget and time.monotonic() < deadline:
            peak = max(peak, rss_kb(srv.proc.pid))
            try:
                held = metric(srv, "kvcache_connection_buffer_bytes")
            except requests.RequestException:
                pass
            time.sleep(0.05)
        peak = max(peak, rss_kb(srv.proc.pid))
        assert peak < limit_mb * 1024 * 1.1, f"RSS peaked at {peak / 1024:.1f} MiB with --memory-limit {limit_mb}M"
        assert held >= budget, f"the non-readers hold {held} bytes of a {budget}-byte budget"
        assert metric(srv, "kvcache_connection_buffer_budget_bytes") == budget
        # Meanwhile a well-behaved client is served.
        prompt.start()
        for _ in range(20):
            peak = max(peak, rss_kb(srv.proc.pid))
            time.sleep(0.05)
        prompt.finish()
        prompt.assert_prompt(limit=2.0)
        assert peak < limit_mb * 1024 * 1.1, f"RSS peaked at {peak / 1024:.1f} MiB with --memory-limit {limit_mb}M"
        # Past --send-timeout the non-readers holding output are closed and give
        # their buffers back; the others keep at most a small input buffer (4 KiB).
        def settled():
            return metric(srv, "kvcache_connection_buffer_bytes") <= 4096 * metric(srv, "kvcache_connections_open")
        for _ in range(200):
            if settled():
                break
            time.sleep(0.05)
        assert settled()
    finally:
        for s in socks:
            abort(s)
    assert_healthy(srv)


PARTIAL_SENDERS = 1500


@memory_bound
def test_partial_requests_stay_within_the_memory_limit(start_server):
    """1,500 clients each send a Content-Length: 65536 head and 65,000 body
    bytes, then nothing. Once the connection buffer budget is spent no
    connection's unparsed input grows (the rest waits unread in its socket):
    RSS stays under 1.1x the limit, the buffers stay within the budget plus one
    read per loop, a well-behaved client is served meanwhile, and the partial
    requests get their 408 at the read timeout. (0e59145 let each connection
    keep reading 16 KiB at a time: 11.7x the budget, past the whole limit.)"""
    limit_mb, threads, read_timeout = 64, 2, 6
    srv = start_server("--read-timeout", f"{read_timeout}s", "--memory-limit", f"{limit_mb}M", "--threads", str(threads),
                       "--max-connections", str(PARTIAL_SENDERS + 100), "--log-level", "error")
    budget = (limit_mb << 20) // 8
    one_read = 128 << 10  # the read buffer: kInputCapacity (http::kMaxRequestBytes + 16 KiB)
    request = b"POST /put HTTP/1.1\r\nHost: x\r\nContent-Length: 65536\r\n\r\n" + b"a" * 65000
    socks, peak, most_held = [], rss_kb(srv.proc.pid), 0
    prompt = PromptClient(srv.port)

    def sample():
        nonlocal peak, most_held
        peak = max(peak, rss_kb(srv.proc.pid))
        most_held = max(most_held, metric(srv, "kvcache_connection_buffer_bytes"))

    try:
        started = time.monotonic()
        for i in range(PARTIAL_SENDERS):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.connect(("127.0.0.1", srv.port))
            s.setblocking(False)
            try:
                s.send(request)  # what the kernel takes: the server reads it, or not
            except (BlockingIOError, InterruptedError):
                pass
            socks.append(s)
            if i % 100 == 0:
                sample()
        assert time.monotonic() - started < read_timeout, "too slow to open the connections within the read timeout"
        prompt.start()
        for _ in range(20):
            sample()
            time.sleep(0.05)
        prompt.finish()
        prompt.assert_prompt(limit=2.0)
        sample()
        assert most_held > budget // 2, f"the partial requests never filled the budget ({most_held} bytes held)"
        assert most_held <= budget + threads * one_read, f"{most_held} bytes held, budget {budget}"
        assert peak < limit_mb * 1024 * 1.1, f"RSS peaked at {peak / 1024:.1f} MiB with --memory-limit {limit_mb}M"
        # At the read timeout each partial request is answered 408 (a sample of them, read in turn).
        deadline = time.monotonic() + read_timeout * SANITIZER_SLOWDOWN + 10
        for s in socks[-50:]:
            s.setblocking(True)
            s.settimeout(max(0.1, deadline - time.monotonic()))
            assert s.recv(4096).startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    finally:
        for s in socks:
            abort(s)
    assert_healthy(srv)

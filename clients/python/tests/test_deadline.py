"""Every call is bounded by the client's timeout in all: an answer that trickles
in byte by byte (a server in this file, on loopback), and a batch whose parts
wait for a thread behind a hung node's (fake nodes)."""

import socket
import threading
import time

import pytest

import kvcache

ANSWER = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 43\r\n\r\n' \
         b'{"status":"OK","key":"k","value":"trickle"}'
SLACK = 0.5  # the thread being scheduled after its deadline, on a busy machine


class TrickleServer:
    """Answers each request with ANSWER, one byte every `gap` seconds."""

    def __init__(self, gap):
        self.gap = gap
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(10)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(10)
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                request += chunk
            for i in range(len(ANSWER)):  # bounded: len(ANSWER) * gap seconds
                try:
                    conn.sendall(ANSWER[i:i + 1])
                except OSError:
                    return  # the client gave up
                time.sleep(self.gap)

    def close(self):
        self.listener.close()
        self.thread.join(timeout=15)


def test_an_answer_that_trickles_in_ends_the_call_at_its_timeout():
    server = TrickleServer(gap=0.05)  # 117 bytes: about 6 s, each byte well within the timeout
    try:
        with kvcache.Client(server.url, timeout=0.5) as client:
            start = time.monotonic()
            with pytest.raises(kvcache.Timeout):
                client.get("k")
            assert time.monotonic() - start <= 0.5 + SLACK
    finally:
        server.close()


def test_an_answer_that_trickles_in_within_the_timeout_is_read():
    server = TrickleServer(gap=0.001)
    try:
        with kvcache.Client(server.url, timeout=10) as client:
            assert client.get("k") == "trickle"
    finally:
        server.close()


# -- batches: one deadline for all their parts -------------------------------

def hung_nodes(cluster, hung):
    """Every node answers /mget at once with no values, but `hung`, which never
    answers: its request raises Timeout at its deadline (the one it was given, or
    the timeout from now), as a stopped node's does."""
    sent = {"hung": 0}
    lock = threading.Lock()

    def handler(i):
        def request(method, target, body=None, deadline=None):
            if deadline is None:
                deadline = time.monotonic() + cluster.timeout
            if i == hung:
                with lock:
                    sent["hung"] += 1
                time.sleep(max(0.0, deadline - time.monotonic()))
                raise kvcache.Timeout("no answer within the timeout")
            n = body.count(b'"') // 2
            return 200, b'{"status":"OK","values":[' + b",".join([b"null"] * n) + b"]}"
        return request

    for i, client in cluster.nodes.items():
        client.request = handler(i)
    return sent


def test_batches_queued_behind_a_hung_node_end_at_their_timeout():
    timeout = 0.5
    cluster = kvcache.Cluster(["http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"],
                              timeout=timeout, failures=1000)
    sent = hung_nodes(cluster, 3)
    # the first key's owner is not node 3, so every caller's node-3 part goes to the
    # executor's 6 threads: 20 callers queue 20 parts that each hold a thread till its deadline
    keys = [f"key:{i}" for i in range(60)]
    first = next(k for k in keys if cluster.ring.owner(k) != 3)
    keys = [first] + [k for k in keys if k != first]
    assert any(cluster.ring.owner(k) == 3 for k in keys)
    took, outcomes = [], []
    lock = threading.Lock()

    def caller():
        start = time.monotonic()
        try:
            cluster.mget(keys)
            outcome = "answered"
        except kvcache.Timeout:
            outcome = "Timeout"
        except Exception as e:  # noqa: BLE001
            outcome = repr(e)
        with lock:
            took.append(time.monotonic() - start)
            outcomes.append(outcome)

    threads = [threading.Thread(target=caller) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    cluster.close()
    assert outcomes == ["Timeout"] * 20
    assert max(took) <= timeout + SLACK, sorted(took)[-5:]
    assert 1 <= sent["hung"] <= 20  # the parts past their deadline were never sent


def test_a_batchs_retry_shares_its_deadline():
    """A part whose node is unreachable is sent to the next owner within the same deadline."""
    cluster = kvcache.Cluster(["http://127.0.0.1:1", "http://127.0.0.1:2"], timeout=0.5, failures=1000)
    deadlines = []

    def refused(method, target, body=None, deadline=None):
        deadlines.append(deadline)
        assert deadline is not None
        raise kvcache.Unavailable("connection refused")

    def slow(method, target, body=None, deadline=None):
        deadlines.append(deadline)
        time.sleep(max(0.0, deadline - time.monotonic()))
        raise kvcache.Timeout("no answer within the timeout")

    cluster.nodes[1].request = refused
    cluster.nodes[2].request = slow
    key = next(k for k in (f"key:{i}" for i in range(100)) if cluster.ring.owner(k) == 1)
    start = time.monotonic()
    with pytest.raises(kvcache.Timeout):
        cluster.mget([key])
    assert time.monotonic() - start <= 0.5 + SLACK
    assert len(deadlines) == 2 and deadlines[0] == deadlines[1]
    cluster.close()

"""The Python client (clients/python, package kvcache) against a real node:
every call, typed errors with the server's own messages, tokens, TLS and mTLS,
threads sharing one client, timeouts, and a node restarted under it.
Every wait is bounded."""

import json
import os
import signal
import sys
import threading
import time
from urllib.parse import quote

import pytest

from helpers import REPO, SANITIZER_SLOWDOWN, free_port, unique

sys.path.insert(0, str(REPO / "clients" / "python"))
import kvcache  # noqa: E402
from kvcache.errors import error_for  # noqa: E402


@pytest.fixture
def client(server):
    with kvcache.Client(server.url, timeout=5) as c:
        yield c


def test_every_call(client):
    k = unique("client")
    assert client.get(k) is None
    client.put(k, "v1")
    assert client.get(k) == "v1"
    client.put(k, "v2", ttl=100)
    assert client.get(k) == "v2"
    assert client.delete(k) is True
    assert client.delete(k) is False
    assert client.get(k) is None
    # awkward keys travel in the query string and in JSON bodies alike
    for key in ("a b+c", "%41&x=1", "/slash?q#frag", 'quote"back\\slash', "tab\tnl\n", "k" * 256):
        client.put(key, "v-" + key[:200])
        assert client.get(key) == "v-" + key[:200]
    assert client.health() is True
    assert "kvcache_requests_total" in client.metrics() or "# TYPE" in client.metrics()


def test_batches_larger_than_the_servers_limit_are_split(client):
    keys = [unique("batch") for _ in range(2500)]
    client.mput({k: "v" + k[-6:] for k in keys[:2400]})
    assert client.mget(keys) == ["v" + k[-6:] for k in keys[:2400]] + [None] * 100
    client.mput([(keys[0], "x", 100), (keys[1], "y")], ttl=50)
    assert client.mget(keys[:2]) == ["x", "y"]
    assert client.mget([]) == []
    # 1,000 items of 256-byte keys and values are 0.5 MB of JSON: split to fit 64 KiB bodies
    big = {("K" * 250) + unique("b")[-6:]: "v" * 256 for _ in range(1000)}
    client.mput(big)
    assert client.mget(list(big)) == list(big.values())


def test_ttl_expires(client):
    k = unique("ttl")
    client.put(k, "v", ttl=1)
    assert client.get(k) == "v"
    deadline = time.monotonic() + 5
    while client.get(k) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.get(k) is None


BAD_INPUTS = [
    # (call, args, raw request that skips the client's checks)
    ("put", ("", "v"), ("POST", "/put", {"key": "", "value": "v"})),
    ("put", ("k" * 257, "v"), ("POST", "/put", {"key": "k" * 257, "value": "v"})),
    ("put", ("clé", "v"), ("POST", "/put", {"key": "clé", "value": "v"})),
    ("put", ("k", "v" * 257), ("POST", "/put", {"key": "k", "value": "v" * 257})),
    ("put", ("k", "naïve"), ("POST", "/put", {"key": "k", "value": "naïve"})),
    ("put", ("k", "v", -1), ("POST", "/put", {"key": "k", "value": "v", "ttl": -1})),
    ("put", ("k", "v", 2**31), ("POST", "/put", {"key": "k", "value": "v", "ttl": 2**31})),
    ("put", ("k", 5), ("POST", "/put", {"key": "k", "value": 5})),
    ("get", ("",), ("GET", "/get?key=", None)),
    ("get", ("k" * 257,), ("GET", "/get?key=" + "k" * 257, None)),
    ("get", ("clé",), ("GET", "/get?key=" + quote("clé"), None)),
    ("delete", ("k" * 300,), ("POST", "/delete", {"key": "k" * 300})),
    ("mget", (["ok", "k" * 257],), ("POST", "/mget", {"keys": ["ok", "k" * 257]})),
    ("mget", (["ok", 7],), ("POST", "/mget", {"keys": ["ok", 7]})),
    ("mput", ([("ok", "v"), ("k", "v" * 300)],),
     ("POST", "/mput", {"items": [{"key": "ok", "value": "v"}, {"key": "k", "value": "v" * 300}]})),
    ("mput", ([("ok", "v"), ("é", "v")],),
     ("POST", "/mput", {"items": [{"key": "ok", "value": "v"}, {"key": "é", "value": "v"}]})),
]


@pytest.mark.parametrize("call,args,raw", BAD_INPUTS, ids=lambda x: str(x)[:30] if isinstance(x, str) else None)
def test_bad_input_is_refused_before_sending_with_the_servers_message(client, server, call, args, raw):
    method, target, body = raw
    status, answer = client.request(method, target, json.dumps(body).encode() if body is not None else None)
    assert status == 400, answer
    expected = error_for(status, json.loads(answer)["message"])
    sent = []
    real = client.request
    client.request = lambda *a, **k: sent.append(a) or real(*a, **k)
    with pytest.raises(kvcache.BadRequest) as e:
        getattr(client, call)(*args)
    assert not sent, "a request was sent"
    assert (type(e.value), e.value.message) == (type(expected), expected.message)


def test_server_errors_are_typed(client, start_server):
    with pytest.raises(kvcache.NotFound) as e:
        client.snapshot()
    assert e.value.message == "Snapshots are off: start kvcache with --snapshot-path." and e.value.status == 404
    status, body = client.request("POST", "/mget", json.dumps({"keys": ["k"] * 1001}).encode())
    assert isinstance(error_for(status, json.loads(body)["message"]), kvcache.TooManyItems)


def test_snapshot(start_server, tmp_path):
    srv = start_server("--memory-limit", "64M", "--snapshot-path", str(tmp_path / "snap"))
    with kvcache.Client(srv.url) as c:
        c.put("k", "v")
        answer = c.snapshot()
        assert answer["status"] == "OK", answer
    assert (tmp_path / "snap").exists()


def test_bearer_tokens(start_server):
    srv = start_server("--memory-limit", "64M", env={"KVCACHE_AUTH_TOKEN": "s3cret-token-of-32-bytes-000000"})
    with kvcache.Client(srv.url) as anonymous:
        assert anonymous.health() is True  # /health needs no token
        with pytest.raises(kvcache.Unauthorized) as e:
            anonymous.get("k")
        assert (e.value.status, e.value.message) == (401, "missing bearer token")
    with kvcache.Client(srv.url, token="wrong") as wrong:
        with pytest.raises(kvcache.Unauthorized) as e:
            wrong.put("k", "v")
        assert e.value.message == "invalid bearer token"
    with kvcache.Client(srv.url, token="s3cret-token-of-32-bytes-000000") as right:
        right.put("k", "v")
        assert right.get("k") == "v"
        assert right.mget(["k"]) == ["v"]
        assert "kvcache" in right.metrics()


def test_tls_and_mutual_tls(start_server, tmp_path):
    pytest.importorskip("test_tls")
    from test_tls import OPENSSL, make_ca, make_leaf, tls_flags
    if not OPENSSL:
        pytest.skip("the openssl command is not installed")
    make_ca(tmp_path, "ca")
    make_leaf(tmp_path, "server", "ca", cn="localhost")
    make_leaf(tmp_path, "client", "ca")
    ca = str(tmp_path / "ca.pem")
    srv = start_server(*tls_flags(tmp_path), "--memory-limit", "64M")
    url = f"https://127.0.0.1:{srv.port}"
    with kvcache.Client(url, ca=ca) as c:
        c.put("k", "v")
        assert c.get("k") == "v"
    with kvcache.Client(url) as untrusted:  # the system's CAs do not know this one
        with pytest.raises(kvcache.Unavailable, match="CERTIFICATE_VERIFY_FAILED"):
            untrusted.get("k")
    mutual = start_server(*tls_flags(tmp_path, mutual=True), "--memory-limit", "64M")
    url = f"https://127.0.0.1:{mutual.port}"
    with kvcache.Client(url, ca=ca, cert=str(tmp_path / "client.pem"), key=str(tmp_path / "client.key")) as c:
        c.put("k", "mtls")
        assert c.get("k") == "mtls"
    with kvcache.Client(url, ca=ca, timeout=2) as no_cert:
        with pytest.raises(kvcache.Unavailable):
            no_cert.get("k")


def test_threads_share_one_client(client):
    keys = [unique("thr") for _ in range(50)]
    problems = []

    def worker(n):
        try:
            for i in range(200):
                k = keys[(n * 7 + i) % len(keys)]
                client.put(k, f"{k}-{n}")
                v = client.get(k)
                if v is None or not v.startswith(k):
                    problems.append((k, v))
        except Exception as e:  # noqa: BLE001
            problems.append(repr(e))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert not problems, problems[:5]
    assert len(client._pool._idle) <= 8  # one connection per thread at most, all kept


def stop_process(pid):
    """SIGSTOP, then wait (bounded) until the kernel shows it stopped."""
    os.kill(pid, signal.SIGSTOP)
    for _ in range(200):
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "T":
                return
        time.sleep(0.01)
    pytest.fail(f"process {pid} not stopped 2 s after SIGSTOP")


def test_a_stopped_server_times_out_within_the_timeout(start_server):
    srv = start_server("--memory-limit", "64M")
    with kvcache.Client(srv.url, timeout=0.5) as c:
        c.put("k", "v")
        stop_process(srv.proc.pid)
        try:
            for call in (lambda: c.get("k"), lambda: c.put("k", "v"), lambda: c.mget(["k"])):
                start = time.monotonic()
                with pytest.raises(kvcache.Timeout) as e:
                    call()
                took = time.monotonic() - start
                assert 0.45 <= took <= 0.5 + 0.3 * SANITIZER_SLOWDOWN, took
                assert isinstance(e.value, TimeoutError) and e.value.node == srv.url
        finally:
            srv.send_signal(signal.SIGCONT)
        assert c.get("k") == "v"


def test_refused_connection_is_unavailable():
    port = free_port()
    with kvcache.Client(f"http://127.0.0.1:{port}", timeout=2) as c:
        start = time.monotonic()
        with pytest.raises(kvcache.Unavailable) as e:
            c.get("k")
        assert not isinstance(e.value, kvcache.Timeout) and time.monotonic() - start < 2


def test_a_restarted_server_is_reached_again_without_an_error(start_server, tmp_path):
    # The pool's kept-alive connections die with the old process; the first
    # request on one is resent once on a fresh connection, transparently.
    snap = str(tmp_path / "snap")
    srv = start_server("--memory-limit", "64M", "--snapshot-path", snap)
    with kvcache.Client(srv.url) as c:
        results = []
        threads = [threading.Thread(target=lambda: results.append(c.put(unique(), "v"))) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
        c.put("kept", "v")
        assert srv.stop() == 0  # SIGTERM writes the final snapshot
        again = start_server("--memory-limit", "64M", "--snapshot-path", snap, port=srv.port)
        assert again.port == srv.port
        assert c.get("kept") == "v"
        assert c.get("kept") == "v"


def test_readme_python_lines_run_as_shown(server, capsys):
    text = (REPO / "README.md").read_text()
    block = text[text.index("```python\n", text.index("From Python")) + 10:]
    block = block[:block.index("\n```")]
    exec(compile(block.replace("http://localhost:7171", server.url), "README.md", "exec"), {})
    assert capsys.readouterr().out == "test\n"

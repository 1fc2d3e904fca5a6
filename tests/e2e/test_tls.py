"""Native TLS (--tls-cert/--tls-key/--tls-client-ca): curl, Python requests and
ssl, openssl s_client, wrk and HAProxy against a TLS listener; mutual TLS;
rotation by SIGHUP; --health-check; and what bad clients get (plain HTTP,
garbage, a stalled handshake, a renegotiation attempt).

Certificates are ECDSA P-256, made by the openssl command for this module.
"""

import json
import os
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from helpers import REPO, SANITIZER_SLOWDOWN, RawConn, compact, free_port, run_binary, unique

OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(not OPENSSL, reason="the openssl command is not installed (install-deps.sh test)")


def openssl(*args, cwd):
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_ca(directory, name):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
            "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=directory)


def make_leaf(directory, name, ca, cn=None):
    """A certificate for localhost/127.0.0.1, usable by a server and a client."""
    ext = directory / f"{name}.ext"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={cn or name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=directory)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-days", "2", "-extfile", ext.name, "-out", f"{name}.pem", cwd=directory)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    make_ca(d, "ca")
    make_ca(d, "other-ca")
    make_leaf(d, "server", "ca", cn="localhost")
    make_leaf(d, "rotated", "ca", cn="rotated")
    make_leaf(d, "client", "ca")
    make_leaf(d, "stranger", "other-ca")
    return d


def tls_flags(certs, mutual=False, cert="server"):
    flags = ["--tls-cert", str(certs / f"{cert}.pem"), "--tls-key", str(certs / f"{cert}.key")]
    return flags + (["--tls-client-ca", str(certs / "ca.pem")] if mutual else [])


def client_context(certs, client=None, max_version=None):
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    if client:
        ctx.load_cert_chain(str(certs / f"{client}.pem"), str(certs / f"{client}.key"))
    if max_version:
        ctx.maximum_version = max_version
    return ctx


def peer_common_name(port, certs):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with client_context(certs).wrap_socket(raw, server_hostname="localhost") as s:
            subject = dict(x[0] for x in s.getpeercert()["subject"])
            return subject["commonName"]


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory, certs):
    from helpers import launch
    # A long read timeout: a bad client closed within seconds was closed for what it sent, not timed out.
    srv = launch(tmp_path_factory.mktemp("tls"), tls_flags(certs) + ["--memory-limit", "64M", "--read-timeout", "30s"])
    yield srv
    assert srv.stop() == 0, srv.describe()


def test_tls_requests_put_get_and_metrics(tls_server, certs):
    ca = str(certs / "ca.pem")
    with requests.Session() as s:
        s.verify, s.trust_env = ca, False  # else REQUESTS_CA_BUNDLE wins over s.verify
        key = unique()
        r = s.post(f"{tls_server.url}/put", data=compact({"key": key, "value": "over tls"}), timeout=5)
        assert r.status_code == 200, r.text
        r = s.get(f"{tls_server.url}/get", params={"key": key}, timeout=5)
        assert r.json() == {"status": "OK", "key": key, "value": "over tls"}
        text = s.get(f"{tls_server.url}/metrics", timeout=5).text
    assert re.search(r'^kvcache_tls_handshakes_total\{version="TLSv1.3",resumed="false"\} [1-9]', text, re.M), text
    assert 'kvcache_tls_handshake_failures_total{reason="plain_http"}' in text
    assert re.search(r"^kvcache_tls_certificate_expiry_timestamp_seconds [1-9]", text, re.M)


def test_tls_curl_cacert_and_alpn(tls_server, certs):
    curl = shutil.which("curl")
    if not curl:
        pytest.skip("curl is not installed")
    out = subprocess.run([curl, "-sv", "--cacert", str(certs / "ca.pem"), f"https://localhost:{tls_server.port}/health"],
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"status": "OK"}
    assert "ALPN: server accepted http/1.1" in out.stderr or "ALPN, server accepted to use http/1.1" in out.stderr
    # No CA given: curl refuses the self-made certificate.
    bad = subprocess.run([curl, "-s", f"https://localhost:{tls_server.port}/health"], capture_output=True, timeout=10)
    assert bad.returncode == 60


def test_tls_pipelined_burst_and_tls12(tls_server, certs):
    for version in (None, ssl.TLSVersion.TLSv1_2):
        with RawConn(tls_server.port, tls=client_context(certs, max_version=version)) as c:
            assert c.sock.version() == ("TLSv1.2" if version else "TLSv1.3")
            key = unique()
            batch = "".join(f"GET /get?key={key} HTTP/1.1\r\nHost: x\r\n\r\n" for _ in range(300))
            c.send(batch)
            for _ in range(300):
                assert c.read_response().status == 404


def test_tls_slow_client_gets_every_response(tls_server, certs):
    """Responses pile up while the client does not read (SSL_write waits for
    the socket, then resumes from a moved buffer): all arrive, in order."""
    ca = str(certs / "ca.pem")
    keys = [unique() for _ in range(50)]
    value = "v" * 256
    with requests.Session() as s:
        s.verify, s.trust_env = ca, False  # else REQUESTS_CA_BUNDLE wins over s.verify
        r = s.post(f"{tls_server.url}/mput", data=compact({"items": [{"key": k, "value": value} for k in keys]}), timeout=5)
        assert r.status_code == 200
    with RawConn(tls_server.port, tls=client_context(certs), timeout=20) as c:
        body = compact({"keys": keys}).decode()
        request = f"POST /mget HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n{body}"
        c.send(request * 500)  # ~8 MB of responses: more than the socket buffers hold
        time.sleep(0.5)
        for _ in range(500):
            r = c.read_response(timeout=20)
            assert r.status == 200
            assert json.loads(r.body)["values"] == [value] * 50


def test_tls_close_sends_close_notify(tls_server, certs):
    ctx = client_context(certs)
    with socket.create_connection(("127.0.0.1", tls_server.port), timeout=5) as raw:
        # suppress_ragged_eofs=False: an EOF without close_notify would raise SSLEOFError.
        with ctx.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert s.makefile("rb").read().startswith(b"HTTP/1.1 200 ")  # to the end


def test_tls_plain_http_is_closed_quickly_and_logged_once_a_second(tls_server, certs):
    time.sleep(1.1)  # past the throttle's window of an earlier test's line
    before = tls_server.stderr().count("tls: handshake from")
    started = time.monotonic()
    for _ in range(30):
        with RawConn(tls_server.port, timeout=2) as c:
            c.send("GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert c.wait_closed(5.0 * SANITIZER_SLOWDOWN)
            assert not c.buf.startswith(b"HTTP/1.1 200")
    elapsed = time.monotonic() - started
    time.sleep(0.1)
    logged = tls_server.stderr().count("tls: handshake from") - before
    assert 1 <= logged <= elapsed + 2, tls_server.stderr()[-2000:]
    assert "plain_http" in tls_server.stderr()
    assert metric_value(tls_server, certs, 'kvcache_tls_handshake_failures_total{reason="plain_http"}') >= 30
    assert requests.get(f"{tls_server.url}/health", verify=str(certs / "ca.pem"), timeout=5).status_code == 200


def test_tls_plain_http_gets_a_400_saying_the_port_speaks_tls(tls_server, certs):
    """As nginx answers "The plain HTTP request was sent to HTTPS port": a
    client that forgot https:// learns why, instead of an empty reply."""
    for request in (b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
                    b"POST /put HTTP/1.1\r\nHost: x\r\nContent-Length: 23\r\n\r\n" + compact({"key": "k", "value": "v"})):
        with RawConn(tls_server.port, timeout=5) as c:
            c.send(request)
            r = c.read_response(timeout=5.0 * SANITIZER_SLOWDOWN)
            assert r.status == 400, r
            assert r.header("Content-Type") == "application/json"
            assert (r.header("Connection") or "").lower() == "close"
            assert r.json()["status"] == "ERROR"
            assert "TLS" in r.json()["message"] and "https://" in r.json()["message"], r.body
            assert c.wait_closed(5.0 * SANITIZER_SLOWDOWN)
    # curl, as a user would try it.
    curl = shutil.which("curl")
    if curl:
        out = subprocess.run([curl, "-s", "-w", "\n%{http_code}", f"http://127.0.0.1:{tls_server.port}/health"],
                             capture_output=True, text=True, timeout=10)
        body, code = out.stdout.rsplit("\n", 1)
        assert code == "400", out
        assert "speaks TLS" in body, out
    assert requests.get(f"{tls_server.url}/health", verify=str(certs / "ca.pem"), timeout=5).status_code == 200


def metric_value(srv, certs, series):
    text = requests.get(f"{srv.url}/metrics", verify=str(certs / "ca.pem"), timeout=5).text
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{series} not in /metrics")


def test_tls_garbage_handshake_closed(tls_server, certs):
    before = metric_value(tls_server, certs, 'kvcache_tls_handshake_failures_total{reason="protocol"}')
    for payload in (os.urandom(2000), b"\x16\x03\x01\x00\x04\x01\x00\x00\x00", b"\x16\x03\x03\xff\xff" + b"A" * 100):
        with RawConn(tls_server.port, timeout=2) as c:
            try:
                c.send(payload)
            except OSError:
                pass
            assert c.wait_closed(5.0 * SANITIZER_SLOWDOWN)
    assert metric_value(tls_server, certs, 'kvcache_tls_handshake_failures_total{reason="protocol"}') >= before + 2
    assert requests.get(f"{tls_server.url}/health", verify=str(certs / "ca.pem"), timeout=5).status_code == 200


def test_tls_stalled_handshake_bound_by_read_timeout(start_server, certs):
    srv = start_server(*tls_flags(certs), "--read-timeout", "1s")
    started = time.monotonic()  # before the server accepts: its handshake timer starts later
    silent = RawConn(srv.port, timeout=10)
    partial = RawConn(srv.port, timeout=10)
    partial.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello's first bytes, then nothing
    # Others are served meanwhile.
    assert requests.get(f"{srv.url}/health", verify=str(certs / "ca.pem"), timeout=5).status_code == 200
    for c in (silent, partial):
        assert c.wait_closed(1.0 + 3.0 * SANITIZER_SLOWDOWN), "a stalled handshake outlived the read timeout"
        c.close()
    assert time.monotonic() - started >= 0.9
    assert metric_value(srv, certs, 'kvcache_tls_handshake_failures_total{reason="incomplete"}') >= 2
    assert metric_value(srv, certs, 'kvcache_timeouts_total{kind="handshake"}') >= 2


def test_tls_renegotiation_attempt_refused(tls_server, certs):
    """openssl s_client's R command asks for a TLS 1.2 renegotiation; the server refuses it and goes on."""
    proc = subprocess.run(
        [OPENSSL, "s_client", "-connect", f"127.0.0.1:{tls_server.port}", "-tls1_2", "-CAfile", str(certs / "ca.pem"),
         "-servername", "localhost"],
        input=b"R\n", capture_output=True, timeout=20)
    out = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
    assert "RENEGOTIATING" in out
    assert "no renegotiation" in out.lower() or proc.returncode != 0, out[-2000:]
    assert tls_server.alive()
    assert requests.get(f"{tls_server.url}/health", verify=str(certs / "ca.pem"), timeout=5).status_code == 200


def test_tls_mutual_requires_a_client_certificate(start_server, certs):
    srv = start_server(*tls_flags(certs, mutual=True))
    ca = str(certs / "ca.pem")
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(f"{srv.url}/health", verify=ca, timeout=5)
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(f"{srv.url}/health", verify=ca, timeout=5,
                     cert=(str(certs / "stranger.pem"), str(certs / "stranger.key")))
    r = requests.get(f"{srv.url}/health", verify=ca, timeout=5, cert=(str(certs / "client.pem"), str(certs / "client.key")))
    assert r.status_code == 200
    text = requests.get(f"{srv.url}/metrics", verify=ca, timeout=5,
                        cert=(str(certs / "client.pem"), str(certs / "client.key"))).text
    assert re.search(r'^kvcache_tls_handshake_failures_total\{reason="no_client_cert"\} [1-9]', text, re.M), text
    assert re.search(r'^kvcache_tls_handshake_failures_total\{reason="bad_client_cert"\} [1-9]', text, re.M), text
    # --health-check presents the server's certificate (issued by the same CA for client use too).
    env = {"KVCACHE_PORT": str(srv.port)}
    assert run_binary(["--health-check", *tls_flags(certs, mutual=True)], env=env).returncode == 0


def test_tls_sighup_rotates_the_certificate(start_server, certs, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(certs / "server.pem", cert)
    shutil.copy(certs / "server.key", key)
    srv = start_server("--tls-cert", str(cert), "--tls-key", str(key))
    assert peer_common_name(srv.port, certs) == "localhost"
    old = RawConn(srv.port, tls=client_context(certs))
    assert old.request("GET", "/health").status == 200

    shutil.copy(certs / "rotated.pem", cert)
    shutil.copy(certs / "rotated.key", key)
    srv.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5 * SANITIZER_SLOWDOWN
    while time.monotonic() < deadline and "TLS certificate" not in srv.stderr():
        time.sleep(0.05)
    assert peer_common_name(srv.port, certs) == "rotated"
    assert old.request("GET", "/health").status == 200  # open connections keep theirs
    old.close()

    # A bad file (a key that does not match) keeps the rotated pair, and says why.
    shutil.copy(certs / "client.key", key)
    srv.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5 * SANITIZER_SLOWDOWN
    while time.monotonic() < deadline and "keeping the current TLS certificate" not in srv.stderr():
        time.sleep(0.05)
    assert "keeping the current TLS certificate" in srv.stderr()
    assert "does not match" in srv.stderr()
    assert peer_common_name(srv.port, certs) == "rotated"
    assert metric_value(srv, certs, 'kvcache_tls_reloads_total{result="error"}') == 1
    assert metric_value(srv, certs, 'kvcache_tls_reloads_total{result="ok"}') == 1


def test_tls_health_check(tls_server, certs):
    env = {"KVCACHE_PORT": str(tls_server.port)}
    assert run_binary(["--health-check", *tls_flags(certs)], env=env).returncode == 0
    env_tls = dict(env, KVCACHE_TLS_CERT=str(certs / "server.pem"), KVCACHE_TLS_KEY=str(certs / "server.key"))
    assert run_binary(["--health-check"], env=env_tls).returncode == 0
    # Plain HTTP to the TLS port is not healthy.
    assert run_binary(["--health-check"], env=env).returncode == 1


def test_tls_bad_files_exit_2(certs, tmp_path):
    port = str(free_port())
    cases = [
        (["--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "client.key")], "does not match"),
        (["--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(certs / "server.key")], "No such file"),
        (["--tls-cert", str(certs / "server.pem")], "--tls-cert and --tls-key go together"),
        (tls_flags(certs) + ["--tls-client-ca", str(certs / "server.key")], "--tls-client-ca"),
    ]
    for flags, message in cases:
        result = run_binary(["--port", port, *flags])
        assert result.returncode == 2, (flags, result.stderr)
        assert message in result.stderr.decode(), result.stderr


def test_tls_concurrent_clients_and_sigterm_drain(start_server, certs):
    srv = start_server(*tls_flags(certs))
    ca = str(certs / "ca.pem")
    errors = []

    def client(n):
        try:
            with requests.Session() as s:
                s.verify, s.trust_env = ca, False  # else REQUESTS_CA_BUNDLE wins over s.verify
                for i in range(40):
                    key = f"c{n}-{i}"
                    assert s.post(f"{srv.url}/put", data=compact({"key": key, "value": str(i)}), timeout=10).status_code == 200
                    assert s.get(f"{srv.url}/get", params={"key": key}, timeout=10).json()["value"] == str(i)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    # SIGTERM with a request in flight on a TLS connection: it is answered, then the server exits 0.
    c = RawConn(srv.port, tls=client_context(certs))
    assert c.request("GET", "/health").status == 200
    c.send("GET /health HTTP/1.1\r\nHost: x\r\n")
    srv.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    c.send("\r\n")
    r = c.read_response(timeout=5)
    assert r.status == 200
    assert srv.wait() == 0


def documented_haproxy_tls_options(ca_file):
    """The TLS options docs/scaling.md tells operators to add to the nodes' default-server line."""
    text = (REPO / "docs" / "scaling.md").read_text()
    line = next(l for l in text.splitlines() if l.strip().startswith("default-server ... ssl "))
    options = line.split("...", 1)[1].strip()
    assert "verify required" in options and "ca-file" in options, line
    return re.sub(r"ca-file \S+", f"ca-file {ca_file}", options).replace("str(kvcache.internal)", "str(localhost)")


def test_tls_behind_haproxy(start_server, certs, tmp_path):
    """HAProxy 2.6 in front of a TLS node, with the server options docs/scaling.md shows."""
    haproxy = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None)
    if not haproxy:
        pytest.skip("haproxy is not installed")
    srv = start_server(*tls_flags(certs))
    options = documented_haproxy_tls_options(certs / "ca.pem")
    front = free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(f"""
global
    maxconn 100
defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s
frontend fe
    bind 127.0.0.1:{front}
    default_backend nodes
backend nodes
    server node1 127.0.0.1:{srv.port} {options}
""")
    proc = subprocess.Popen([haproxy, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        r = None
        while time.monotonic() < deadline:
            try:
                r = requests.get(f"http://127.0.0.1:{front}/health", timeout=2)
                break
            except requests.RequestException:
                time.sleep(0.1)
        assert r is not None and r.status_code == 200
        key = unique()
        assert requests.post(f"http://127.0.0.1:{front}/put", data=compact({"key": key, "value": "via"}), timeout=5).status_code == 200
        assert requests.get(f"http://127.0.0.1:{front}/get", params={"key": key}, timeout=5).json()["value"] == "via"
    finally:
        proc.terminate()
        proc.wait(10)


def test_tls_wrk(tls_server, certs):
    wrk = shutil.which("wrk")
    if not wrk:
        pytest.skip("wrk is not installed (install-deps.sh test)")
    out = subprocess.run([wrk, "-t1", "-c4", "-d1s", f"https://127.0.0.1:{tls_server.port}/health"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    m = re.search(r"(\d+) requests in", out.stdout)
    assert m and int(m.group(1)) > 0, out.stdout
    assert "Non-2xx" not in out.stdout and "Socket errors" not in out.stdout, out.stdout


def test_tls_idle_connections_make_room_for_new_ones(start_server, certs):
    """Each TLS connection's state is charged to the connection buffer budget
    (1/8 of --memory-limit: 1 MiB at 8M, ~70 idle TLS connections): a new
    connection that does not fit closes the longest-idle ones, so every
    client is served and the memory stays bounded."""
    srv = start_server(*tls_flags(certs), "--memory-limit", "8M", "--threads", "1", "--idle-timeout", "600")
    ctx = client_context(certs)
    held = []
    try:
        for i in range(200):
            c = RawConn(srv.port, tls=ctx, timeout=10)
            held.append(c)
            assert c.request("GET", "/health").status == 200, f"connection {i}"
        time.sleep(0.2)
        # A connection the server closed has its close_notify and FIN to read.
        poller = select.poll()
        for c in held:
            poller.register(c.sock, select.POLLIN)
        readable = {fd for fd, _ in poller.poll(0)}
        closed = [c for c in held if c.sock.fileno() in readable and c.wait_closed(1.0)]
        assert 100 <= len(closed) < 200
        assert closed == held[:len(closed)], "the longest-idle connections go first"
        for c in held[-10:]:
            assert c.request("GET", "/health").status == 200
    finally:
        for c in held:
            c.close()
    assert metric_value(srv, certs, "kvcache_connections_idle_closed_total") >= len(closed)
    assert metric_value(srv, certs, "kvcache_connections_refused_total") == 0
    assert metric_value(srv, certs, "kvcache_connection_buffer_bytes") <= 1 << 20
    assert srv.alive()


def test_tls_new_connections_refused_while_no_idle_one_can_make_room(start_server, certs):
    """Connections with a request in progress are not idle: once they hold the
    whole budget, new ones are closed at accept, before any handshake work,
    counted and logged at most once a second; served again once they go."""
    srv = start_server(*tls_flags(certs), "--memory-limit", "8M", "--threads", "1", "--read-timeout", "60s")
    ctx = client_context(certs)
    partial, refused = [], 0
    started = time.monotonic()
    try:
        for _ in range(150):
            try:
                c = RawConn(srv.port, tls=ctx, timeout=10)
            except (ssl.SSLError, OSError):
                refused += 1
                continue
            c.send("GET /health HTTP/1.1\r\nHost: x\r\n")  # never finished
            partial.append(c)
        assert refused >= 40 and len(partial) >= 40, (refused, len(partial))
        assert srv.alive()
    finally:
        for c in partial:
            c.close()
    elapsed = time.monotonic() - started
    served = None
    for _ in range(100):
        try:
            served = requests.get(f"{srv.url}/health", verify=str(certs / "ca.pem"), timeout=5)
            break
        except requests.RequestException:
            time.sleep(0.1)
    assert served is not None and served.status_code == 200
    assert metric_value(srv, certs, "kvcache_connections_refused_total") >= refused
    logged = srv.stderr().count("tls: refused a new connection")
    assert 1 <= logged <= elapsed + 2, srv.stderr()[-2000:]

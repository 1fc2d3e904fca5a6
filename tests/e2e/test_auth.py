"""Optional bearer tokens: --auth-token-file / KVCACHE_AUTH_TOKEN, 401 paths,
GET /health left open, failure metrics and log throttling, SIGHUP rotation."""

import signal
import time

import pytest
import requests

from helpers import NOT_FOUND, OK_HEALTH, OK_PUT, RawConn, build_request, compact, get_body, run_binary, unique

TOKEN_A = "tokenA-0123456789abcdef"
TOKEN_B = "tokenB-fedcba9876543210"
MISSING = compact({"status": "ERROR", "message": "missing bearer token"})
WRONG = compact({"status": "ERROR", "message": "invalid bearer token"})


def bearer(token):
    return [("Authorization", f"Bearer {token}")]


def put_body(key, value="v"):
    return compact({"key": key, "value": value})


def wait_for_log(server, text, count=1, timeout=5.0):
    """Wait (bounded) until `text` appears `count` times in the server's stderr."""
    deadline = time.monotonic() + timeout
    for _ in range(500):
        if server.stderr().count(text) >= count:
            return True
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    return False


def metric(server, name, headers=None):
    text = requests.get(server.url + "/metrics", headers=headers, timeout=5).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(TOKEN_A + "\n")
    return path


@pytest.fixture
def secured(start_server, token_file):
    return start_server("--auth-token-file", str(token_file))


def test_missing_token_gets_401_with_challenge_and_the_connection_stays_open(secured):
    key = unique()
    with RawConn(secured.port) as c:
        r = c.request("POST", "/put", put_body(key))
        assert r.status == 401
        assert r.header("WWW-Authenticate") == 'Bearer realm="kvcache"'
        assert r.header("Content-Type") == "application/json"
        assert r.body == MISSING
        assert r.header("Connection") is None
        # Same connection: nothing was stored, and a token is accepted.
        r = c.request("GET", f"/get?key={key}", headers=bearer(TOKEN_A))
        assert (r.status, r.body) == (404, NOT_FOUND)


def test_wrong_token_gets_401_invalid_token(secured):
    key = unique()
    with RawConn(secured.port) as c:
        for auth in ["Bearer " + TOKEN_A[:-1] + "X", "Bearer " + TOKEN_A + "X", "Bearer " + TOKEN_A[:-1],
                     "Basic dXNlcjpwYXNz", TOKEN_A, "Bearer"]:
            r = c.request("POST", "/put", put_body(key), headers=[("Authorization", auth)])
            assert r.status == 401, auth
            assert r.header("WWW-Authenticate") == 'Bearer realm="kvcache", error="invalid_token"'
            assert r.body == WRONG
        r = c.request("GET", f"/get?key={key}", headers=bearer(TOKEN_A))
        assert r.status == 404


def test_every_endpoint_but_get_health_needs_the_token(secured):
    key = unique()
    requests_without = [
        ("POST", "/put", put_body(key)),
        ("GET", f"/get?key={key}", None),
        ("POST", "/delete", compact({"key": key})),
        ("POST", "/mput", compact({"items": [{"key": key, "value": "v"}]})),
        ("POST", "/mget", compact({"keys": [key]})),
        ("GET", "/metrics", None),
        ("POST", "/health", b"{}"),
        ("GET", "/no-such-endpoint", None),
        ("POST", "/snapshot", b""),
        ("POST", "/flush", b""),
        ("GET", f"/ttl?key={key}", None),
        ("POST", "/expire", compact({"key": key, "ttl": 5})),
        ("OPTIONS", "/put", None),
        ("OPTIONS", "*", None),
    ]
    with RawConn(secured.port) as c:
        for method, target, body in requests_without:
            r = c.request(method, target, body)
            assert r.status == 401, (method, target, r)
        r = c.request("GET", "/health")
        assert (r.status, r.body) == (200, OK_HEALTH)
        # With the token, the same requests reach their endpoints.
        assert c.request("POST", "/put", put_body(key, "x"), headers=bearer(TOKEN_A)).body == OK_PUT
        assert c.request("GET", f"/get?key={key}", headers=bearer(TOKEN_A)).body == get_body(key, "x")
        assert c.request("POST", "/mget", compact({"keys": [key]}), headers=bearer(TOKEN_A)).status == 200
        assert c.request("GET", "/metrics", headers=bearer(TOKEN_A)).status == 200
        assert c.request("GET", "/no-such-endpoint", headers=bearer(TOKEN_A)).status == 404


def test_requests_library_with_bearer_header(secured):
    key = unique()
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {TOKEN_A}"
    assert s.post(secured.url + "/put", json={"key": key, "value": "v"}, timeout=5).status_code == 200
    assert s.get(secured.url + "/get", params={"key": key}, timeout=5).json()["value"] == "v"
    assert requests.get(secured.url + "/get", params={"key": key}, timeout=5).status_code == 401


def test_failures_are_counted_by_reason_and_logged_at_most_once_a_second(secured):
    auth = {"Authorization": f"Bearer {TOKEN_A}"}
    start = time.monotonic()
    with RawConn(secured.port) as c:
        for _ in range(30):
            assert c.request("GET", "/metrics").status == 401
        for _ in range(20):
            assert c.request("GET", "/metrics", headers=bearer(TOKEN_B)).status == 401
    elapsed = time.monotonic() - start
    assert metric(secured, 'kvcache_auth_failures_total{reason="missing"}', auth) == 30
    assert metric(secured, 'kvcache_auth_failures_total{reason="wrong"}', auth) == 20
    assert metric(secured, 'kvcache_requests_total{endpoint="metrics",code="401"}', auth) == 50
    lines = [l for l in secured.stderr().splitlines() if "auth: rejected" in l]
    assert 1 <= len(lines) <= int(elapsed) + 1, lines
    assert TOKEN_B not in secured.stderr(), "a presented token must never be logged"


def test_health_check_flag_works_with_a_token(secured):
    p = run_binary(["--health-check"], env={"KVCACHE_PORT": str(secured.port)})
    assert p.returncode == 0, p.stderr


def test_token_from_the_environment(start_server):
    srv = start_server(env={"KVCACHE_AUTH_TOKEN": TOKEN_B})
    with RawConn(srv.port) as c:
        assert c.request("GET", "/metrics").status == 401
        assert c.request("GET", "/metrics", headers=bearer(TOKEN_B)).status == 200
    assert "auth=KVCACHE_AUTH_TOKEN" in srv.stderr()


def test_several_tokens_each_work(start_server, tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"{TOKEN_A}\r\n\r\n{TOKEN_B}\r\n")
    srv = start_server(env={"KVCACHE_AUTH_TOKEN_FILE": str(path)})
    with RawConn(srv.port) as c:
        assert c.request("GET", "/metrics", headers=bearer(TOKEN_A)).status == 200
        assert c.request("GET", "/metrics", headers=bearer(TOKEN_B)).status == 200
        assert c.request("GET", "/metrics", headers=bearer("tokenC-0123456789abcdef")).status == 401


@pytest.mark.parametrize("content, message", [
    ("", "no token (empty)"),
    ("\n\n", "no token (empty)"),
    ("short-token\n", "shorter than 16 bytes"),
    (TOKEN_A + "\nwith space in it 0123\n", "on line 2 has a character outside"),
])
def test_bad_token_file_exits_2_naming_it(tmp_path, content, message):
    path = tmp_path / "tokens"
    path.write_text(content)
    p = run_binary(["--auth-token-file", str(path), "--port", "1"])
    assert p.returncode == 2
    err = p.stderr.decode()
    assert f"--auth-token-file {path}" in err and message in err, err


def test_unreadable_or_conflicting_token_sources_exit_2(tmp_path):
    p = run_binary(["--auth-token-file", str(tmp_path / "absent")])
    assert p.returncode == 2 and b"cannot read" in p.stderr, p.stderr
    p = run_binary([], env={"KVCACHE_AUTH_TOKEN": "too-short"})
    assert p.returncode == 2 and b"KVCACHE_AUTH_TOKEN: the token on line 1 is shorter" in p.stderr, p.stderr
    path = tmp_path / "tokens"
    path.write_text(TOKEN_A)
    p = run_binary(["--auth-token-file", str(path)], env={"KVCACHE_AUTH_TOKEN": TOKEN_B})
    assert p.returncode == 2 and b"use one" in p.stderr, p.stderr


def test_rotation_via_sighup_without_dropping_connections(secured, token_file):
    with RawConn(secured.port) as c:
        assert c.request("GET", "/metrics", headers=bearer(TOKEN_A)).status == 200
        assert c.request("GET", "/metrics", headers=bearer(TOKEN_B)).status == 401
        # Step 1: add the new token next to the old one.
        token_file.write_text(f"{TOKEN_A}\n{TOKEN_B}\n")
        secured.send_signal(signal.SIGHUP)
        assert wait_for_log(secured, "SIGHUP: 2 token(s) loaded"), secured.describe()
        assert c.request("GET", "/metrics", headers=bearer(TOKEN_A)).status == 200
        assert c.request("GET", "/metrics", headers=bearer(TOKEN_B)).status == 200
        # Step 2: drop the old one.
        token_file.write_text(f"{TOKEN_B}\n")
        secured.send_signal(signal.SIGHUP)
        assert wait_for_log(secured, "SIGHUP: 1 token(s) loaded"), secured.describe()
        assert c.request("GET", "/metrics", headers=bearer(TOKEN_A)).status == 401
        assert c.request("GET", "/metrics", headers=bearer(TOKEN_B)).status == 200
        # A broken file on reload keeps the tokens in force.
        token_file.write_text("")
        secured.send_signal(signal.SIGHUP)
        assert wait_for_log(secured, "SIGHUP: keeping the 1 current token(s)"), secured.describe()
        assert c.request("GET", "/metrics", headers=bearer(TOKEN_B)).status == 200
    assert secured.alive()


def test_sighup_without_a_token_file_is_logged_and_harmless(start_server):
    srv = start_server()
    srv.send_signal(signal.SIGHUP)
    assert wait_for_log(srv, "SIGHUP: no --auth-token-file to reload"), srv.describe()
    assert srv.alive()
    assert requests.get(srv.url + "/metrics", timeout=5).status_code == 200


def test_head_health_is_open_and_other_heads_need_the_token(secured):
    with RawConn(secured.port) as c:
        # Each HEAD is followed by a GET: a stray body would be read as the next response.
        c.send(build_request("HEAD", "/health") + build_request("GET", "/health"))
        head = c.read_response(head_only=True)
        assert head.status == 200 and head.header("Content-Length") == str(len(OK_HEALTH))
        assert c.read_response().body == OK_HEALTH
        c.send(build_request("HEAD", "/metrics") + build_request("GET", "/health"))
        head = c.read_response(head_only=True)
        assert head.status == 401 and head.header("WWW-Authenticate") == 'Bearer realm="kvcache"'
        assert head.header("Content-Length") == str(len(MISSING))
        assert c.read_response().body == OK_HEALTH
        c.send(build_request("HEAD", "/metrics", headers=bearer(TOKEN_A)) + build_request("GET", "/health"))
        assert c.read_response(head_only=True).status == 200
        assert c.read_response().body == OK_HEALTH


def test_post_snapshot_needs_the_token(start_server, token_file, tmp_path):
    srv = start_server("--auth-token-file", str(token_file), "--snapshot-path", str(tmp_path / "snap"))
    with RawConn(srv.port) as c:
        r = c.request("POST", "/snapshot", b"")
        assert r.status == 401 and r.body == MISSING
        assert not (tmp_path / "snap").exists()
        r = c.request("POST", "/snapshot", b"", headers=bearer(TOKEN_A), timeout=30)
        assert r.status == 200, r

"""Operating the binary: flags, environment, logs, signals, --health-check,
connection limit, concurrency."""

import json
import random
import signal
import socket
import threading
import time

import pytest
import requests

from helpers import (
    NOT_FOUND,
    OK_DELETE,
    OK_HEALTH,
    OK_PUT,
    SANITIZER_SLOWDOWN,
    RawConn,
    error_body,
    free_port,
    get_body,
    launch,
    run_binary,
    unique,
    wait_healthy,
)

ALL_FLAGS = ["--port", "--bind", "--threads", "--memory-limit", "--shards", "--max-connections",
             "--read-timeout", "--idle-timeout", "--drain-timeout", "--log-level", "--help", "--health-check",
             "--snapshot-path", "--snapshot-interval", "--snapshot-timeout",
             "--auth-token-file"]


def refuses(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except OSError:
        return True


# ---------------------------------------------------------------------------
# command line


def test_help_exits_0_and_lists_every_flag():
    p = run_binary(["--help"])
    assert p.returncode == 0, p.stderr
    text = (p.stdout + p.stderr).decode(errors="replace")
    missing = [f for f in ALL_FLAGS if f not in text]
    assert not missing, f"--help does not mention {missing}:\n{text}"


@pytest.mark.parametrize("args", [
    ["--port", "abc"],
    ["--port", "70000"],
    ["--port", "-1"],
    ["--port"],
    ["--threads", "0"],
    ["--threads", "two"],
    ["--memory-limit", "12Q"],
    ["--memory-limit", "-5M"],
    ["--shards", "0"],
    ["--log-level", "loud"],
    ["--read-timeout", "-1"],
    ["--read-timeout", "soon"],
    ["--idle-timeout", "x"],
    ["--snapshot-interval", "-1"],
    ["--snapshot-interval", "soon"],
    ["--snapshot-timeout", "0"],
    ["--nope"],
    ["--bind", "localhost"],
    ["--bind", "127.0.0.1:7171"],
    ["--bind", "300.1.2.3"],
], ids=lambda a: " ".join(a))
def test_bad_flag_exits_2_with_message(args):
    # a free port, so that a wrongly accepted flag cannot collide with anything
    port_args = [] if args[0] == "--port" else ["--port", str(free_port())]
    p = run_binary(["--bind", "127.0.0.1"] + port_args + args, timeout=5)
    assert p.returncode == 2, f"exit {p.returncode}, stderr {p.stderr!r}"
    assert p.stderr.strip(), "no message on stderr"


@pytest.mark.parametrize("env", [{"KVCACHE_PORT": "abc"}, {"KVCACHE_THREADS": "0"}, {"KVCACHE_LOG_LEVEL": "loud"}],
                         ids=lambda e: ",".join(f"{k}={v}" for k, v in e.items()))
def test_bad_env_value_exits_2_with_message(env):
    args = ["--bind", "127.0.0.1"] + ([] if "KVCACHE_PORT" in env else ["--port", str(free_port())])
    p = run_binary(args, env=env, timeout=5)
    assert p.returncode == 2, f"exit {p.returncode}, stderr {p.stderr!r}"
    assert p.stderr.strip()


def test_bad_env_bind_exits_2():
    # exit 2 is what the unit's RestartPreventExitStatus= stops restart loops on
    p = run_binary(["--port", str(free_port())], env={"KVCACHE_BIND": "not-an-address"}, timeout=5)
    assert p.returncode == 2, f"exit {p.returncode}, stderr {p.stderr!r}"
    assert b"KVCACHE_BIND" in p.stderr


def test_flag_overrides_a_bad_env_value(start_server):
    srv = start_server(env={"KVCACHE_PORT": "abc", "KVCACHE_BIND": "nowhere"})
    assert requests.get(f"{srv.url}/health", timeout=2).content == OK_HEALTH


def test_help_ignores_bad_env_values():
    p = run_binary(["--help"], env={"KVCACHE_PORT": "abc", "KVCACHE_MEMORY_LIMIT": "lots"}, timeout=5)
    assert p.returncode == 0, p.stderr
    assert b"--port" in p.stdout


@pytest.mark.parametrize("value", ["2", "2s", "500ms", "0.5"])
def test_read_timeout_formats_are_accepted(start_server, value):
    srv = start_server("--read-timeout", value)
    assert requests.get(f"{srv.url}/health", timeout=2).status_code == 200


@pytest.mark.parametrize("value", ["auto", "64M", "65536K", "1G", "67108864"])
def test_memory_limit_formats_are_accepted(start_server, value):
    srv = start_server("--memory-limit", value, "--log-level", "error")
    assert requests.get(f"{srv.url}/health", timeout=2).status_code == 200


@pytest.mark.parametrize("shards", ["1", "64"])
def test_shards_flag_is_accepted(start_server, shards):
    srv = start_server("--shards", shards, "--memory-limit", "4M", "--log-level", "error")
    with requests.Session() as s:
        r = s.post(f"{srv.url}/mput", json={"items": [{"key": f"s{i}", "value": str(i)} for i in range(100)]},
                   timeout=5)
        assert r.status_code == 200
        r = s.post(f"{srv.url}/mget", json={"keys": [f"s{i}" for i in range(100)]}, timeout=5)
        assert r.json()["values"] == [str(i) for i in range(100)]


def test_env_port_is_honoured(start_server):
    port = free_port()
    srv = start_server(env={"KVCACHE_PORT": str(port)}, pass_port=False, port=port)
    assert requests.get(f"http://127.0.0.1:{port}/health", timeout=2).content == OK_HEALTH
    assert srv.port == port


def test_flag_beats_env(start_server):
    env_port = free_port()
    srv = start_server(env={"KVCACHE_PORT": str(env_port)})
    assert srv.port != env_port
    assert requests.get(f"{srv.url}/health", timeout=2).status_code == 200
    assert refuses(env_port), "server also listens on the KVCACHE_PORT port"


def test_env_sets_other_flags(start_server):
    srv = start_server(env={"KVCACHE_IDLE_TIMEOUT": "1", "KVCACHE_LOG_LEVEL": "error"})
    with RawConn(srv.port) as c:
        assert c.request("GET", "/health").status == 200
        assert c.wait_closed(3.5), "KVCACHE_IDLE_TIMEOUT=1 not honoured"


def test_startup_logs_a_line_with_the_port_on_stderr(start_server):
    srv = start_server("--log-level", "info")
    lines = srv.stderr().splitlines()
    assert any(str(srv.port) in ln for ln in lines), f"no stderr line mentions port {srv.port}: {lines}"


def test_second_server_on_a_busy_port_fails_to_start(start_server, tmp_path):
    """SO_REUSEPORT must not let a second, independent cache silently share
    the port (the kernel would split clients between two caches)."""
    first = start_server()
    second = launch(tmp_path, [], port=first.port, wait=False)
    try:
        rc = second.wait(timeout=5)
        assert second.returncode is not None and rc != 0, (
            f"a second kvcache on busy port {first.port} kept running: {second.describe()}")
        assert second.stderr().strip(), "no message on stderr"
    finally:
        second.stop(signal.SIGKILL, timeout=5)
    assert requests.get(f"{first.url}/health", timeout=2).content == OK_HEALTH


# ---------------------------------------------------------------------------
# signals


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_exits_0(start_server, sig):
    srv = start_server()
    assert requests.get(f"{srv.url}/health", timeout=2).status_code == 200
    assert srv.stop(sig, timeout=8) == 0, srv.describe()
    assert refuses(srv.port)


def test_sigterm_with_idle_keep_alive_connection_exits_0_promptly(start_server):
    srv = start_server("--drain-timeout", "2")
    with RawConn(srv.port) as c:
        assert c.request("GET", "/health").status == 200
        start = time.monotonic()
        rc = srv.stop(signal.SIGTERM, timeout=8)
        assert rc == 0, srv.describe()
        assert time.monotonic() - start < 2 + 2 * SANITIZER_SLOWDOWN, "exit took longer than --drain-timeout allows"
        assert c.wait_closed(2)


def test_sigterm_finishes_request_in_flight(start_server):
    srv = start_server("--drain-timeout", "3", "--read-timeout", "3")
    with RawConn(srv.port) as c:
        key = unique()
        body = json.dumps({"key": key, "value": "drained"}).encode()
        head = b"POST /put HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
        c.send(head + body[:10])  # request started, not complete
        time.sleep(0.2)
        srv.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert refuses(srv.port), "still accepting new connections after SIGTERM"
        c.send(body[10:])
        r = c.read_response(timeout=3)
        assert r.status == 200 and r.body == OK_PUT
        assert srv.wait(8) == 0, srv.describe()


# ---------------------------------------------------------------------------
# --health-check


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_tells_the_service_manager_when_it_listens_and_when_it_stops(start_server, tmp_path, abstract):
    # systemd's Type=notify protocol: one datagram to $NOTIFY_SOCKET ("@" = abstract namespace).
    name = f"kvcache-notify-{tmp_path.name}" if abstract else str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name if abstract else name)
        sock.settimeout(10 * SANITIZER_SLOWDOWN)
        srv = start_server(env={"NOTIFY_SOCKET": "@" + name if abstract else name}, wait=False)
        assert sock.recv(256) == b"READY=1"
        # sent once it listens: the first connection is answered
        assert requests.get(f"{srv.url}/health", timeout=2).content == OK_HEALTH
        srv.send_signal(signal.SIGTERM)
        assert sock.recv(256) == b"STOPPING=1"
        assert srv.wait() == 0


def test_health_check_exits_0_against_running_server(server):
    p = run_binary(["--health-check", "--port", str(server.port)], timeout=10)
    assert p.returncode == 0, p.stderr


def test_health_check_with_env_port(server):
    p = run_binary(["--health-check"], env={"KVCACHE_PORT": str(server.port)}, timeout=10)
    assert p.returncode == 0, p.stderr


def test_health_check_exits_nonzero_when_nothing_listens():
    p = run_binary(["--health-check", "--port", str(free_port())], timeout=10)
    assert p.returncode != 0


# ---------------------------------------------------------------------------
# connection limit


def test_max_connections_rejects_the_sixth_with_503(start_server):
    srv = start_server("--max-connections", "5")
    conns = [RawConn(srv.port) for _ in range(5)]
    try:
        for c in conns:
            assert c.request("GET", "/health").body == OK_HEALTH
        extra = RawConn(srv.port)
        try:
            # the server may answer on accept; if it waits for a request, send one
            if not extra.wait_closed(1.0) and not extra.buf:
                try:
                    extra.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                except OSError:
                    pass
            r = extra.read_response(timeout=3)
            assert r.status == 503, r
            assert r.body == error_body("too many connections")
            assert r.header("Retry-After") == "1", r  # RFC 9110 10.2.3: when to try again
            assert (r.header("Connection") or "").lower() == "close"
            assert r.header("Content-Type") == "application/json"
            assert extra.wait_closed(3)
        finally:
            extra.close()
        for c in conns:
            assert c.request("GET", "/health").body == OK_HEALTH
        # a freed slot can be used again
        conns.pop().close()
        deadline = time.monotonic() + 3
        for _ in range(30):
            with RawConn(srv.port) as again:
                try:
                    r = again.request("GET", "/health", timeout=1)
                except (AssertionError, TimeoutError, OSError):
                    r = None
                if r is not None and r.status == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail("a freed connection slot was not reusable within 3 s")
            time.sleep(0.1)
    finally:
        for c in conns:
            c.close()


# ---------------------------------------------------------------------------
# concurrency


def test_concurrent_keep_alive_clients_get_correct_answers(server):
    threads_n, per_thread = 8, 500
    errors = []

    def worker(tid):
        rng = random.Random(tid)
        prefix = unique(f"t{tid}")
        model = {}
        try:
            with requests.Session() as s:
                for i in range(per_thread):
                    key = f"{prefix}-{rng.randrange(40)}"
                    op = rng.random()
                    if op < 0.4:
                        value = f"v{tid}-{i}"
                        r = s.post(f"{server.url}/put", json={"key": key, "value": value}, timeout=5)
                        ok = r.status_code == 200 and r.content == OK_PUT
                        model[key] = value
                    elif op < 0.8:
                        r = s.get(f"{server.url}/get", params={"key": key}, timeout=5)
                        if key in model:
                            ok = r.status_code == 200 and r.content == get_body(key, model[key])
                        else:
                            ok = r.status_code == 404 and r.content == NOT_FOUND
                    elif op < 0.9:
                        r = s.post(f"{server.url}/delete", json={"key": key}, timeout=5)
                        if key in model:
                            ok = r.status_code == 200 and r.content == OK_DELETE
                            del model[key]
                        else:
                            ok = r.status_code == 404 and r.content == NOT_FOUND
                    else:
                        keys = [f"{prefix}-{rng.randrange(40)}" for _ in range(5)]
                        r = s.post(f"{server.url}/mget", json={"keys": keys}, timeout=5)
                        ok = r.status_code == 200 and r.json()["values"] == [model.get(k) for k in keys]
                    if not ok:
                        errors.append(f"thread {tid} op {i} key {key}: {r.status_code} {r.content[:200]!r}")
                        return
        except Exception as e:  # noqa: BLE001 - reported as a test failure below
            errors.append(f"thread {tid}: {e!r}")

    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(threads_n)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(0.1, 60 - (time.monotonic() - start)))
    assert not any(t.is_alive() for t in threads), "workers did not finish within 60 s"
    assert not errors, errors[:5]
    assert wait_healthy(server.port, server.proc, timeout=2)

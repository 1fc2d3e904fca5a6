"""Snapshots (--snapshot-path): restart with the same keys, values, TTLs and
LRU order; POST /snapshot; crash safety; bad files; write failures.

No test here depends on the machine's speed: where two things must overlap
(two snapshots at once, kill -9 during one), the test retries a bounded
number of times until they did, and checks only what overlapping implies.
"""

import re
import signal
import struct
import threading
import time
from pathlib import Path

import requests

from helpers import RawConn, compact

SNAPSHOT_FLAGS = ["--snapshot-interval", "0"]


def mput(session, url, items):
    r = session.post(f"{url}/mput", data=compact({"items": items}), timeout=30)
    assert r.status_code == 200, r.text


def fill(url, keys, value_of, ttl_of=lambda i: 0, batch=250):
    with requests.Session() as s:
        for start in range(0, len(keys), batch):
            items = []
            for i in range(start, min(start + batch, len(keys))):
                item = {"key": keys[i], "value": value_of(i)}
                if ttl_of(i):
                    item["ttl"] = ttl_of(i)
                items.append(item)
            mput(s, url, items)


def mget(url, keys, batch=1000):
    values = []
    with requests.Session() as s:
        for start in range(0, len(keys), batch):
            r = s.post(f"{url}/mget", data=compact({"keys": keys[start:start + batch]}), timeout=30)
            assert r.status_code == 200, r.text
            values += r.json()["values"]
    return values


def post_snapshot(url):
    return requests.post(f"{url}/snapshot", timeout=60)


def metric(url, name):
    text = requests.get(f"{url}/metrics", timeout=5).text
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def stop_ok(server):
    rc = server.stop(timeout=60)
    assert rc == 0, f"exit code {rc}: {server.describe()}"


def loaded_line(server):
    match = re.search(r"snapshot \S+ loaded: (\d+) entries, (\d+) skipped as expired", server.stderr())
    assert match, f"no load line: {server.describe()}"
    return int(match.group(1)), int(match.group(2))


def test_restart_keeps_keys_values_and_ttls_with_other_shards_and_threads(start_server, tmp_path):
    path = tmp_path / "cache.snap"
    flags = ["--snapshot-path", str(path), "--memory-limit", "256M"] + SNAPSHOT_FLAGS
    first = start_server(*flags, "--shards", "16", "--threads", "2")
    keys = [f"key-{i}" for i in range(100_000)]
    value_of = lambda i: f"value-{i}-" + "x" * (i % 100)
    fill(first.url, keys, value_of, ttl_of=lambda i: 3600 if i % 2 else 0)
    short = [f"short-{i}" for i in range(50)]
    fill(first.url, short, lambda i: "gone", ttl_of=lambda i: 2)
    put_at = time.monotonic()
    stop_ok(first)
    assert "snapshot written to" in first.stderr()
    assert path.exists() and not Path(str(path) + ".tmp").exists()
    # The short TTLs run out while the server is down.
    time.sleep(max(0.0, 2.3 - (time.monotonic() - put_at)))

    second = start_server(*flags, "--shards", "5", "--threads", "1")
    loaded, expired = loaded_line(second)
    assert (loaded, expired) == (100_000, 50)
    assert mget(second.url, keys) == [value_of(i) for i in range(len(keys))]
    assert mget(second.url, short) == [None] * len(short)
    assert metric(second.url, "kvcache_snapshot_restored_entries") == 100_000


def test_lru_order_survives_a_restart_under_a_smaller_limit(start_server, tmp_path):
    path = tmp_path / "cache.snap"
    first = start_server("--snapshot-path", str(path), "--memory-limit", "128M", *SNAPSHOT_FLAGS)
    keys = [f"lru-{i}" for i in range(120_000)]
    fill(first.url, keys, lambda i: "v" * 200)
    # Reading the oldest key makes it the most recently used.
    assert requests.get(f"{first.url}/get", params={"key": keys[0]}, timeout=5).status_code == 200
    stop_ok(first)

    second = start_server("--snapshot-path", str(path), "--memory-limit", "16M", *SNAPSHOT_FLAGS)
    values = mget(second.url, keys)
    present = [v is not None for v in values]
    assert not all(present), "16M should not hold 120k entries of 200 bytes"
    assert present[0], "the key read last before the restart was evicted"
    assert not any(present[1:1001]), "the oldest keys should go first"
    assert all(present[-1000:]), "the newest keys should survive"


def test_post_snapshot_answers_when_written(start_server, tmp_path):
    path = tmp_path / "cache.snap"
    server = start_server("--snapshot-path", str(path), *SNAPSHOT_FLAGS)
    fill(server.url, [f"p-{i}" for i in range(1000)], lambda i: "v")
    r = post_snapshot(server.url)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "OK" and body["entries"] == 1000
    assert body["bytes"] == path.stat().st_size
    assert body["seconds"] >= 0
    assert metric(server.url, "kvcache_snapshot_last_entries") == 1000
    assert metric(server.url, "kvcache_snapshot_last_bytes") == body["bytes"]
    assert metric(server.url, "kvcache_snapshot_last_success_timestamp_seconds") > 0
    assert metric(server.url, "kvcache_snapshot_failures_total") == 0


def test_two_snapshots_at_once_get_one_409_and_the_loop_keeps_serving(start_server, tmp_path):
    # One loop: the 409 is answered while the first snapshot runs, so that
    # loop was not blocked by it.
    path = tmp_path / "cache.snap"
    server = start_server("--snapshot-path", str(path), "--threads", "1", "--memory-limit", "256M", *SNAPSHOT_FLAGS)
    fill(server.url, [f"big-{i}" for i in range(200_000)], lambda i: "v" * 200)
    request = b"POST /snapshot HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    for _ in range(5):
        with RawConn(server.port, timeout=60) as a, RawConn(server.port, timeout=60) as b:
            a.send(request)
            b.send(request)
            codes = sorted([a.read_response().status, b.read_response().status])
        if codes != [200, 200]:  # [200, 200]: the first one finished before the second came
            break
    assert codes == [200, 409]


def test_requests_pipelined_behind_a_snapshot_are_answered_in_order(start_server, tmp_path):
    server = start_server("--snapshot-path", str(tmp_path / "cache.snap"), *SNAPSHOT_FLAGS)
    with RawConn(server.port) as c:
        c.send(b"POST /snapshot HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
               b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
               b"POST /snapshot HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        first, second, third = c.read_response(), c.read_response(), c.read_response()
        assert (first.status, second.status, third.status) == (200, 200, 200)
        assert first.json()["entries"] == 0 and second.json() == {"status": "OK"}
        assert c.wait_closed()


def test_kill_9_during_a_snapshot_leaves_the_previous_one_loadable(start_server, tmp_path):
    path = tmp_path / "cache.snap"
    tmp = Path(str(path) + ".tmp")
    flags = ["--snapshot-path", str(path), "--memory-limit", "256M"] + SNAPSHOT_FLAGS
    server = start_server(*flags)
    fill(server.url, [f"big-{i}" for i in range(300_000)], lambda i: "v" * 200)
    assert post_snapshot(server.url).status_code == 200
    previous = path.read_bytes()
    fill(server.url, [f"more-{i}" for i in range(1000)], lambda i: "w")
    for attempt in range(5):
        threading.Thread(target=lambda: _ignore_errors(post_snapshot, server.url), daemon=True).start()
        deadline = time.monotonic() + 30
        while not tmp.exists() and time.monotonic() < deadline and path.read_bytes() == previous:
            time.sleep(0.0005)
        if tmp.exists():
            server.stop(signal.SIGKILL)
            break
        # That snapshot finished before we saw its .tmp: take it as the previous one and try again.
        previous = path.read_bytes()
    assert not server.alive()
    assert path.read_bytes() == previous

    again = start_server(*flags)
    loaded, _ = loaded_line(again)
    assert loaded >= 300_000
    assert not tmp.exists(), "the interrupted snapshot's .tmp should be removed at start"
    assert requests.get(f"{again.url}/get", params={"key": "big-299999"}, timeout=5).status_code == 200


def _ignore_errors(fn, *args):
    try:
        fn(*args)
    except requests.RequestException:
        pass


def test_a_damaged_snapshot_loads_what_precedes_the_damage(start_server, tmp_path):
    path = tmp_path / "cache.snap"
    flags = ["--snapshot-path", str(path)] + SNAPSHOT_FLAGS
    first = start_server(*flags)
    fill(first.url, [f"d-{i}" for i in range(20_000)], lambda i: "v" * 100)
    stop_ok(first)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size * 6 // 10)

    second = start_server(*flags)
    log = second.stderr()
    assert re.search(rf"snapshot {re.escape(str(path))} is damaged at offset \d+: .*truncated", log), log
    loaded, _ = loaded_line(second)
    assert 0 < loaded < 20_000
    assert requests.get(f"{second.url}/health", timeout=5).status_code == 200


def test_files_that_are_not_snapshots_are_moved_aside_not_overwritten(start_server, tmp_path):
    path = tmp_path / "cache.snap"
    unknown_version = b"KVCSNAP\n" + struct.pack("<I", 99) + bytes(24)
    for content in (b"this is not a snapshot\n", unknown_version):
        path.write_bytes(content)
        server = start_server("--snapshot-path", str(path), *SNAPSHOT_FLAGS)
        assert requests.get(f"{server.url}/health", timeout=5).status_code == 200
        aside = list(tmp_path.glob("cache.snap.bad-*"))
        assert len(aside) == 1 and aside[0].read_bytes() == content, server.stderr()
        assert not path.exists()
        assert re.search(r"error .*cannot be loaded .*moved aside", server.stderr()), server.stderr()
        stop_ok(server)
        aside[0].unlink()
        path.unlink()


def test_a_write_error_is_counted_answered_500_and_shutdown_still_exits_0(start_server, tmp_path):
    path = tmp_path / "no-such-dir" / "cache.snap"
    server = start_server("--snapshot-path", str(path), *SNAPSHOT_FLAGS)
    r = post_snapshot(server.url)
    assert r.status_code == 500
    assert "no-such-dir" in r.json()["message"]
    assert metric(server.url, "kvcache_snapshot_failures_total") == 1
    assert requests.get(f"{server.url}/health", timeout=5).status_code == 200
    stop_ok(server)
    assert "snapshot to" in server.stderr() and "failed" in server.stderr()


def test_interval_writes_snapshots_in_the_background(start_server, tmp_path):
    path = tmp_path / "cache.snap"
    server = start_server("--snapshot-path", str(path), "--snapshot-interval", "200ms")
    requests.post(f"{server.url}/put", data=compact({"key": "k", "value": "v"}), timeout=5)
    deadline = time.monotonic() + 20
    while metric(server.url, "kvcache_snapshot_last_entries") < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metric(server.url, "kvcache_snapshot_last_entries") == 1
    assert path.exists()


def test_snapshot_endpoint_without_snapshot_path_is_404(server):
    r = requests.post(f"{server.url}/snapshot", timeout=5)
    assert r.status_code == 404
    assert "--snapshot-path" in r.json()["message"]
    assert requests.get(f"{server.url}/snapshot", timeout=5).status_code == 405
    assert "kvcache_snapshot_" not in requests.get(f"{server.url}/metrics", timeout=5).text


def test_snapshot_endpoint_needs_the_token_when_one_is_set(start_server, tmp_path):
    token = "snapshot-token-0123456789"
    (tmp_path / "tokens").write_text(token + "\n")
    path = tmp_path / "cache.snap"
    server = start_server("--snapshot-path", str(path), "--auth-token-file", str(tmp_path / "tokens"),
                          *SNAPSHOT_FLAGS)
    assert requests.post(f"{server.url}/snapshot", timeout=5).status_code == 401
    assert not path.exists()
    r = requests.post(f"{server.url}/snapshot", headers={"Authorization": f"Bearer {token}"}, timeout=60)
    assert r.status_code == 200 and path.exists()

"""The operator's commands and HTTP conventions of docs/api.md: POST /flush,
GET /ttl, POST /expire, OPTIONS, and the answer to a POST without a body.

Nothing here depends on the machine's speed: the flush of 2M keys checks what
the other clients get while it runs and what memory is left after it, not
how long it took."""

import re
import threading

import pytest
import requests

from helpers import NOT_FOUND, OK_PUT, RawConn, SANITIZER, SANITIZER_SLOWDOWN, build_request, compact, error_body, get_body, rss_kb, unique

MISSING_BODY = error_body("request body is missing")
TTL_RANGE = "ttl must be an integer between 0 and 2147483647"


def put(c, key, value, ttl=None):
    item = {"key": key, "value": value}
    if ttl is not None:
        item["ttl"] = ttl
    r = c.request("POST", "/put", compact(item))
    assert r.body == OK_PUT, r
    return r


def ttl_of(c, key):
    return c.request("GET", f"/ttl?key={key}")


def expire(c, key, ttl):
    return c.request("POST", "/expire", compact({"key": key, "ttl": ttl}))


def metric(c, name, headers=None):
    text = c.request("GET", "/metrics", headers=headers).body.decode()
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else None


# ---------------------------------------------------------------------------
# a POST without a body


@pytest.mark.parametrize("path", ["/put", "/delete", "/mput", "/mget", "/expire"])
@pytest.mark.parametrize("body", [None, b"", b"  \r\n\t "], ids=["no-body", "empty", "whitespace"])
def test_a_post_without_a_body_says_the_body_is_missing(raw, path, body):
    c = raw()
    r = c.request("POST", path, body)
    assert (r.status, r.body) == (400, MISSING_BODY)
    # Not to be confused with a body that is there and wrong.
    r = c.request("POST", path, b"{")
    assert (r.status, r.body) == (400, error_body("malformed JSON"))


def test_an_empty_chunked_body_is_missing_too_and_bodiless_endpoints_do_not_need_one(raw):
    c = raw()
    c.send(b"POST /put HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    r = c.read_response()
    assert (r.status, r.body) == (400, MISSING_BODY)
    assert c.request("POST", "/flush").status == 200


# ---------------------------------------------------------------------------
# OPTIONS (RFC 9110 9.3.7)

GET_ALLOW = "GET, HEAD, OPTIONS"
POST_ALLOW = "POST, OPTIONS"


@pytest.mark.parametrize(
    "path,allow",
    [("/get", GET_ALLOW), ("/health", GET_ALLOW), ("/metrics", GET_ALLOW), ("/ttl", GET_ALLOW),
     ("/put", POST_ALLOW), ("/delete", POST_ALLOW), ("/mput", POST_ALLOW), ("/mget", POST_ALLOW),
     ("/snapshot", POST_ALLOW), ("/flush", POST_ALLOW), ("/expire", POST_ALLOW)],
)
def test_options_on_an_endpoint_is_204_with_its_methods_and_a_405_lists_the_same(raw, path, allow):
    c = raw()
    r = c.request("OPTIONS", path + "?key=x")
    assert r.status == 204
    assert r.header("Allow") == allow
    assert r.body == b""
    # RFC 9110 8.6: no Content-Length in a 204.
    assert r.header("Content-Length") is None
    wrong = "POST" if allow == GET_ALLOW else "GET"
    for method in (wrong, "PUT", "DELETE", "PATCH", "TRACE"):
        r = c.request(method, path)
        assert r.status == 405, (method, r)
        assert r.header("Allow") == allow
    # The connection is still good.
    assert c.request("GET", "/health").status == 200


def test_options_star_is_the_servers_methods_and_an_unknown_path_is_404(raw):
    c = raw()
    r = c.request("OPTIONS", "*")
    assert r.status == 204
    assert r.header("Allow") == "GET, HEAD, POST, OPTIONS"
    r = c.request("OPTIONS", "/no-such-endpoint")
    assert (r.status, r.body) == (404, error_body("Unknown endpoint."))
    r = c.request("GET", "*")
    assert r.status == 404
    r = c.request("OPTIONS", "/put", headers=[("Connection", "close")])
    assert r.status == 204
    assert r.header("Connection") == "close"
    assert c.wait_closed()


def test_options_is_counted_by_endpoint(raw):
    c = raw()
    before = metric(c, 'kvcache_requests_total{endpoint="put",code="204"}') or 0
    assert c.request("OPTIONS", "/put").status == 204
    assert metric(c, 'kvcache_requests_total{endpoint="put",code="204"}') == before + 1


# ---------------------------------------------------------------------------
# GET /ttl


def test_ttl_of_a_key_without_expiry_is_minus_one_and_of_a_miss_404(raw):
    c = raw()
    key = unique()
    r = ttl_of(c, key)
    assert (r.status, r.body) == (404, NOT_FOUND)
    put(c, key, "v")
    r = ttl_of(c, key)
    assert (r.status, r.body) == (200, compact({"status": "OK", "key": key, "ttl": -1}))
    assert r.header("Content-Type") == "application/json"


def test_ttl_counts_whole_seconds_down_from_the_puts_ttl(raw):
    c = raw()
    key = unique()
    put(c, key, "v", ttl=1000)
    r = ttl_of(c, key)
    assert r.status == 200
    # Rounded up, never more than it was given (a slow box may take a second between the two).
    assert r.json()["ttl"] in (999, 1000)


def test_ttl_head_and_query_errors_and_escaping(raw):
    c = raw()
    key = "a b/\"q\"" + unique()
    put(c, key, "v", ttl=50)
    encoded = requests.utils.quote(key, safe="")
    get = c.request("GET", f"/ttl?key={encoded}")
    assert get.status == 200
    assert get.json() == {"status": "OK", "key": key, "ttl": get.json()["ttl"]}
    c.send(build_request("HEAD", f"/ttl?key={encoded}"))
    head = c.read_response(head_only=True)
    assert head.status == 200
    assert head.header("Content-Length") == get.header("Content-Length")
    c.send(build_request("HEAD", "/ttl?key=nope-" + unique()))
    assert c.read_response(head_only=True).status == 404
    # Nothing followed either head: the next response is the next request's.
    assert c.request("GET", "/ttl").body == error_body("key is required")
    assert c.request("GET", "/ttl?key=").body == error_body("key must not be empty")
    assert c.request("GET", "/ttl?key=" + "k" * 257).body == error_body("key exceeds 256 characters")
    assert c.request("GET", "/ttl?key=%zz").body == error_body("malformed percent-escape in query")
    assert c.request("GET", "/ttl?key=%C3%A9").body == error_body("key must be ASCII")


def test_ttl_is_not_a_hit_or_a_miss(raw):
    c = raw()
    key = unique()
    put(c, key, "v")
    hits, misses = metric(c, "kvcache_hits_total"), metric(c, "kvcache_misses_total")
    assert ttl_of(c, key).status == 200
    assert ttl_of(c, unique()).status == 404
    assert (metric(c, "kvcache_hits_total"), metric(c, "kvcache_misses_total")) == (hits, misses)


# ---------------------------------------------------------------------------
# POST /expire


def test_expire_sets_changes_and_removes_a_ttl_keeping_the_value(raw):
    c = raw()
    key, value = unique(), "the value"
    put(c, key, value)
    r = expire(c, key, 100)
    assert (r.status, r.body) == (200, compact({"status": "OK", "message": "Key expiry set."}))
    assert ttl_of(c, key).json()["ttl"] in (99, 100)
    assert expire(c, key, 5000).status == 200
    assert ttl_of(c, key).json()["ttl"] in (4999, 5000)
    r = expire(c, key, 0)
    assert (r.status, r.body) == (200, compact({"status": "OK", "message": "Key expiry removed."}))
    assert ttl_of(c, key).json()["ttl"] == -1
    assert c.request("GET", f"/get?key={key}").body == get_body(key, value)


def test_expire_makes_a_key_expire(raw):
    c = raw()
    key = unique()
    put(c, key, "v", ttl=1000)
    assert expire(c, key, 1).status == 200
    # Bounded: at most 1 s and one tick late, with slack for a loaded box.
    for _ in range(100):
        if c.request("GET", f"/get?key={key}").status == 404:
            break
        threading.Event().wait(0.05 * SANITIZER_SLOWDOWN)
    assert c.request("GET", f"/get?key={key}").status == 404
    assert ttl_of(c, key).status == 404
    assert expire(c, key, 10).status == 404


def test_expire_errors(raw):
    c = raw()
    key = unique()
    r = expire(c, key, 10)
    assert (r.status, r.body) == (404, NOT_FOUND)
    put(c, key, "v")
    cases = [
        (compact({"key": key}), "ttl is required"),
        (compact({"ttl": 5}), "key is required"),
        (compact({"key": 5, "ttl": 5}), "key must be a string"),
        (compact({"key": "", "ttl": 5}), "key must not be empty"),
        (compact({"key": "k" * 257, "ttl": 5}), "key exceeds 256 characters"),
        (compact({"key": key, "ttl": -1}), TTL_RANGE),
        (compact({"key": key, "ttl": 2147483648}), TTL_RANGE),
        (compact({"key": key, "ttl": "5"}), TTL_RANGE),
        (compact({"key": key, "ttl": 1.5}), TTL_RANGE),
        (b"[]", "body must be a JSON object"),
        (b"{\"key\":", "malformed JSON"),
    ]
    for body, message in cases:
        r = c.request("POST", "/expire", body)
        assert (r.status, r.body) == (400, error_body(message)), body
    assert ttl_of(c, key).json()["ttl"] == -1
    assert expire(c, key, 2147483647).status == 200


# ---------------------------------------------------------------------------
# POST /flush


def test_flush_empties_the_cache_and_is_counted(start_server):
    server = start_server("--memory-limit", "64M")
    with RawConn(server.port) as c:
        keys = [unique() for _ in range(300)]
        for i in range(0, 300, 100):
            items = [{"key": k, "value": "v" * 100, "ttl": 1000 if j % 2 else 0} for j, k in enumerate(keys[i:i + 100])]
            assert c.request("POST", "/mput", compact({"items": items})).status == 200
        assert metric(c, "kvcache_flushes_total") == 0
        r = c.request("POST", "/flush")
        assert (r.status, r.body) == (200, compact({"status": "OK", "message": "Cache flushed.", "entries": 300}))
        assert metric(c, "kvcache_entries") == 0
        assert metric(c, "kvcache_memory_used_bytes") == 0
        assert metric(c, "kvcache_flushes_total") == 1
        assert metric(c, 'kvcache_requests_total{endpoint="flush",code="200"}') == 1
        r = c.request("POST", "/mget", compact({"keys": keys[:5]}))
        assert r.json()["values"] == [None] * 5
        # The cache works on: put, get, TTL.
        put(c, keys[0], "again", ttl=100)
        assert c.request("GET", f"/get?key={keys[0]}").body == get_body(keys[0], "again")
        assert ttl_of(c, keys[0]).status == 200
        r = c.request("POST", "/flush", b"ignored")
        assert r.json()["entries"] == 1


def test_flush_and_expire_and_ttl_need_the_token(start_server, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("secret-token-0123456789\n")
    server = start_server("--auth-token-file", str(tokens))
    auth = [("Authorization", "Bearer secret-token-0123456789")]
    with RawConn(server.port) as c:
        key = unique()
        assert c.request("POST", "/put", compact({"key": key, "value": "v"}), headers=auth).status == 200
        for method, target, body in [("POST", "/flush", None), ("GET", f"/ttl?key={key}", None),
                                     ("POST", "/expire", compact({"key": key, "ttl": 1})),
                                     ("OPTIONS", "/put", None), ("OPTIONS", "*", None)]:
            assert c.request(method, target, body).status == 401, (method, target)
        assert c.request("GET", f"/get?key={key}", headers=auth).status == 200
        assert c.request("OPTIONS", "/health").status == 204
        assert c.request("POST", "/flush", headers=auth).json()["entries"] == 1
        assert c.request("GET", f"/get?key={key}", headers=auth).status == 404


def test_after_a_flush_the_next_snapshot_is_empty(start_server, tmp_path):
    path = tmp_path / "cache.snap"
    flags = ["--snapshot-path", str(path), "--snapshot-interval", "0"]
    server = start_server(*flags)
    with RawConn(server.port) as c:
        for i in range(50):
            put(c, f"k{i}", "v")
        assert c.request("POST", "/snapshot").json()["entries"] == 50
        assert c.request("POST", "/flush").json()["entries"] == 50
        assert c.request("POST", "/snapshot").json()["entries"] == 0
    assert server.stop(timeout=60) == 0
    server = start_server(*flags)
    with RawConn(server.port) as c:
        assert metric(c, "kvcache_entries") == 0
        assert c.request("GET", "/get?key=k1").status == 404


def test_ttls_set_and_removed_by_expire_survive_a_restart(start_server, tmp_path):
    path = tmp_path / "cache.snap"
    flags = ["--snapshot-path", str(path), "--snapshot-interval", "0"]
    server = start_server(*flags)
    with RawConn(server.port) as c:
        put(c, "gains", "a")
        put(c, "loses", "b", ttl=100)
        put(c, "changes", "c", ttl=100)
        assert expire(c, "gains", 3000).status == 200
        assert expire(c, "loses", 0).status == 200
        assert expire(c, "changes", 5000).status == 200
    assert server.stop(timeout=60) == 0  # writes the final snapshot
    server = start_server(*flags)
    with RawConn(server.port) as c:
        assert ttl_of(c, "gains").json()["ttl"] in range(2990, 3001)
        assert ttl_of(c, "loses").json()["ttl"] == -1
        assert ttl_of(c, "changes").json()["ttl"] in range(4990, 5001)
        assert c.request("GET", "/get?key=gains").body == get_body("gains", "a")
        assert c.request("GET", "/get?key=loses").body == get_body("loses", "b")


def test_flush_of_2m_keys_serves_other_clients_meanwhile_and_gives_the_memory_back(start_server):
    server = start_server("--memory-limit", "1G", "--threads", "2")
    n, batch = 2_000_000, 1000
    rss_empty = rss_kb(server.proc.pid)
    with RawConn(server.port, timeout=60) as c:
        for start in range(0, n, batch):
            body = b'{"items":[' + b",".join(
                b'{"key":"key:%d","value":"value-of-%d"}' % (i, i) for i in range(start, start + batch)) + b"]}"
            r = c.request("POST", "/mput", body)
            assert r.status == 200, r
        assert metric(c, "kvcache_entries") == n
        used_full = metric(c, "kvcache_memory_used_bytes")
        rss_full = rss_kb(server.proc.pid)
        assert rss_full - rss_empty > used_full / 1024 / 2

        # Other clients put and read keys of their own the whole time.
        done = threading.Event()
        problems, served = [], [0]

        def client(index):
            with RawConn(server.port, timeout=60) as other:
                i = 0
                while not done.is_set() or i < 20:
                    key = f"other:{index}:{i}"
                    r = other.request("POST", "/put", compact({"key": key, "value": "x"}))
                    if r.body != OK_PUT:
                        problems.append(r)
                    r = other.request("GET", f"/get?key={key}")
                    # The flush may remove a key put into a shard it had not emptied yet.
                    if (r.status, r.body) not in ((200, get_body(key, "x")), (404, NOT_FOUND)):
                        problems.append(r)
                    served[0] += 2
                    i += 1

        clients = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in clients:
            t.start()
        r = c.request("POST", "/flush")
        done.set()
        for t in clients:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in clients)
        assert r.status == 200, r
        assert r.json()["entries"] >= n
        assert not problems, problems[:3]
        assert served[0] >= 4 * 40
        # Only what the clients put after their shard was emptied is left.
        left = metric(c, "kvcache_entries")
        assert left <= served[0]
        used = metric(c, "kvcache_memory_used_bytes")
        assert used < used_full / 50, (used, used_full)
        rss_after = rss_kb(server.proc.pid)
        # The pages went back to the kernel, not just out of the accounting (not
        # under a sanitizer: its quarantine keeps the freed index tables resident).
        if not SANITIZER:
            assert rss_after - rss_empty < (rss_full - rss_empty) / 4, (rss_empty, rss_full, rss_after)
        print(f"flush of {n} keys: {served[0]} requests of other clients served; memory used "
              f"{used_full:.0f} -> {used:.0f} bytes, RSS {rss_empty} -> {rss_full} -> {rss_after} KiB")
        assert c.request("GET", "/get?key=key:12345").status == 404
        put(c, "key:12345", "back")
        assert c.request("GET", "/get?key=key:12345").body == get_body("key:12345", "back")

"""gzip: compressed responses above the threshold for clients that accept it
(q-values honoured, never single-key answers), gzip request bodies with the
64 KiB limit on the decompressed size, corrupt streams, unknown encodings."""

import gzip
import json
import zlib

import pytest
import requests

from helpers import OK_HEALTH, OK_MPUT, OK_PUT, RawConn, build_request, compact, error_body, get_body, unique

VALUE = ("cache value text " * 8)[:128]  # 128-byte text values, as in the benchmark


def gz(data):
    return gzip.compress(data if isinstance(data, bytes) else data.encode())


@pytest.fixture
def keys(server):
    """100 keys with 128-byte values, stored."""
    names = [unique("gz") for _ in range(100)]
    r = requests.post(server.url + "/mput", data=compact({"items": [{"key": k, "value": VALUE} for k in names]}),
                      timeout=5)
    assert r.status_code == 200, r.text
    return names


def mget(conn, names, accept=None):
    headers = [("Accept-Encoding", accept)] if accept is not None else []
    return conn.request("POST", "/mget", compact({"keys": names}), headers=headers)


def test_large_mget_is_compressed_when_gzip_is_accepted(raw, keys):
    c = raw()
    plain = mget(c, keys)
    assert plain.status == 200
    assert plain.header("Content-Encoding") is None
    assert plain.header("Vary") == "Accept-Encoding"
    assert json.loads(plain.body)["values"] == [VALUE] * 100

    packed = mget(c, keys, "gzip, deflate, br")
    assert packed.status == 200
    assert packed.header("Content-Encoding") == "gzip"
    assert packed.header("Vary") == "Accept-Encoding"
    assert int(packed.header("Content-Length")) == len(packed.body)
    assert len(packed.body) < len(plain.body) / 2
    assert gzip.decompress(packed.body) == plain.body
    # The connection goes on as usual after a compressed response.
    assert mget(c, keys[:1]).status == 200


@pytest.mark.parametrize("accept, compressed", [
    ("gzip", True), ("GZIP;q=0.5", True), ("x-gzip", True), ("*", True), ("br;q=1, gzip;q=0.1", True),
    ("gzip;q=0", False), ("gzip;q=0.000, *", False), ("*;q=0", False), ("identity", False), ("br, deflate", False),
    ("", False),
])
def test_accept_encoding_q_values(raw, keys, accept, compressed):
    r = mget(raw(), keys, accept)
    assert r.status == 200
    assert (r.header("Content-Encoding") == "gzip") == compressed
    body = gzip.decompress(r.body) if compressed else r.body
    assert json.loads(body)["values"] == [VALUE] * 100


def test_small_and_single_key_answers_are_never_compressed(raw, server):
    c = raw()
    key = unique("gz")
    big = "x" * 256
    assert c.request("POST", "/put", compact({"key": key, "value": big})).body == OK_PUT
    # /get of the largest key+value (an all-escape value would be larger still): still identity.
    for accept in ["gzip", "*"]:
        r = c.request("GET", f"/get?key={key}", headers=[("Accept-Encoding", accept)])
        assert r.status == 200 and r.header("Content-Encoding") is None
        assert r.body == get_body(key, big)
        r = c.request("POST", "/mget", compact({"keys": [key]}), headers=[("Accept-Encoding", accept)])
        assert r.header("Content-Encoding") is None and json.loads(r.body)["values"] == [big]
        r = c.request("POST", "/put", compact({"key": key, "value": big}), headers=[("Accept-Encoding", accept)])
        assert r.header("Content-Encoding") is None and r.body == OK_PUT
        r = c.request("GET", "/get?key=absent-key", headers=[("Accept-Encoding", accept)])
        assert r.status == 404 and r.header("Content-Encoding") is None


def test_metrics_compressed_for_gzip_clients(raw):
    r = raw().request("GET", "/metrics", headers=[("Accept-Encoding", "gzip")])
    assert r.status == 200 and r.header("Content-Encoding") == "gzip"
    assert b"kvcache_gzip_responses_total" in gzip.decompress(r.body)


def test_requests_library_decompresses_transparently(server, keys):
    r = requests.post(server.url + "/mget", json={"keys": keys}, timeout=5)  # sends Accept-Encoding: gzip, deflate
    assert r.headers["Content-Encoding"] == "gzip"
    assert r.json()["values"] == [VALUE] * 100


def test_gzip_request_bodies_round_trip(raw, server):
    c = raw()
    names = [unique("gzin") for _ in range(300)]
    body = compact({"items": [{"key": k, "value": VALUE} for k in names]})
    assert len(body) > 40000
    r = c.request("POST", "/mput", gz(body), headers=[("Content-Encoding", "gzip")])
    assert (r.status, r.body) == (200, OK_MPUT)
    r = c.request("POST", "/mget", gz(compact({"keys": names})), headers=[("Content-Encoding", "GZIP"),
                                                                          ("Accept-Encoding", "gzip")])
    assert r.status == 200 and r.header("Content-Encoding") == "gzip"
    assert json.loads(gzip.decompress(r.body))["values"] == [VALUE] * 300
    key = unique("gzin")
    r = c.request("POST", "/put", gz(compact({"key": key, "value": "v"})), headers=[("Content-Encoding", "x-gzip")])
    assert r.body == OK_PUT
    # Chunked framing around a gzip body, and two gzip members back to back.
    data = gz(compact({"key": key, "value": "w"}))
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(data[i:i + 7]), data[i:i + 7]) for i in range(0, len(data), 7))
    r = c.request("POST", "/put", chunked + b"0\r\n\r\n",
                  headers=[("Content-Encoding", "gzip"), ("Transfer-Encoding", "chunked")])
    assert r.body == OK_PUT
    whole = compact({"key": key, "value": "z"})
    r = c.request("POST", "/put", gz(whole[:10]) + gz(whole[10:]), headers=[("Content-Encoding", "gzip")])
    assert r.body == OK_PUT
    assert c.request("GET", f"/get?key={key}").body == get_body(key, "z")


def test_decompressed_limit_is_64_kib(raw):
    c = raw()
    key = unique("gzlim")
    doc = compact({"key": key, "value": "v"})
    exact = doc + b" " * (65536 - len(doc))  # JSON allows trailing whitespace
    r = c.request("POST", "/put", gz(exact), headers=[("Content-Encoding", "gzip")])
    assert (r.status, r.body) == (200, OK_PUT)
    r = c.request("POST", "/put", gz(exact + b" "), headers=[("Content-Encoding", "gzip")])
    assert r.status == 413
    assert r.body == error_body("request body too large (decompressed)")
    # The body was read whole, so the connection is still in step.
    assert c.request("GET", f"/get?key={key}").body == get_body(key, "v")


def test_zip_bomb_gets_413_every_time(raw, server):
    bomb = gz(b"[" * (32 << 20))  # 32 MiB in ~32 KiB; the server stops after 64 KiB of output
    assert len(bomb) < 65536
    c = raw()
    for _ in range(3):
        r = c.request("POST", "/mput", bomb, headers=[("Content-Encoding", "gzip")])
        assert r.status == 413
    assert c.request("GET", "/health").status == 200


@pytest.mark.parametrize("body", [
    b"not gzip at all",
    gzip.compress(b'{"key":"a","value":"b"}')[:-4],  # truncated
    gzip.compress(b'{"key":"a","value":"b"}') + b"junk",  # trailing garbage
    zlib.compress(b'{"key":"a","value":"b"}'),  # zlib, not gzip
])
def test_corrupt_gzip_gets_400(raw, body):
    c = raw()
    r = c.request("POST", "/put", body, headers=[("Content-Encoding", "gzip")])
    assert (r.status, r.body) == (400, error_body("malformed gzip body"))
    assert c.request("GET", "/health").status == 200


@pytest.mark.parametrize("encoding", ["br", "deflate", "identity", "zstd", "gzip, gzip"])
def test_other_content_encodings_get_415(raw, encoding):
    c = raw()
    r = c.request("POST", "/put", compact({"key": "a", "value": "b"}), headers=[("Content-Encoding", encoding)])
    assert r.status == 415
    assert r.header("Accept-Encoding") == "gzip"
    assert r.body == error_body("unsupported Content-Encoding (only gzip)")
    assert c.request("GET", "/health").status == 200


def test_gzip_counters_in_metrics(server, keys):
    def count():
        text = requests.get(server.url + "/metrics", headers={"Accept-Encoding": "identity"}, timeout=5).text
        return next(float(l.split()[-1]) for l in text.splitlines() if l.startswith("kvcache_gzip_responses_total "))
    before = count()
    requests.post(server.url + "/mget", json={"keys": keys}, headers={"Accept-Encoding": "gzip"}, timeout=5)
    assert count() == before + 1


def test_head_gets_the_headers_of_get_with_gzip_and_no_body(raw, server):
    c = raw()
    for accept in ["gzip", "identity"]:
        headers = [("Accept-Encoding", accept)]
        get = c.request("GET", "/metrics", headers=headers)
        c.send(build_request("HEAD", "/metrics", headers=headers) + build_request("GET", "/health"))
        head = c.read_response(head_only=True)
        assert head.status == 200
        assert head.header("Content-Encoding") == get.header("Content-Encoding")
        assert head.header("Vary") == "Accept-Encoding"
        assert head.header("Content-Length") is not None
        # HEAD's body is cut off: the next response is the GET /health right behind it.
        assert c.read_response().body == OK_HEALTH
    # HEAD /get: never compressed, like GET.
    c.send(build_request("HEAD", "/get?key=absent", headers=[("Accept-Encoding", "gzip")]) +
           build_request("GET", "/health"))
    head = c.read_response(head_only=True)
    assert head.status == 404 and head.header("Content-Encoding") is None
    assert c.read_response().body == OK_HEALTH

"""The HTTP API of docs/api.md: endpoints, exact bodies, JSON and URL
escaping, length and ASCII rules, TTL, mput/mget."""

import json
import time

import pytest

from helpers import (
    NOT_FOUND,
    OK_DELETE,
    OK_HEALTH,
    OK_MPUT,
    OK_PUT,
    compact,
    error_body,
    get_body,
    unique,
)

JSON_CT = "application/json"


def put(s, server, key, value, **extra):
    return s.post(f"{server.url}/put", json={"key": key, "value": value, **extra}, timeout=5)


def put_raw(s, server, body, headers=None):
    if isinstance(body, str):
        body = body.encode()
    return s.post(f"{server.url}/put", data=body, headers=headers or {}, timeout=5)


def get(s, server, key):
    return s.get(f"{server.url}/get", params={"key": key}, timeout=5)


def mget(s, server, keys):
    return s.post(f"{server.url}/mget", json={"keys": keys}, timeout=5)


# ---------------------------------------------------------------------------
# basic endpoints


def test_put_then_get_returns_exact_bodies(session, server):
    key, value = unique(), "hello world"
    r = put(session, server, key, value)
    assert r.status_code == 200
    assert r.content == OK_PUT
    assert r.headers["Content-Type"] == JSON_CT
    r = get(session, server, key)
    assert r.status_code == 200
    assert r.content == get_body(key, value)
    assert r.headers["Content-Type"] == JSON_CT


def test_put_overwrites_existing_value(session, server):
    key = unique()
    assert put(session, server, key, "first").status_code == 200
    r = put(session, server, key, "second")
    assert r.status_code == 200 and r.content == OK_PUT
    assert get(session, server, key).content == get_body(key, "second")


def test_delete_returns_200_then_404(session, server):
    key = unique()
    assert put(session, server, key, "v").status_code == 200
    r = session.post(f"{server.url}/delete", json={"key": key}, timeout=5)
    assert r.status_code == 200
    assert r.content == OK_DELETE
    r = session.post(f"{server.url}/delete", json={"key": key}, timeout=5)
    assert r.status_code == 404
    assert r.content == NOT_FOUND
    r = get(session, server, key)
    assert r.status_code == 404 and r.content == NOT_FOUND


def test_get_missing_key_returns_404_exact_body(session, server):
    r = get(session, server, unique("missing"))
    assert r.status_code == 404
    assert r.content == NOT_FOUND
    assert r.headers["Content-Type"] == JSON_CT


def test_mput_then_mget_returns_values_in_order_with_null_for_missing(session, server):
    k1, k2, k3, missing = unique(), unique(), unique(), unique("missing")
    items = [{"key": k1, "value": "v1"}, {"key": k2, "value": "v2"}, {"key": k3, "value": ""}]
    r = session.post(f"{server.url}/mput", json={"items": items}, timeout=5)
    assert r.status_code == 200
    assert r.content == OK_MPUT
    r = mget(session, server, [k3, missing, k1, k2])
    assert r.status_code == 200
    assert r.content == compact({"status": "OK", "values": ["", None, "v1", "v2"]})
    # mput entries are ordinary entries
    assert get(session, server, k2).content == get_body(k2, "v2")


def test_mput_later_item_wins_for_duplicate_key(session, server):
    k = unique()
    items = [{"key": k, "value": "old"}, {"key": k, "value": "new"}]
    assert session.post(f"{server.url}/mput", json={"items": items}, timeout=5).status_code == 200
    assert get(session, server, k).content == get_body(k, "new")


def test_mget_empty_keys_returns_empty_values(session, server):
    r = mget(session, server, [])
    assert r.status_code == 200
    assert r.content == compact({"status": "OK", "values": []})


def test_health_returns_ok(session, server):
    r = session.get(f"{server.url}/health", timeout=5)
    assert r.status_code == 200
    assert r.content == OK_HEALTH
    assert r.headers["Content-Type"] == JSON_CT


def test_metrics_exposes_hit_and_miss_counters(session, server):
    key = unique()
    put(session, server, key, "v")
    get(session, server, key)  # a hit
    get(session, server, unique("missing"))  # a miss
    r = session.get(f"{server.url}/metrics", timeout=5)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain")
    lines = [ln for ln in r.text.splitlines() if ln and not ln.startswith("#")]
    assert any(ln.startswith("kvcache_") for ln in lines), r.text[:2000]
    assert any("hit" in ln for ln in lines), r.text[:2000]
    assert any("miss" in ln for ln in lines), r.text[:2000]


def metric_sum(text, word):
    """Sum of the samples whose metric name contains `word`."""
    total = 0.0
    for ln in text.splitlines():
        if not ln or ln.startswith("#"):
            continue
        name, _, rest = ln.partition(" ")
        if word in name.split("{")[0]:
            total += float(rest.split()[0])
    return total


def test_metrics_hit_and_miss_counters_count(session, server):
    key = unique()
    put(session, server, key, "v")
    before = session.get(f"{server.url}/metrics", timeout=5).text
    for _ in range(3):
        assert get(session, server, key).status_code == 200
    for _ in range(2):
        assert get(session, server, unique("missing")).status_code == 404
    after = session.get(f"{server.url}/metrics", timeout=5).text
    assert metric_sum(after, "hit") - metric_sum(before, "hit") >= 3
    assert metric_sum(after, "miss") - metric_sum(before, "miss") >= 2


def test_unknown_path_returns_404_json(session, server):
    r = session.get(f"{server.url}/nope", timeout=5)
    assert r.status_code == 404
    assert r.content == error_body("Unknown endpoint.")
    assert r.headers["Content-Type"] == JSON_CT


@pytest.mark.parametrize(
    "method,path,allow",
    [
        ("GET", "/put", "POST, OPTIONS"),
        ("GET", "/delete", "POST, OPTIONS"),
        ("GET", "/mput", "POST, OPTIONS"),
        ("GET", "/mget", "POST, OPTIONS"),
        ("GET", "/flush", "POST, OPTIONS"),
        ("GET", "/expire", "POST, OPTIONS"),
        ("POST", "/get", "GET, HEAD, OPTIONS"),
        ("POST", "/health", "GET, HEAD, OPTIONS"),
        ("POST", "/metrics", "GET, HEAD, OPTIONS"),
        ("POST", "/ttl", "GET, HEAD, OPTIONS"),
        ("PUT", "/put", "POST, OPTIONS"),
        ("DELETE", "/get", "GET, HEAD, OPTIONS"),
    ],
)
def test_wrong_method_returns_405_with_allow_header(session, server, method, path, allow):
    r = session.request(method, f"{server.url}{path}", data=b"{}", timeout=5)
    assert r.status_code == 405
    assert r.headers.get("Allow") == allow
    assert r.content == error_body("Method not allowed.")


# ---------------------------------------------------------------------------
# JSON escaping


ESCAPE_CASES = [
    'quote"inside',
    "back\\slash",
    "new\nline",
    "tab\there",
    "ctl\u0001char",
    "slash/path",
    'mix "\\/\n\r\t\b\f\u0001\u001f\u007f end',
]


@pytest.mark.parametrize("text", ESCAPE_CASES, ids=range(len(ESCAPE_CASES)))
def test_json_escapes_round_trip_through_put_and_get(session, server, text):
    key = unique() + text
    value = text + "|value"
    assert put(session, server, key, value).status_code == 200
    r = get(session, server, key)
    assert r.status_code == 200
    # strict json.loads rejects raw control characters inside strings
    decoded = json.loads(r.content)
    assert decoded == {"status": "OK", "key": key, "value": value}
    assert all(b >= 0x20 for b in r.content), r.content


def test_json_escapes_round_trip_through_mget(session, server):
    keys = [unique() + t for t in ESCAPE_CASES]
    items = [{"key": k, "value": t} for k, t in zip(keys, ESCAPE_CASES)]
    assert session.post(f"{server.url}/mput", json={"items": items}, timeout=5).status_code == 200
    r = mget(session, server, keys)
    assert r.status_code == 200
    assert json.loads(r.content) == {"status": "OK", "values": ESCAPE_CASES}


def test_escaped_solidus_and_unicode_escapes_in_request_are_decoded(session, server):
    base = unique()
    body = '{"key":"%s\\/x\\u0041","value":"\\"q\\"\\u0062"}' % base
    r = put_raw(session, server, body)
    assert r.status_code == 200, r.content
    key = base + "/xA"
    r = get(session, server, key)
    assert r.status_code == 200
    assert json.loads(r.content) == {"status": "OK", "key": key, "value": '"q"b'}


def test_nul_character_is_a_valid_ascii_key_and_value(session, server):
    key = unique() + "\u0000nul"
    value = "a\u0000b"
    assert put(session, server, key, value).status_code == 200
    r = mget(session, server, [key, key[: -len("\u0000nul")]])
    assert r.status_code == 200
    assert json.loads(r.content) == {"status": "OK", "values": [value, None]}
    r = get(session, server, key)  # requests sends %00
    assert r.status_code == 200
    assert json.loads(r.content)["value"] == value


def test_put_accepts_whitespace_and_any_member_order(session, server):
    key = unique()
    body = '\n {\t"value" : "v w" ,\r\n "ttl": 0, "key"\n:\n"%s" }  \n' % key
    r = put_raw(session, server, body)
    assert r.status_code == 200, r.content
    assert get(session, server, key).content == get_body(key, "v w")


def test_extra_members_are_ignored(session, server):
    key = unique()
    body = {"key": key, "value": "v", "extra": {"nested": [1, 2, {"x": None}]}, "n": 1.5, "b": True}
    r = session.post(f"{server.url}/put", json=body, timeout=5)
    assert r.status_code == 200, r.content
    assert get(session, server, key).content == get_body(key, "v")


# ---------------------------------------------------------------------------
# URL decoding on /get


def test_get_query_decodes_plus_and_percent_as_sent_by_requests(session, server):
    key = unique() + " a+b&c=d/%?#"
    assert put(session, server, key, "v").status_code == 200
    r = get(session, server, key)  # requests: ' ' -> '+', '+' -> %2B, '&' -> %26 ...
    assert r.status_code == 200
    assert json.loads(r.content) == {"status": "OK", "key": key, "value": "v"}


@pytest.mark.parametrize("query_suffix", ["a%20b", "a+b", "%61%20%62", "a%20%62"])
def test_get_query_space_encodings_are_equivalent(session, server, query_suffix):
    prefix = unique()
    assert put(session, server, prefix + "a b", "spaced").status_code == 200
    r = session.get(f"{server.url}/get?key={prefix}{query_suffix}", timeout=5)
    assert r.status_code == 200
    assert r.content == get_body(prefix + "a b", "spaced")


def test_get_query_percent_escapes_are_case_insensitive_hex(session, server):
    prefix = unique()
    assert put(session, server, prefix + "/:", "v").status_code == 200
    for q in ("%2F%3A", "%2f%3a"):
        r = session.get(f"{server.url}/get?key={prefix}{q}", timeout=5)
        assert r.status_code == 200, q


def test_get_ignores_other_query_parameters(session, server):
    key = unique()
    assert put(session, server, key, "v").status_code == 200
    r = session.get(f"{server.url}/get?x=1&key={key}&y=2", timeout=5)
    assert r.status_code == 200
    assert r.content == get_body(key, "v")


@pytest.mark.parametrize("bad", ["%zz", "abc%", "abc%4", "%g1", "a%2"])
def test_get_bad_percent_escape_returns_400(raw, bad):
    # raw socket: requests would re-quote a bad escape as %25
    c = raw()
    r = c.request("GET", f"/get?key={bad}")
    assert r.status == 400
    assert r.body == error_body("malformed percent-escape in query")
    assert c.request("GET", "/health").body == OK_HEALTH


@pytest.mark.parametrize(
    "target,message",
    [
        ("/get", "key is required"),
        ("/get?other=1", "key is required"),
        ("/get?key=", "key must not be empty"),
        ("/get?key=" + "a" * 257, "key exceeds 256 characters"),
        ("/get?key=" + "%61" * 257, "key exceeds 256 characters"),
        ("/get?key=caf%C3%A9", "key must be ASCII"),
        ("/get?key=%80", "key must be ASCII"),
    ],
)
def test_get_query_validation_errors(session, server, target, message):
    r = session.get(f"{server.url}{target}", timeout=5)
    assert r.status_code == 400
    assert r.content == error_body(message)


def test_get_key_of_256_percent_escaped_chars_is_found(session, server):
    key = unique("p")
    key = key + "a" * (256 - len(key))
    assert put(session, server, key, "v").status_code == 200
    encoded = "".join(f"%{ord(c):02X}" for c in key)
    r = session.get(f"{server.url}/get?key={encoded}", timeout=5)
    assert r.status_code == 200
    assert r.content == get_body(key, "v")


# ---------------------------------------------------------------------------
# lengths and character set


def pad(prefix, n):
    return prefix + "x" * (n - len(prefix))


def test_key_of_256_chars_is_accepted(session, server):
    key = pad(unique(), 256)
    r = put(session, server, key, "v")
    assert r.status_code == 200, r.content
    assert get(session, server, key).content == get_body(key, "v")


def test_key_of_257_chars_is_rejected(session, server):
    key = pad(unique(), 257)
    r = put(session, server, key, "v")
    assert r.status_code == 400
    assert r.content == error_body("key exceeds 256 characters")
    assert get(session, server, key[:256]).status_code == 404


def test_key_length_is_counted_after_json_unescaping(session, server):
    # 256 characters, each written as a 6-byte \u0041 escape
    body = '{"key":"%s","value":"v"}' % ("\\u0041" * 255 + "\\u0042")
    r = put_raw(session, server, body)
    assert r.status_code == 200, r.content
    key = "A" * 255 + "B"
    assert get(session, server, key).content == get_body(key, "v")
    body = '{"key":"%s","value":"v"}' % ("\\u0041" * 257)
    r = put_raw(session, server, body)
    assert r.status_code == 400
    assert r.content == error_body("key exceeds 256 characters")


def test_value_of_256_chars_is_accepted(session, server):
    key, value = unique(), pad("v", 256)
    r = put(session, server, key, value)
    assert r.status_code == 200, r.content
    assert get(session, server, key).content == get_body(key, value)


def test_value_of_257_chars_is_rejected(session, server):
    key = unique()
    r = put(session, server, key, pad("v", 257))
    assert r.status_code == 400
    assert r.content == error_body("value exceeds 256 characters")
    assert get(session, server, key).status_code == 404


def test_value_length_is_counted_after_json_unescaping(session, server):
    key = unique()
    body = '{"key":"%s","value":"%s"}' % (key, "\\n" * 256)  # 512 bytes raw, 256 decoded
    r = put_raw(session, server, body)
    assert r.status_code == 200, r.content
    assert json.loads(get(session, server, key).content)["value"] == "\n" * 256


def test_empty_value_is_allowed(session, server):
    key = unique()
    r = put(session, server, key, "")
    assert r.status_code == 200
    r = get(session, server, key)
    assert r.status_code == 200
    assert r.content == get_body(key, "")


@pytest.mark.parametrize(
    "field,body_fmt",
    [
        ("key", '{"key":"%s\u00e9","value":"v"}'),  # raw UTF-8 bytes
        ("key", '{"key":"%s\\u00e9","value":"v"}'),  # JSON escape
        ("key", '{"key":"%s\\ud83d\\ude00","value":"v"}'),  # surrogate pair
        ("key", '{"key":"%s\\u0080","value":"v"}'),
        ("value", '{"key":"%s","value":"caf\u00e9"}'),
        ("value", '{"key":"%s","value":"caf\\u00e9"}'),
        ("value", '{"key":"%s","value":"\\ud83d\\ude00"}'),
    ],
    ids=["key-raw-utf8", "key-u00e9", "key-surrogates", "key-u0080",
         "value-raw-utf8", "value-u00e9", "value-surrogates"],
)
def test_non_ascii_is_rejected(session, server, field, body_fmt):
    key = unique()
    r = put_raw(session, server, (body_fmt % key).encode("utf-8"))
    assert r.status_code == 400
    assert r.content == error_body(f"{field} must be ASCII")
    assert get(session, server, key).status_code == 404


# ---------------------------------------------------------------------------
# Content-Type handling


def test_form_content_type_with_json_body_is_parsed_as_json(session, server):
    key = unique()
    r = put_raw(session, server, compact({"key": key, "value": "curl"}),
                headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200, r.content
    assert get(session, server, key).content == get_body(key, "curl")


def test_missing_content_type_is_parsed_as_json(raw, server):
    key = unique()
    c = raw()
    body = compact({"key": key, "value": "none"})
    c.send(b"POST /put HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    r = c.read_response()
    assert r.status == 200
    assert r.body == OK_PUT
    assert c.request("GET", f"/get?key={key}").body == get_body(key, "none")


def test_text_plain_content_type_is_parsed_as_json(session, server):
    key = unique()
    r = put_raw(session, server, compact({"key": key, "value": "t"}), headers={"Content-Type": "text/plain"})
    assert r.status_code == 200


# ---------------------------------------------------------------------------
# TTL


def test_ttl_zero_and_max_mean_present(session, server):
    k0, kmax = unique(), unique()
    assert put(session, server, k0, "zero", ttl=0).status_code == 200
    assert put(session, server, kmax, "max", ttl=2147483647).status_code == 200
    assert get(session, server, k0).content == get_body(k0, "zero")
    # an overflowing expiry computation would make this one expire at once
    assert get(session, server, kmax).content == get_body(kmax, "max")


@pytest.mark.parametrize("ttl", [-1, 1.5, "5", 2147483648, True, [], {}],
                         ids=["neg", "float", "string", "too-big", "bool", "array", "object"])
def test_bad_ttl_is_rejected(session, server, ttl):
    key = unique()
    r = put(session, server, key, "v", ttl=ttl)
    assert r.status_code == 400, r.content
    assert r.content == error_body("ttl must be an integer between 0 and 2147483647")
    assert get(session, server, key).status_code == 404


def test_number_beyond_64_bits_is_rejected(session, server):
    """simdjson cannot represent it, so the whole body is refused, with a
    message that says why rather than "malformed JSON"."""
    key = unique()
    r = put(session, server, key, "v", ttl=99999999999999999999999)
    assert r.status_code == 400, r.content
    assert r.content == error_body("malformed or out-of-range number")
    assert get(session, server, key).status_code == 404


def test_ttl_entry_expires(session, server):
    k1, k0, knone, kmput, kover = unique(), unique(), unique(), unique(), unique()
    assert put(session, server, k1, "short", ttl=1).status_code == 200
    # overwriting replaces value and ttl: kover ends with no expiry
    assert put(session, server, kover, "a", ttl=1).status_code == 200
    assert put(session, server, kover, "b").status_code == 200
    assert put(session, server, k0, "forever", ttl=0).status_code == 200
    assert put(session, server, knone, "forever").status_code == 200
    r = session.post(f"{server.url}/mput", json={"items": [{"key": kmput, "value": "m", "ttl": 1}]}, timeout=5)
    assert r.status_code == 200
    assert get(session, server, k1).status_code == 200
    time.sleep(2.1)
    r = get(session, server, k1)
    assert r.status_code == 404, "ttl=1 entry still present after 2.1 s"
    assert r.content == NOT_FOUND
    assert mget(session, server, [kmput, k0, knone, kover]).json()["values"] == [None, "forever", "forever", "b"]


def test_ttl_one_entry_lives_at_least_half_a_second(session, server):
    """Whatever the put's phase within a clock second, ttl=1 must not expire
    at the next second boundary: puts spread over 1.1 s, each read back
    0.5-0.8 s after it was written. A miss counts only when the whole span
    from sending the put to receiving the get's answer was under 0.95 s, so a
    slow machine (sanitizers, load) can skip checks but never fail a sound one."""
    p = unique()
    written = []  # (key, time the put was sent)
    failures = []
    visited = 0  # keys old enough to have been looked at
    checked = 0  # keys read back within the sound window
    start = time.monotonic()
    for _ in range(400):
        now = time.monotonic()
        if now - start > 1.9:
            break
        if now - start < 1.1 and (not written or now - written[-1][1] >= 0.02):
            key = f"{p}-{len(written)}"
            sent = time.monotonic()
            assert put(session, server, key, "v", ttl=1).status_code == 200
            written.append((key, sent))
        for key, sent in written[visited:]:
            if time.monotonic() - sent < 0.5:
                break
            visited += 1
            r = get(session, server, key)
            span = time.monotonic() - sent
            if span >= 0.95:
                continue  # this process was too slow to tell; skip rather than guess
            checked += 1
            if r.status_code != 200:
                failures.append(f"{key} gone at most {span:.3f}s after put with ttl=1")
        time.sleep(0.005)
    assert not failures, failures[:5]
    if checked < 20:
        pytest.skip(f"only {checked} keys could be read back within 0.95 s of their put on this machine")


# ---------------------------------------------------------------------------
# mput / mget limits and atomicity


def test_mput_with_one_bad_item_stores_nothing(session, server):
    keys = [unique() for _ in range(3)]
    items = [{"key": keys[0], "value": "a"}, {"key": keys[1], "value": "b"}, {"key": keys[2], "value": 5}]
    r = session.post(f"{server.url}/mput", json={"items": items}, timeout=5)
    assert r.status_code == 400
    assert r.content == error_body("items[2]: value must be a string")
    assert mget(session, server, keys).json()["values"] == [None, None, None]


def test_mput_bad_item_does_not_overwrite_existing(session, server):
    k = unique()
    assert put(session, server, k, "orig").status_code == 200
    items = [{"key": k, "value": "changed"}, {"key": "", "value": "x"}]
    r = session.post(f"{server.url}/mput", json={"items": items}, timeout=5)
    assert r.status_code == 400
    assert r.content == error_body("items[1]: key must not be empty")
    assert get(session, server, k).content == get_body(k, "orig")


def test_mput_of_1000_items_is_accepted(session, server):
    p = unique()
    items = [{"key": f"{p}-{i}", "value": str(i)} for i in range(1000)]
    r = session.post(f"{server.url}/mput", json={"items": items}, timeout=10)
    assert r.status_code == 200, r.content
    r = mget(session, server, [f"{p}-{i}" for i in range(1000)])
    assert r.status_code == 200
    assert r.json()["values"] == [str(i) for i in range(1000)]


def test_mput_of_1001_items_is_rejected(session, server):
    p = unique()
    items = [{"key": f"{p}-{i}", "value": "v"} for i in range(1001)]
    r = session.post(f"{server.url}/mput", json={"items": items}, timeout=10)
    assert r.status_code == 400
    assert r.content == error_body("too many items (max 1000)")
    assert mget(session, server, [f"{p}-0", f"{p}-1000"]).json()["values"] == [None, None]


def test_mget_of_1001_keys_is_rejected(session, server):
    r = mget(session, server, [f"k{i}" for i in range(1001)])
    assert r.status_code == 400
    assert r.content == error_body("too many keys (max 1000)")

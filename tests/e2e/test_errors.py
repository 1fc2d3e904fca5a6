"""Every body-validation error of docs/api.md: right status, exact message,
nothing stored, and the keep-alive connection stays usable afterwards."""

import json

import pytest

from helpers import OK_HEALTH, compact, error_body, unique

TTL_MSG = "ttl must be an integer between 0 and 2147483647"
LONG = "x" * 257


def case(endpoint, body, message, absent=(), status=400, id=None):
    if not isinstance(body, (bytes, str)):
        body = compact(body)
    if isinstance(body, str):
        body = body.encode("utf-8")
    return pytest.param(endpoint, body, status, message, list(absent), id=id or f"{endpoint}:{message}")


def _cases():
    c = []
    # --- /put
    k = unique()
    c += [
        case("/put", b"not json", "malformed JSON", id="put:not-json"),
        case("/put", '{"key":"%s","value":"v"' % k, "malformed JSON", [k], id="put:truncated"),
        case("/put", '{"key":"%s","value":"v"} x' % k, "malformed JSON", [k], id="put:trailing-garbage"),
        case("/put", '{"key":"%s","value":"v",}' % k, "malformed JSON", [k], id="put:trailing-comma"),
        case("/put", '{"key":"%s","value":"v\x01"}' % k, "malformed JSON", [k], id="put:raw-control-char"),
        case("/put", '{"key":"%s","value":"\\q"}' % k, "malformed JSON", [k], id="put:bad-escape"),
        case("/put", b"", "request body is missing", id="put:empty-body"),
        case("/put", b"[1,2]", "body must be a JSON object", id="put:array"),
        case("/put", b'"str"', "body must be a JSON object", id="put:string"),
        case("/put", b"null", "body must be a JSON object", id="put:null"),
        case("/put", b"42", "body must be a JSON object", id="put:number"),
    ]
    k = unique()
    c += [
        case("/put", {"value": "v"}, "key is required"),
        case("/put", {"key": 5, "value": "v"}, "key must be a string", id="put:key-number"),
        case("/put", {"key": None, "value": "v"}, "key must be a string", id="put:key-null"),
        case("/put", {"key": [k], "value": "v"}, "key must be a string", id="put:key-array"),
        case("/put", {"key": "", "value": "v"}, "key must not be empty"),
        case("/put", {"key": unique() + LONG, "value": "v"}, "key exceeds 256 characters"),
        case("/put", '{"key":"%s\u00e9","value":"v"}' % k, "key must be ASCII", [k]),
    ]
    k1, k2, k3, k4, k5 = (unique() for _ in range(5))
    c += [
        case("/put", {"key": k1}, "value is required", [k1]),
        case("/put", {"key": k2, "value": 5}, "value must be a string", [k2], id="put:value-number"),
        case("/put", {"key": k2, "value": None}, "value must be a string", [k2], id="put:value-null"),
        case("/put", {"key": k2, "value": {"a": "b"}}, "value must be a string", [k2], id="put:value-object"),
        case("/put", {"key": k3, "value": LONG}, "value exceeds 256 characters", [k3]),
        case("/put", '{"key":"%s","value":"\u00e9"}' % k4, "value must be ASCII", [k4]),
        case("/put", {"key": k5, "value": "v", "ttl": -5}, TTL_MSG, [k5]),
    ]
    # --- /delete
    c += [
        case("/delete", b"{", "malformed JSON"),
        case("/delete", b"[]", "body must be a JSON object"),
        case("/delete", {}, "key is required"),
        case("/delete", {"key": 1}, "key must be a string"),
        case("/delete", {"key": ""}, "key must not be empty"),
        case("/delete", {"key": LONG}, "key exceeds 256 characters"),
        case("/delete", '{"key":"\u00e9"}', "key must be ASCII"),
    ]
    # --- /mput
    a, b = unique(), unique()
    ok_a = {"key": a, "value": "va"}
    c += [
        case("/mput", b"{", "malformed JSON"),
        case("/mput", b"[]", "body must be a JSON object"),
        case("/mput", {}, "items must be an array", id="mput:items-missing"),
        case("/mput", {"items": {"key": a, "value": "v"}}, "items must be an array", [a], id="mput:items-object"),
        case("/mput", {"items": "x"}, "items must be an array", id="mput:items-string"),
        case("/mput", {"items": [{"key": f"{a}-{i}", "value": "v"} for i in range(1001)]},
             "too many items (max 1000)", [f"{a}-0", f"{a}-1000"]),
        case("/mput", {"items": [5]}, "item 0 must be a JSON object"),
        case("/mput", {"items": [ok_a, "x"]}, "item 1 must be a JSON object", [a]),
        case("/mput", {"items": [ok_a, [ok_a]]}, "item 1 must be a JSON object", [a], id="mput:item-array"),
        case("/mput", {"items": [ok_a, {"value": "v"}]}, "items[1]: key is required", [a]),
        case("/mput", {"items": [{"key": 7, "value": "v"}, ok_a]}, "items[0]: key must be a string", [a]),
        case("/mput", {"items": [ok_a, {"key": "", "value": "v"}]}, "items[1]: key must not be empty", [a]),
        case("/mput", {"items": [ok_a, {"key": LONG, "value": "v"}]}, "items[1]: key exceeds 256 characters", [a]),
        case("/mput", '{"items":[%s,{"key":"%s\u00e9","value":"v"}]}' % (compact(ok_a).decode(), b),
             "items[1]: key must be ASCII", [a, b]),
        case("/mput", {"items": [ok_a, {"key": b}]}, "items[1]: value is required", [a, b]),
        case("/mput", {"items": [ok_a, ok_a, ok_a, {"key": b, "value": 1}]},
             "items[3]: value must be a string", [a, b]),
        case("/mput", {"items": [ok_a, {"key": b, "value": LONG}]}, "items[1]: value exceeds 256 characters", [a, b]),
        case("/mput", '{"items":[%s,{"key":"%s","value":"\\u00e9"}]}' % (compact(ok_a).decode(), b),
             "items[1]: value must be ASCII", [a, b]),
        case("/mput", {"items": [ok_a, {"key": b, "value": "v", "ttl": "1"}]}, f"items[1]: {TTL_MSG}", [a, b]),
    ]
    # --- /mget
    c += [
        case("/mget", b"{", "malformed JSON"),
        case("/mget", b"[]", "body must be a JSON object"),
        case("/mget", {}, "keys must be an array", id="mget:keys-missing"),
        case("/mget", {"keys": "a"}, "keys must be an array", id="mget:keys-string"),
        case("/mget", {"keys": [f"k{i}" for i in range(1001)]}, "too many keys (max 1000)"),
        case("/mget", {"keys": ["a", 5]}, "keys[1]: key must be a string"),
        case("/mget", {"keys": ["a", None]}, "keys[1]: key must be a string", id="mget:null-key"),
        case("/mget", {"keys": [""]}, "keys[0]: key must not be empty"),
        case("/mget", {"keys": ["a", "b", LONG]}, "keys[2]: key exceeds 256 characters"),
        case("/mget", '{"keys":["a","\u00e9"]}', "keys[1]: key must be ASCII"),
    ]
    return c


@pytest.mark.parametrize("endpoint,body,status,message,absent", _cases())
def test_body_error(raw, endpoint, body, status, message, absent):
    c = raw()
    r = c.request("POST", endpoint, body=body)
    assert r.status == status, r
    assert r.body == error_body(message)
    assert r.header("Content-Type") == "application/json"
    assert (r.header("Connection") or "").lower() != "close", "validation errors must keep the connection"
    # the same connection is still in sync and usable
    h = c.request("GET", "/health")
    assert h.status == 200 and h.body == OK_HEALTH
    # nothing was stored
    if absent:
        r = c.request("POST", "/mget", body=compact({"keys": absent}))
        assert r.status == 200, r
        assert json.loads(r.body)["values"] == [None] * len(absent)


def test_errors_on_a_requests_session_keep_it_usable(session, server):
    r = session.post(f"{server.url}/put", data=b"{bad", timeout=5)
    assert r.status_code == 400 and r.content == error_body("malformed JSON")
    r = session.post(f"{server.url}/put", data=b"[]", timeout=5)
    assert r.status_code == 400 and r.content == error_body("body must be a JSON object")
    key = unique()
    r = session.post(f"{server.url}/put", json={"key": key, "value": "fine"}, timeout=5)
    assert r.status_code == 200
    r = session.get(f"{server.url}/get", params={"key": key}, timeout=5)
    assert r.json() == {"status": "OK", "key": key, "value": "fine"}

"""Bad input is refused before any request is sent, with the server's messages
(src/store/validation.h, src/api/request_body.cc); tests/e2e/test_client.py
checks the same messages against a real server."""

import pytest

import kvcache
from kvcache import errors
from kvcache.client import Client


class NoNetwork(Client):
    def request(self, *args, **kwargs):
        raise AssertionError("a request was sent")


@pytest.fixture
def client():
    return NoNetwork("http://127.0.0.1:1")


@pytest.mark.parametrize("key,cls,message", [
    ("", kvcache.EmptyKey, "key must not be empty"),
    ("k" * 257, kvcache.KeyTooLong, "key exceeds 256 characters"),
    ("é" * 129, kvcache.KeyTooLong, "key exceeds 256 characters"),  # 258 bytes
    ("clé", kvcache.KeyNotAscii, "key must be ASCII"),
    (b"bytes", kvcache.InvalidKey, "key must be a string"),
    (None, kvcache.InvalidKey, "key must be a string"),
])
def test_bad_keys(client, key, cls, message):
    for call in (lambda: client.get(key), lambda: client.put(key, "v"), lambda: client.delete(key)):
        with pytest.raises(cls) as e:
            call()
        assert e.value.message == message and e.value.status is None
        assert isinstance(e.value, kvcache.BadRequest)
    with pytest.raises(cls) as e:
        client.mget(["ok", key])
    assert e.value.message == f"keys[1]: {message}"
    with pytest.raises(cls) as e:
        client.mput([("ok", "v"), (key, "v")])
    assert e.value.message == f"items[1]: {message}"


def test_key_of_256_bytes_is_fine():
    from kvcache.validation import check_item, check_key
    check_key("k" * 256)
    check_item("k" * 256, "v" * 256, 2147483647)


@pytest.mark.parametrize("value,cls,message", [
    ("v" * 257, kvcache.ValueTooLong, "value exceeds 256 characters"),
    ("naïve", kvcache.ValueNotAscii, "value must be ASCII"),
    (5, kvcache.InvalidValue, "value must be a string"),
])
def test_bad_values(client, value, cls, message):
    with pytest.raises(cls) as e:
        client.put("k", value)
    assert e.value.message == message
    with pytest.raises(cls) as e:
        client.mput({"a": "v", "b": value})
    assert e.value.message == f"items[1]: {message}"


@pytest.mark.parametrize("ttl", [-1, 2147483648, 1.5, "10", True])
def test_bad_ttl(client, ttl):
    with pytest.raises(kvcache.InvalidTTL) as e:
        client.put("k", "v", ttl=ttl)
    assert e.value.message == "ttl must be an integer between 0 and 2147483647"


def test_key_checked_before_value_as_the_server_does(client):
    with pytest.raises(kvcache.EmptyKey):
        client.put("", "v" * 300)


def test_a_batch_is_refused_whole(client):
    with pytest.raises(kvcache.ValueTooLong):
        client.mput([(f"k{i}", "v") for i in range(2500)] + [("last", "v" * 300)])


def test_bad_item_shape(client):
    with pytest.raises(ValueError):
        client.mput([("only-a-key",)])


@pytest.mark.parametrize("status,message,cls", [
    (400, "key exceeds 256 characters", kvcache.KeyTooLong),
    (400, "keys[7]: key must be ASCII", kvcache.KeyNotAscii),
    (400, "items[0]: value exceeds 256 characters", kvcache.ValueTooLong),
    (400, "too many keys (max 1000)", kvcache.TooManyItems),
    (400, "malformed JSON", kvcache.BadRequest),
    (401, "invalid bearer token", kvcache.Unauthorized),
    (404, "Snapshots are off: start kvcache with --snapshot-path.", kvcache.NotFound),
    (409, "A snapshot is already being written.", kvcache.SnapshotInProgress),
    (413, "request body too large", kvcache.PayloadTooLarge),
    (503, "too many connections", kvcache.Overloaded),
    (500, "snapshot failed: disk full", kvcache.ServerError),
    (502, "bad or no response from the kvcache node", kvcache.ServerError),
])
def test_server_errors_are_typed(status, message, cls):
    e = errors.error_for(status, message, "http://n")
    assert type(e) is cls and e.message == message and e.status == status and e.node == "http://n"
    assert isinstance(e, kvcache.KvcacheError)
    assert str(e) == f"{status} {message} (http://n)"


def test_overloaded_and_timeout_are_unavailable():
    assert issubclass(kvcache.Overloaded, kvcache.Unavailable)
    assert issubclass(kvcache.Timeout, kvcache.Unavailable) and issubclass(kvcache.Timeout, TimeoutError)


@pytest.mark.parametrize("url", ["ftp://x", "127.0.0.1:7171", "http://x/path", "http://x/?a=1"])
def test_bad_urls(url):
    with pytest.raises(ValueError):
        Client(url)


def test_ca_needs_https():
    with pytest.raises(ValueError):
        Client("http://127.0.0.1:7171", ca="/etc/ssl/certs/ca-certificates.crt")


def test_bad_timeout():
    with pytest.raises(ValueError):
        Client("http://127.0.0.1:7171", timeout=0)


def test_batch_bodies_fit_the_servers_limits():
    import json
    from kvcache.client import _bodies
    items = [json.dumps({"key": f"k{i:0250d}", "value": "\u0001" * 256}).encode() for i in range(3000)]
    bodies = list(_bodies(b"items", items))
    assert all(len(b) <= 65536 for b in bodies)
    assert [e for b in bodies for e in json.loads(b)["items"]] == [json.loads(e) for e in items]
    small = list(_bodies(b"keys", [json.dumps(f"k{i}").encode() for i in range(2500)]))
    assert [len(json.loads(b)["keys"]) for b in small] == [1000, 1000, 500]
    assert list(_bodies(b"keys", [])) == []

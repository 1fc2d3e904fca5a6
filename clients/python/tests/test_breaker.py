"""The circuit breaker with a fake clock and probes run inline, and the Cluster's
routing with fake nodes: no process, no socket."""

import json
import logging
import threading

import pytest

import kvcache
from kvcache.breaker import CLOSED, OPEN, PROBING, Breaker, BreakerPolicy


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def make(failures=3, backoff=1.0, max_backoff=4.0, healthy=True):
    clock = Clock()
    state = {"healthy": healthy, "probes": 0, "pending": [], "changes": []}

    def probe():
        state["probes"] += 1
        if isinstance(state["healthy"], Exception):
            raise state["healthy"]
        return state["healthy"]

    b = Breaker("node 1", BreakerPolicy(failures, backoff, max_backoff), probe,
                on_change=lambda br: state["changes"].append(br.state), clock=clock,
                start=state["pending"].append)
    return b, clock, state


def test_opens_after_the_configured_run_of_failures(caplog):
    b, clock, state = make(failures=3)
    with caplog.at_level(logging.INFO, logger="kvcache"):
        b.failure("refused")
        b.failure("refused")
        assert not b.is_open
        b.failure("timeout")
    assert b.is_open and b.state == OPEN and state["changes"] == [OPEN]
    assert "circuit breaker open after 3 failures in a row (last: timeout)" in caplog.text
    assert b.stats() == {"state": OPEN, "opened": 1, "closed": 0, "failures": 3, "probes": 0, "probe_failures": 0}


def test_a_success_ends_the_run():
    b, _, _ = make(failures=3)
    for _ in range(10):
        b.failure()
        b.failure()
        b.success()
    assert not b.is_open
    assert b.stats()["failures"] == 20


def test_one_probe_after_the_backoff_closes_it(caplog):
    b, clock, state = make(failures=1, backoff=1.0)
    b.failure()
    clock.now += 0.99
    assert b.is_open and not state["pending"]
    clock.now += 0.01
    assert b.is_open and b.state == PROBING
    assert b.is_open and len(state["pending"]) == 1  # one probe, however many callers look
    with caplog.at_level(logging.INFO, logger="kvcache"):
        state["pending"].pop()()
    assert not b.is_open and b.state == CLOSED and state["changes"] == [OPEN, CLOSED]
    assert "circuit breaker closed" in caplog.text
    assert b.stats() == {"state": CLOSED, "opened": 1, "closed": 1, "failures": 1, "probes": 1, "probe_failures": 0}


@pytest.mark.parametrize("outcome", [False, kvcache.Unavailable("refused"), RuntimeError("boom")])
def test_a_failed_probe_doubles_the_backoff_up_to_the_max(outcome):
    b, clock, state = make(failures=1, backoff=1.0, max_backoff=4.0, healthy=outcome)
    b.failure()
    waits = []
    for _ in range(5):
        start = clock.now
        while not state["pending"]:
            clock.now += 0.25
            assert b.is_open
        waits.append(clock.now - start)
        state["pending"].pop()()
        assert b.state == OPEN
    assert waits == [1.0, 2.0, 4.0, 4.0, 4.0]
    assert b.stats()["probe_failures"] == 5 and b.stats()["opened"] == 1
    state["healthy"] = True
    clock.now += 4
    assert b.is_open
    state["pending"].pop()()
    assert not b.is_open
    # the next opening starts from the first backoff again
    b.failure()
    clock.now += 1.0
    assert b.is_open and state["pending"]


def test_failures_while_open_do_not_reopen_or_extend():
    b, clock, state = make(failures=1)
    b.failure()
    for _ in range(5):
        b.failure()
    assert b.stats()["opened"] == 1
    clock.now += 1
    assert b.is_open and state["pending"]


@pytest.mark.parametrize("args", [(0, 1, 1), (1, 0, 1), (1, 2, 1), (1.5, 1, 1)])
def test_bad_policy(args):
    with pytest.raises(ValueError):
        BreakerPolicy(*args)


# -- the Cluster's routing, with fake nodes --------------------------------

class FakeNodes:
    """Replaces each node's request(): answers from a dict per node, or fails as told."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.data = {i: {} for i in cluster.nodes}
        self.fail = {}  # id -> exception to raise
        self.calls = []
        self.lock = threading.Lock()
        for i, client in cluster.nodes.items():
            client.request = self._handler(i)

    def _handler(self, i):
        def request(method, target, body=None, deadline=None):
            with self.lock:
                self.calls.append((i, target.split("?")[0]))
            if i in self.fail:
                raise self.fail[i]
            store = self.data[i]
            doc = json.loads(body) if body else None
            if target.startswith("/get?key="):
                from urllib.parse import unquote
                key = unquote(target[9:])
                if key in store:
                    return 200, json.dumps({"status": "OK", "key": key, "value": store[key]}).encode()
                return 404, b'{"status":"ERROR","message":"Key not found."}'
            if target == "/put":
                store[doc["key"]] = doc["value"]
                return 200, b'{"status":"OK","message":"Key inserted/updated successfully."}'
            if target == "/mget":
                return 200, json.dumps({"status": "OK", "values": [store.get(k) for k in doc["keys"]]}).encode()
            if target == "/mput":
                for item in doc["items"]:
                    store[item["key"]] = item["value"]
                return 200, b'{"status":"OK","message":"Items inserted/updated successfully."}'
            if target == "/health":
                return 200, b'{"status":"OK"}'
            raise AssertionError(target)
        return request


@pytest.fixture
def cluster():
    c = kvcache.Cluster(["http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"], failures=2, backoff=60)
    yield c
    c.close()


def test_each_key_goes_to_its_owner(cluster):
    fake = FakeNodes(cluster)
    keys = [f"key:{i}" for i in range(300)]
    for k in keys:
        cluster.put(k, "v" + k)
    for i, store in fake.data.items():
        assert sorted(store) == sorted(k for k in keys if cluster.ring.owner(k) == i)
    assert all(cluster.get(k) == "v" + k for k in keys)
    assert cluster.get("absent") is None


def test_batches_split_by_owner_and_merged_in_order(cluster):
    fake = FakeNodes(cluster)
    keys = [f"key:{i}" for i in range(2500)]
    cluster.mput({k: "v" + k for k in keys})
    assert sum(len(s) for s in fake.data.values()) == 2500
    # one request per owner and per 1,000 keys
    owners = [cluster.ring.owner(k) for k in keys]
    expected = sum(-(-owners.count(i) // 1000) for i in (1, 2, 3))
    assert len([c for c in fake.calls if c[1] == "/mput"]) == expected
    order = keys[::-1] + ["absent"]
    assert cluster.mget(order) == ["v" + k for k in keys[::-1]] + [None]
    assert cluster.mget([]) == []


def test_unreachable_node_retried_once_on_the_next_owner_then_breaker_opens(cluster):
    fake = FakeNodes(cluster)
    keys = [k for k in (f"key:{i}" for i in range(200)) if cluster.ring.owner(k) == 2]
    fake.fail[2] = kvcache.Unavailable("connection refused")
    cluster.put(keys[0], "a")  # failure 1, answered by the next owner
    nxt = cluster.ring.owner(keys[0], {2})
    assert fake.data[nxt] == {keys[0]: "a"}
    assert cluster.get(keys[1]) is None  # failure 2: the breaker opens
    assert cluster.breaker_stats()[2]["state"] == "open"
    fake.calls.clear()
    assert cluster.get(keys[0]) == "a"  # straight to the next owner now
    assert fake.calls == [(nxt, "/get")]
    # batches too
    cluster.mput({k: "b" for k in keys})
    assert cluster.mget(keys) == ["b"] * len(keys)
    assert all(i != 2 for i, _ in fake.calls)


def test_a_batch_part_whose_node_is_unreachable_goes_to_the_next_owners(cluster):
    fake = FakeNodes(cluster)
    keys = [f"key:{i}" for i in range(300)]
    fake.fail[3] = kvcache.Unavailable("connection reset")
    cluster.mput({k: "v" for k in keys})
    assert not fake.data[3]
    assert all(fake.data[cluster.ring.owner(k, {3})][k] == "v" for k in keys)
    assert cluster.mget(keys) == ["v"] * 300


def test_a_timeout_is_not_retried(cluster):
    fake = FakeNodes(cluster)
    key = next(k for k in (f"key:{i}" for i in range(100)) if cluster.ring.owner(k) == 1)
    fake.fail[1] = kvcache.Timeout("no answer within 5 s")
    with pytest.raises(kvcache.Timeout):
        cluster.get(key)
    assert fake.calls == [(1, "/get")]
    with pytest.raises(kvcache.Timeout):
        cluster.mget([key])
    assert cluster.breaker_stats()[1]["state"] == "open"  # 2 failures


def test_503_counts_for_the_breaker_and_is_raised():
    c = kvcache.Cluster({7: "http://127.0.0.1:1"}, failures=2, backoff=60)
    c.nodes[7].request = lambda *a, **k: (503, b'{"status":"ERROR","message":"too many connections"}')
    for _ in range(2):
        with pytest.raises(kvcache.Overloaded) as e:
            c.get("k")
        assert e.value.message == "too many connections"
    assert c.breaker_stats()[7]["state"] == "open"
    with pytest.raises(kvcache.Unavailable, match="every node's circuit breaker is open"):
        c.get("k")
    c.close()


def test_node_lists():
    assert kvcache.Cluster(["http://a:1", "http://b:2"]).ring.ids == (1, 2)
    assert kvcache.Cluster({3: "http://a:1", 9: "http://b:2"}).ring.ids == (3, 9)
    assert kvcache.Cluster([(4, "http://a:1")]).ring.ids == (4,)
    with pytest.raises(ValueError):
        kvcache.Cluster([])


def test_keys_come_back_after_the_probe_closes_the_breaker(cluster):
    import time
    fake = FakeNodes(cluster)
    key = next(k for k in (f"key:{i}" for i in range(200)) if cluster.ring.owner(k) == 2)
    cluster.get(key)  # remembered: node 2
    fake.fail[2] = kvcache.Unavailable("connection refused")
    cluster.get(key)
    cluster.get(key)
    assert cluster.breaker_stats()[2]["state"] == "open"
    del fake.fail[2]
    cluster.breakers[2]._retry_at = 0  # the backoff is over
    fake.calls.clear()
    cluster.get(key)  # starts the probe (on its thread) and goes to the next owner meanwhile
    deadline = time.monotonic() + 5
    while cluster.breaker_stats()[2]["state"] != "closed" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cluster.breaker_stats()[2] == {"state": "closed", "opened": 1, "closed": 1, "failures": 2,
                                          "probes": 1, "probe_failures": 0}
    assert (2, "/health") in fake.calls  # the get itself went to either, by the time the probe took
    fake.calls.clear()
    cluster.get(key)
    assert fake.calls == [(2, "/get")]


@pytest.mark.parametrize("status, message, error", [
    (400, "keys[0]: key exceeds 256 characters", kvcache.KeyTooLong),
    (401, "invalid bearer token", kvcache.Unauthorized),
    (413, "payload too large", kvcache.PayloadTooLarge),
])
def test_a_batchs_error_answer_ends_the_run_of_failures(status, message, error):
    """A 4xx to a batch is an answer: the node is up, its run of failures ends."""
    c = kvcache.Cluster({1: "http://127.0.0.1:1"}, failures=2, backoff=60)
    answer = {"fail": True}

    def request(method, target, body=None, deadline=None):
        if answer["fail"]:
            raise kvcache.Unavailable("connection refused")
        return status, json.dumps({"status": "ERROR", "message": message}).encode()

    c.nodes[1].request = request
    with pytest.raises(kvcache.Unavailable):
        c.mget(["a", "b"])  # failure 1
    answer["fail"] = False
    with pytest.raises(error):
        c.mput({"a": "1", "b": "2"})  # an answer: the run ends
    answer["fail"] = True
    with pytest.raises(kvcache.Unavailable):
        c.mget(["a"])  # failure 1 again, not 2
    assert c.breaker_stats()[1]["state"] == "closed"
    c.close()


def test_a_cluster_stays_usable_after_close(cluster):
    fake = FakeNodes(cluster)
    keys = [f"key:{i}" for i in range(300)]
    cluster.mput({k: "v" for k in keys})
    cluster.close()
    assert cluster.mget(keys) == ["v"] * 300  # its batch threads are made again
    cluster.close()
    cluster.close()
    cluster.mput({k: "w" for k in keys})
    assert sum(len(s) for s in fake.data.values()) == 300

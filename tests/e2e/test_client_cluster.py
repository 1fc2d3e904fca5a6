"""kvcache.Cluster (clients/python) against real processes: its ring is HAProxy's
(the test vectors checked against HAProxy 2.6 on 3 and 5 nodes, every node up
and with each one DOWN), client and proxy agree on every key, and the faults of the issue: a node
killed under load, a node that hangs (SIGSTOP), a node restarted from its
snapshot. Every wait is bounded."""

import json
import logging
import os
import random
import signal
import sys
import threading
import time

import pytest

from helpers import REPO, SANITIZER_SLOWDOWN, free_port
from test_cluster import HAPROXY, alive, make_cluster  # noqa: F401  (the fixture)

sys.path.insert(0, str(REPO / "clients" / "python"))
import kvcache  # noqa: E402

VECTORS = REPO / "clients" / "python" / "tests" / "ring_vectors.json"
needs_haproxy = pytest.mark.skipif(not HAPROXY, reason="haproxy is not installed (tools/install-deps.sh test)")


@pytest.fixture(scope="module")
def vectors():
    return json.loads(VECTORS.read_text())


def owners_of(vectors, n, down):
    case = next(r for r in vectors["rings"] if r["ids"] == list(range(1, n + 1)) and r["down"] == down)
    return dict(zip(vectors["keys"], (int(c) for c in case["owners"])))


def holders(c, keys, skip=()):
    """{key: [(node, value)]} read from every live node directly (but those in skip)."""
    held = {k: [] for k in keys}
    for i in range(1, c.nodes + 1):
        if i in skip or not alive(c.pid(f"node{i}")):
            continue
        with kvcache.Client(c.node_url(i)) as node:
            for k, v in zip(keys, node.mget(keys)):
                if v is not None:
                    held[k].append((i, v))
    return held


def put_through(url, keys, value):
    """Puts every key through the proxy, from 4 threads."""
    problems = []

    def worker(part):
        try:
            with kvcache.Client(url, timeout=5) as proxy:
                for k in part:
                    proxy.put(k, value)
        except Exception as e:  # noqa: BLE001
            problems.append(repr(e))

    threads = [threading.Thread(target=worker, args=(keys[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "puts through the proxy did not finish in 120 s"
    assert not problems, problems[:3]


def wait_for(what, predicate, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"{what} not within {seconds} s")


@needs_haproxy
@pytest.mark.parametrize("n", [3, 5])
def test_ring_vectors_match_haproxy_all_up_and_each_one_down(make_cluster, vectors, n):
    c = make_cluster()
    c.up(n)
    keys = vectors["keys"]
    put_through(c.url, keys, "up")
    held = holders(c, keys)
    expected = owners_of(vectors, n, [])
    wrong = [(k, held[k], expected[k]) for k in keys if held[k] != [(expected[k], "up")]]
    assert not wrong, f"{len(wrong)} of {len(keys)} keys not on the vectors' owner, e.g. {wrong[:3]}"

    # each node in turn stopped (SIGSTOP) until HAProxy has it DOWN: its keys are
    # put again and must land on the vectors' owners with it down; the vectors
    # leave every other key where it was (HAProxy removes only that server's points)
    all_up = expected
    for d in range(1, n + 1):
        with_d_down = owners_of(vectors, n, [d])
        moved = [k for k in keys if all_up[k] == d]
        assert all(with_d_down[k] == all_up[k] for k in keys if all_up[k] != d)
        pid = c.pid(f"node{d}")
        os.kill(pid, signal.SIGSTOP)
        try:
            wait_for(f"HAProxy marking node{d} DOWN", lambda: c.node_status(d) == "DOWN", 10)
            put_through(c.url, moved, f"down{d}")
            held = holders(c, moved, skip={d})
        finally:
            os.kill(pid, signal.SIGCONT)
        wrong = [(k, held[k], with_d_down[k]) for k in moved if (with_d_down[k], f"down{d}") not in held[k]]
        assert not wrong, f"{len(wrong)} of node {d}'s {len(moved)} keys not on the vectors' owner: {wrong[:3]}"
        wait_for(f"HAProxy marking node{d} UP", lambda: c.node_status(d) == "UP", 10)

    # node 2 dies; once HAProxy has it DOWN every key is put again
    os.kill(c.pid("node2"), signal.SIGKILL)
    wait_for("HAProxy marking node2 DOWN", lambda: c.node_status(2) == "DOWN", 10)
    put_through(c.url, keys, "down")
    held = holders(c, keys)
    expected = owners_of(vectors, n, [2])
    wrong = [(k, held[k], expected[k]) for k in keys if (expected[k], "down") not in held[k]]
    assert not wrong, f"{len(wrong)} of {len(keys)} keys not on the vectors' owner with node 2 down: {wrong[:3]}"

    # a Cluster whose breaker has node 2 open agrees with the proxy: what
    # one puts the other reads, for every key
    nodes = {i: c.node_url(i) for i in range(1, n + 1)}
    with kvcache.Cluster(nodes, failures=1, backoff=60, timeout=5) as cluster, \
            kvcache.Client(c.url, timeout=5) as proxy:
        all_up = owners_of(vectors, n, [])
        node2_keys = [k for k in keys if all_up[k] == 2][:200]
        assert cluster.get(node2_keys[0]) == "down"  # refused, retried on the next owner
        assert cluster.breaker_stats()[2]["state"] == "open"
        sample = keys[:1000]
        cluster.mput({k: "client" for k in sample})
        assert all(proxy.get(k) == "client" for k in sample)
        for k in node2_keys:
            proxy.put(k, "proxy")
        assert cluster.mget(node2_keys) == ["proxy"] * len(node2_keys)


@needs_haproxy
def test_client_and_proxy_agree_with_every_node_up(make_cluster):
    c = make_cluster()
    c.up(3)
    keys = [f"agree:{i}" for i in range(3000)]
    with kvcache.Cluster([c.node_url(i) for i in (1, 2, 3)]) as cluster, kvcache.Client(c.url) as proxy:
        cluster.mput({k: "m" + k for k in keys})
        assert all(proxy.get(k) == "m" + k for k in keys[:1000])
        for k in keys[1000:1500]:
            cluster.put(k, "p" + k)
            assert proxy.get(k) == "p" + k
            proxy.put(k, "q" + k)
            assert cluster.get(k) == "q" + k
        assert cluster.mget(keys[1000:1500]) == ["q" + k for k in keys[1000:1500]]
        assert cluster.delete(keys[0]) is True and proxy.get(keys[0]) is None
        assert all(v is True for v in cluster.health().values())
        assert all("kvcache" in text for text in cluster.metrics().values())


# -- faults, with nodes started directly (each with its snapshot) -------------

class Nodes:
    def __init__(self, start_server, tmp_path, n=3):
        self.start_server = start_server
        self.snap = {i: str(tmp_path / f"node{i}.snap") for i in range(1, n + 1)}
        self.servers = {i: self.start(i) for i in range(1, n + 1)}

    def start(self, i, port=None):
        return self.start_server("--memory-limit", "64M", "--threads", "1", "--snapshot-path", self.snap[i],
                                 "--snapshot-interval", "1h", port=port)

    def urls(self):
        return {i: s.url for i, s in self.servers.items()}


def run_load(cluster, keys, stop, threads=4):
    """Gets and puts from `threads` threads until stop; returns (pool, errors, misses,
    latencies, counts), errors as (the call's keys, repr of the exception)."""
    errors, misses, latencies = [], set(), []
    counts = {"ops": 0}
    lock = threading.Lock()

    def worker(seed):
        rng = random.Random(seed)
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            k = rng.choice(keys)
            call_keys = (k,)
            start = time.monotonic()
            try:
                if rng.random() < 0.2:
                    cluster.put(k, "v-" + k)
                elif rng.random() < 0.1:
                    pair = [k, rng.choice(keys)]
                    call_keys = tuple(pair)
                    for key, v in zip(pair, cluster.mget(pair)):
                        if v is None:
                            with lock:
                                misses.add(key)
                elif cluster.get(k) is None:
                    with lock:
                        misses.add(k)
            except Exception as e:  # noqa: BLE001
                with lock:
                    errors.append((call_keys, repr(e)))
            with lock:
                latencies.append(time.monotonic() - start)
                counts["ops"] += 1

    pool = [threading.Thread(target=worker, args=(s,)) for s in range(threads)]
    for t in pool:
        t.start()
    return pool, errors, misses, latencies, counts


def join(pool):
    for t in pool:
        t.join(timeout=70)
    assert not any(t.is_alive() for t in pool), "load threads did not stop"


def test_a_node_killed_under_load_then_restarted_from_its_snapshot(start_server, tmp_path, caplog):
    nodes = Nodes(start_server, tmp_path)
    keys = [f"kill:{i}" for i in range(3000)]
    cluster = kvcache.Cluster(nodes.urls(), timeout=2, failures=3, backoff=0.3, max_backoff=1.0)
    cluster.mput({k: "v-" + k for k in keys})
    owner = {k: cluster.ring.owner(k) for k in keys}
    node2_keys = [k for k in keys if owner[k] == 2]
    assert cluster.nodes[2].snapshot()["status"] == "OK"
    stop = threading.Event()
    with caplog.at_level(logging.INFO, logger="kvcache"):
        pool, errors, misses, _, counts = run_load(cluster, keys, stop)
        try:
            wait_for("load", lambda: counts["ops"] > 200, 10 * SANITIZER_SLOWDOWN)
            nodes.servers[2].proc.kill()
            nodes.servers[2].proc.wait(timeout=5)
            wait_for("node 2's breaker to open", lambda: cluster.breaker_stats()[2]["state"] != "closed", 5)
            at_open = counts["ops"]
            wait_for("500 more requests", lambda: counts["ops"] > at_open + 500, 20 * SANITIZER_SLOWDOWN)
            # misses only for node 2's keys, and no exception
            assert not errors, errors[:5]
            assert misses and misses <= set(node2_keys), sorted(misses - set(node2_keys))[:5]
            stats = cluster.breaker_stats()[2]
            assert stats["opened"] == 1 and stats["failures"] >= 3, stats
            # restarted from its snapshot on the same port: used again after a probe
            nodes.servers[2] = nodes.start(2, port=nodes.servers[2].port)
            wait_for("node 2's breaker to close", lambda: cluster.breaker_stats()[2]["state"] == "closed", 10)
        finally:
            stop.set()
            join(pool)
    assert not errors, errors[:5]
    stats = cluster.breaker_stats()[2]
    assert stats["closed"] == 1 and stats["probes"] >= 1, stats
    assert "circuit breaker open after 3 failures in a row" in caplog.text
    assert "circuit breaker closed" in caplog.text
    # its keys are read from it again: the ones not rewritten during the outage
    # come from the snapshot (those rewritten went to the next owner)
    with kvcache.Client(nodes.servers[2].url) as node2:
        restored = [k for k, v in zip(node2_keys, node2.mget(node2_keys)) if v == "v-" + k]
    assert len(restored) == len(node2_keys), "the snapshot did not bring node 2's keys back"
    assert cluster.mget(node2_keys) == ["v-" + k for k in node2_keys]
    assert all(cluster.owner(k) == 2 for k in node2_keys)
    cluster.close()


def test_a_hung_node_times_out_within_the_timeout_and_its_breaker_opens(start_server, tmp_path):
    nodes = Nodes(start_server, tmp_path)
    keys = [f"hang:{i}" for i in range(2000)]
    timeout = 0.5
    cluster = kvcache.Cluster(nodes.urls(), timeout=timeout, failures=2, backoff=0.3, max_backoff=0.6)
    cluster.mput({k: "v-" + k for k in keys})
    node3_keys = {k for k in keys if cluster.ring.owner(k) == 3}
    stop = threading.Event()
    pid = nodes.servers[3].proc.pid
    pool, errors, misses, latencies, counts = run_load(cluster, keys, stop)
    stopped = False
    try:
        wait_for("load", lambda: counts["ops"] > 200, 10 * SANITIZER_SLOWDOWN)
        os.kill(pid, signal.SIGSTOP)
        stopped = True
        wait_for("node 3's breaker to open", lambda: cluster.breaker_stats()[3]["state"] != "closed", 5)
        at_open = counts["ops"]
        wait_for("500 more requests", lambda: counts["ops"] > at_open + 500, 20 * SANITIZER_SLOWDOWN)
        # probes time out too while it hangs: the breaker stays open
        time.sleep(1.5)
        assert cluster.breaker_stats()[3]["probe_failures"] >= 1
        assert cluster.breaker_stats()[3]["state"] != "closed"
        os.kill(pid, signal.SIGCONT)
        stopped = False
        wait_for("node 3's breaker to close", lambda: cluster.breaker_stats()[3]["state"] == "closed", 10)
    finally:
        if stopped:
            os.kill(pid, signal.SIGCONT)
        stop.set()
        join(pool)
    # the only exceptions: timeouts of requests sent to node 3 before its breaker opened
    assert errors and all("Timeout" in e for _, e in errors), errors[:5]
    assert len(errors) <= 2 + 4, errors  # the run that opens it, plus one in flight per thread
    not_node3 = [(ks, e) for ks, e in errors if not set(ks) & node3_keys]
    assert not not_node3, not_node3[:5]
    # no caller waited longer than the timeout
    slack = 0.4 * SANITIZER_SLOWDOWN  # the thread being scheduled after its timeout, on a busy box
    assert max(latencies) <= timeout + slack, max(latencies)
    assert misses <= node3_keys, sorted(misses - node3_keys)[:5]
    # used again once it answers
    assert cluster.mget(sorted(node3_keys)[:100]) == ["v-" + k for k in sorted(node3_keys)[:100]]
    cluster.close()


def test_concurrent_batches_with_a_hung_node_end_within_the_timeout(start_server, tmp_path):
    """More batch callers than the Cluster has threads (2 a node), each with a part
    for a stopped node: every call ends within one timeout, its parts, retries and
    wait for a thread included."""
    nodes = Nodes(start_server, tmp_path)
    timeout = 1.0
    cluster = kvcache.Cluster(nodes.urls(), timeout=timeout, failures=10_000, backoff=60)
    keys = [f"batch-hang:{i}" for i in range(300)]
    cluster.mput({k: "v-" + k for k in keys})
    # the caller sends the first key's part itself: make it one of node 1's, so
    # every caller's node-3 part waits for one of the 6 threads
    first = next(k for k in keys if cluster.ring.owner(k) == 1)
    keys = [first] + [k for k in keys if k != first]
    callers = 24
    took, outcomes = [], []
    lock = threading.Lock()
    go = threading.Event()

    def caller(n):
        go.wait(10)
        start = time.monotonic()
        try:
            if n % 2:
                cluster.mget(keys)
            else:
                cluster.mput({k: "w-" + k for k in keys})
            outcome = "answered"
        except kvcache.Timeout:
            outcome = "Timeout"
        except Exception as e:  # noqa: BLE001
            outcome = repr(e)
        with lock:
            took.append(time.monotonic() - start)
            outcomes.append(outcome)

    pid = nodes.servers[3].proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        threads = [threading.Thread(target=caller, args=(n,)) for n in range(callers)]
        for t in threads:
            t.start()
        go.set()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads), "batch callers did not finish in 60 s"
    finally:
        os.kill(pid, signal.SIGCONT)
    assert outcomes == ["Timeout"] * callers, outcomes
    slack = 0.5 * SANITIZER_SLOWDOWN  # the thread being scheduled after its deadline, on a busy box
    assert max(took) <= timeout + slack, sorted(took)[-5:]
    # node 3 answers again: the cluster's batches too
    assert cluster.mget(keys[:50]) is not None
    cluster.close()


def test_every_node_down_is_unavailable_within_the_timeout(start_server, tmp_path):
    port = free_port()
    with kvcache.Cluster([f"http://127.0.0.1:{port}"], timeout=1, failures=2, backoff=5) as cluster:
        for _ in range(2):
            with pytest.raises(kvcache.Unavailable):
                cluster.get("k")
        with pytest.raises(kvcache.Unavailable, match="every node's circuit breaker is open"):
            cluster.put("k", "v")
        with pytest.raises(kvcache.Unavailable):
            cluster.mget(["a", "b"])

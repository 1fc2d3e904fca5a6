"""kvcache.Cluster: N kvcache nodes, each key sent straight to its owner.

The owner is computed with HAProxy's ring (ring.py), the one of
deploy/haproxy/haproxy.cfg, so a Cluster and the proxy agree on every key and
may be used side by side. A node whose circuit breaker is open (breaker.py) is
out of the ring, as HAProxy takes out a server it has DOWN: its keys go to the
nearest node of the others, where the proxy sends them too.

A request that finds its node unreachable (refused, reset, closed without an
answer) is sent once more, to the key's owner without that node, as HAProxy's
`retries` + `option redispatch` do. A timeout is not retried: no call takes
longer than the timeout. Batches are split by owner, the parts sent in
parallel, and the answers merged in the caller's order; a batch is bounded by
one timeout in all (its parts, their retries and any wait for a free thread).
"""

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from urllib.parse import quote

from . import validation
from .breaker import Breaker, BreakerPolicy
from .client import DEFAULT_POOL_SIZE, DEFAULT_TIMEOUT, Client, _items
from .errors import KvcacheError, Overloaded, Timeout, Unavailable
from .ring import Ring, key_hash

NOT_FOUND = b'{"status":"ERROR","message":"Key not found."}'
# Keys whose owner is remembered (about 100 bytes each); past it, owners are computed
# every time until the next breaker change. The ring costs ~2 us a key in Python.
OWNER_MEMO = 100_000


def _node_list(nodes):
    """[(id, url)] from {id: url}, [(id, url)] or [url, ...] (ids 1..N in order, as tools/cluster.sh)."""
    if hasattr(nodes, "items"):
        pairs = list(nodes.items())
    else:
        nodes = list(nodes)
        if nodes and all(isinstance(n, str) for n in nodes):
            pairs = list(enumerate(nodes, 1))
        else:
            pairs = [tuple(n) for n in nodes]
    if not pairs:
        raise ValueError("a cluster needs at least one node")
    return pairs


class Cluster:
    """The nodes of a cluster, by HAProxy server id.

    nodes:     {id: url}, [(id, url), ...], or [url, ...] meaning ids 1..N; the ids
               are the `id`s of the servers in haproxy.cfg.
    weight:    the servers' `weight` in haproxy.cfg (100).
    failures, backoff, max_backoff: the circuit breaker (breaker.BreakerPolicy).
    token, timeout, ca, cert, key, verify, pool_size: as kvcache.Client, for every node.
    """

    def __init__(self, nodes, token=None, timeout=DEFAULT_TIMEOUT, ca=None, cert=None, key=None, verify=True,
                 pool_size=DEFAULT_POOL_SIZE, weight=100, failures=5, backoff=1.0, max_backoff=None):
        pairs = _node_list(nodes)
        self.ring = Ring([i for i, _ in pairs], weight)
        self.timeout = float(timeout)
        policy = BreakerPolicy(failures, backoff, max_backoff)
        self.nodes = {}
        self.breakers = {}
        for i, url in pairs:
            client = Client(url, token=token, timeout=timeout, ca=ca, cert=cert, key=key, verify=verify,
                            pool_size=pool_size)
            self.nodes[i] = client
            self.breakers[i] = Breaker(f"node {i} ({client.url})", policy, self._prober(client),
                                       on_change=self._breaker_changed)
        self._down = frozenset()  # ids whose breaker is not closed
        self._owners = {}  # key -> owner id while _down is what it is now (a memo of the ring)
        self._change_lock = threading.Lock()
        self._workers = max(2, 2 * len(pairs))
        self._executor = None  # made when a batch first needs it, again after close()
        self._executor_lock = threading.Lock()

    # -- routing -------------------------------------------------------------

    def _prober(self, client):
        def probe():
            return client.request("GET", "/health", deadline=time.monotonic() + client.timeout)[0] == 200
        return probe

    def _breaker_changed(self, breaker):
        with self._change_lock:
            self._down = frozenset(i for i, b in self.breakers.items() if b.state != "closed")
            self._owners = {}

    def _excluded(self):
        """The ids out of the ring now; starts the probes that are due."""
        down = self._down
        if down:
            for i in down:
                self.breakers[i].is_open  # noqa: B018  (starts a due probe)
        return down

    def owner(self, key, down=None):
        """The id of the node a request for key goes to now."""
        return self.ring.owner(key, self._excluded() if down is None else down)

    def _call(self, key, method, target, body):
        """(status, body, client) from the key's owner; on Unavailable (not Timeout
        nor a 503), once more from the owner without that node."""
        deadline = time.monotonic() + self.timeout
        if self._down:
            self._excluded()  # starts the probes that are due
        owners = self._owners  # replaced (not cleared) when a breaker changes
        node = owners.get(key)
        if node is None:
            node = self.ring.owner(key, self._down)
            if node is None:
                raise Unavailable("every node's circuit breaker is open")
            if len(owners) < OWNER_MEMO:
                owners[key] = node
        try:
            return self._send(node, method, target, body, deadline)
        except Timeout:
            raise
        except Unavailable:
            node = self.ring.owner(key, self._down | {node})
            if node is None:
                raise
            return self._send(node, method, target, body, deadline)

    def _send(self, node, method, target, body, deadline):
        breaker = self.breakers[node]
        client = self.nodes[node]
        try:
            status, data = client.request(method, target, body, deadline)
        except Unavailable as e:
            breaker.failure(e.message)
            raise
        if status == 503:
            breaker.failure("503")
        else:
            breaker.success()
        return status, data, client

    # -- the calls -----------------------------------------------------------

    def get(self, key):
        """The value of key, or None when absent (or its node unreachable and the next one lacks it)."""
        validation.check_key(key)
        status, body, client = self._call(key, "GET", "/get?key=" + quote(key, safe=""), None)
        if status == 200:
            return json.loads(body)["value"]
        if status == 404 and body == NOT_FOUND:
            return None
        raise client._error(status, body)

    def put(self, key, value, ttl=None):
        validation.check_item(key, value, ttl)
        body = json.dumps({"key": key, "value": value, "ttl": ttl} if ttl else {"key": key, "value": value})
        status, data, client = self._call(key, "POST", "/put", body.encode())
        if status != 200:
            raise client._error(status, data)

    def delete(self, key):
        """True if the key was there."""
        validation.check_key(key)
        status, data, client = self._call(key, "POST", "/delete", json.dumps({"key": key}).encode())
        if status == 404 and data == NOT_FOUND:
            return False
        if status != 200:
            raise client._error(status, data)
        return True

    def mget(self, keys):
        """[value or None, ...] in the order of keys; one request per owner (per 1,000 keys), in parallel."""
        keys = list(keys)
        validation.check_keys(keys)
        values = [None] * len(keys)

        def part(node, positions, deadline):
            chunk = [keys[p] for p in positions]
            got = self._batch(node, lambda c: c._mget(chunk, deadline))
            for p, v in zip(positions, got):
                values[p] = v

        self._by_owner(keys, part)
        return values

    def mput(self, items, ttl=None):
        """Stores items ({key: value}, or (key, value[, ttl]) pairs); all are checked
        before any is sent; one request per owner (per 1,000 items), in parallel."""
        items = _items(items, ttl)
        validation.check_items(items)

        def part(node, positions, deadline):
            chunk = [items[p] for p in positions]
            self._batch(node, lambda c: c._mput(chunk, deadline))

        self._by_owner([item[0] for item in items], part)

    def _by_owner(self, keys, part):
        """Runs part(node, positions, deadline) for each owner's keys (chunks of at
        most 1,000), all but one on the executor; a part whose node is unreachable
        is split again over the ring without it and sent once more. One deadline
        bounds them all: a part still queued for a thread when it passes is not
        sent, and the call raises Timeout."""
        deadline = time.monotonic() + self.timeout
        down = self._excluded()
        hashes = [key_hash(k) for k in keys]
        groups = {}
        for p, h in enumerate(hashes):
            groups.setdefault(self.ring.owner_of_hash(h, down), []).append(p)
        if None in groups:
            raise Unavailable("every node's circuit breaker is open")

        def run(node, positions):
            if time.monotonic() >= deadline:
                raise self._late(node)
            try:
                part(node, positions, deadline)
            except (Timeout, Overloaded):
                raise
            except Unavailable:
                again = {}
                for p in positions:
                    again.setdefault(self.ring.owner_of_hash(hashes[p], down | {node}), []).append(p)
                if None in again:
                    raise
                for other, ps in again.items():
                    for start in range(0, len(ps), validation.MAX_BATCH_ITEMS):
                        if time.monotonic() >= deadline:  # not sent: no failure for `other`'s breaker
                            raise self._late(other) from None
                        part(other, ps[start:start + validation.MAX_BATCH_ITEMS], deadline)

        jobs = [(node, positions[start:start + validation.MAX_BATCH_ITEMS])
                for node, positions in groups.items()
                for start in range(0, len(positions), validation.MAX_BATCH_ITEMS)]
        executor = self._pool() if len(jobs) > 1 else None
        futures = [(job[0], executor.submit(run, *job)) for job in jobs[1:]]
        error = None
        try:
            if jobs:
                run(*jobs[0])
        except Exception as e:  # noqa: BLE001  raised after the other parts are done
            error = e
        for node, f in futures:
            try:
                try:
                    f.result(timeout=max(0.0, deadline - time.monotonic()))
                except FutureTimeout:
                    if f.cancel():  # still queued: never sent
                        raise self._late(node) from None
                    f.result()  # running: its requests end at the deadline
            except Exception as e:  # noqa: BLE001
                error = error or e
        if error:
            raise error

    def _late(self, node):
        return Timeout(f"no answer within {self.timeout:g} s (the part for this node was not sent)", None,
                       self.nodes[node].url)

    def _pool(self):
        executor = self._executor
        if executor is None:
            with self._executor_lock:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="kvcache")
                executor = self._executor
        return executor

    def _batch(self, node, call):
        """call(client) for one part; every answer counts for the node's breaker:
        Unavailable (a timeout and a 503 included) as a failure, any other (a
        4xx included) as a success, which ends the run of failures."""
        breaker = self.breakers[node]
        try:
            result = call(self.nodes[node])
        except Unavailable as e:  # Overloaded (503) and Timeout included
            breaker.failure(e.message)
            raise
        except KvcacheError:  # an answer: 400, 401, 413, 5xx other than 503
            breaker.success()
            raise
        breaker.success()
        return result

    def health(self):
        """{id: True, or the exception} for every node, asked directly."""
        return {i: _outcome(c.health) for i, c in self.nodes.items()}

    def snapshot(self):
        """{id: the node's answer, or the exception}: a snapshot written on every node."""
        executor = self._pool()
        futures = {i: executor.submit(_outcome, c.snapshot) for i, c in self.nodes.items()}
        return {i: f.result() for i, f in futures.items()}

    def metrics(self):
        """{id: Prometheus text, or the exception} for every node."""
        return {i: _outcome(c.metrics) for i, c in self.nodes.items()}

    def breaker_stats(self):
        """{id: {"state", "opened", "closed", "failures", "probes", "probe_failures"}}:
        the circuit breakers' states and counters, for the caller to log or export."""
        return {i: b.stats() for i, b in self.breakers.items()}

    def close(self):
        """Closes the idle connections and stops the batch threads once they are
        idle. The cluster stays usable: a later batch makes its threads again (a
        batch running during close() may fail with RuntimeError)."""
        with self._executor_lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)
        for c in self.nodes.values():
            c.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"kvcache.Cluster({ {i: c.url for i, c in self.nodes.items()} })"


def _outcome(fn):
    try:
        return fn()
    except Exception as e:  # noqa: BLE001  reported per node
        return e

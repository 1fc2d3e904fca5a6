"""Locust load for kvcache, matching the assignment's grading load.

Random put/get over a pool of 5,000 keys with 128-byte values: 30% puts, 70% gets
(FastHttpUser, no wait between requests). A get of a key that was never put answers 404
"Key not found." and counts as a success; any other status is a failure.

Headless run for a fixed duration (50 users spawned at 50/s, 30 s), against a local server:

    /usr/bin/python3 -m locust -f tools/locustfile.py --headless -u 50 -r 50 -t 30s -H http://127.0.0.1:7171

Add `--csv /tmp/kvlocust` for CSV stats, `--only-summary` for a shorter report.
Env: KV_KEYS (5000), KV_VALUE_LEN (128), KV_PUT_RATIO (0.3).

Cluster mode: KV_CLUSTER set to the nodes' URLs (comma separated, in the order of
their HAProxy ids 1..N, or "ID=URL,...") makes each user a kvcache.Cluster
(clients/python): every request goes straight to its key's node, no proxy.
-H is then only a label Locust requires:

    KV_CLUSTER=http://127.0.0.1:7172,http://127.0.0.1:7173 /usr/bin/python3 -m locust \
        -f tools/locustfile.py --headless -u 50 -r 50 -t 30s -H http://127.0.0.1:7172
"""
import os
import random
import sys
import time

from locust import FastHttpUser, User, task

KEYS = int(os.environ.get("KV_KEYS", "5000"))
VALUE = "x" * int(os.environ.get("KV_VALUE_LEN", "128"))
PUT_RATIO = float(os.environ.get("KV_PUT_RATIO", "0.3"))
PUT_WEIGHT = round(PUT_RATIO * 100)
GET_WEIGHT = 100 - PUT_WEIGHT


def random_key():
    return f"key:{random.randint(1, KEYS)}"


CLUSTER = os.environ.get("KV_CLUSTER", "")


def cluster_nodes(spec):
    """["url", ...] or {id: "url"} from "URL,URL" or "ID=URL,ID=URL"."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if all("=" in p for p in parts):
        return {int(p.split("=", 1)[0]): p.split("=", 1)[1] for p in parts}
    return parts


class KvCacheClusterUser(User):
    """The same load through kvcache.Cluster: each key straight to its node."""

    abstract = not CLUSTER

    def on_start(self):
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "clients", "python"))
        import kvcache
        self.kvcache = kvcache
        self.cache = kvcache.Cluster(cluster_nodes(CLUSTER), timeout=5)

    def on_stop(self):
        self.cache.close()

    def timed(self, kind, name, call):
        start = time.perf_counter()
        error = None
        try:
            call()
        except self.kvcache.KvcacheError as e:
            error = e
        self.environment.events.request.fire(request_type=kind, name=name, exception=error, context={},
                                             response_time=(time.perf_counter() - start) * 1000, response_length=0)

    @task(PUT_WEIGHT)
    def put(self):
        key = random_key()
        self.timed("POST", "/put", lambda: self.cache.put(key, VALUE))

    @task(GET_WEIGHT)
    def get(self):
        key = random_key()
        self.timed("GET", "/get", lambda: self.cache.get(key))  # None (a miss) counts as a success


class KvCacheUser(FastHttpUser):
    # no wait_time: back-to-back requests, as the grading load does
    abstract = bool(CLUSTER)

    @task(PUT_WEIGHT)
    def put(self):
        key = random_key()
        with self.client.post("/put", json={"key": key, "value": VALUE}, name="/put",
                              catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"put {key}: HTTP {r.status_code} {r.text[:100]!r}")

    @task(GET_WEIGHT)
    def get(self):
        key = random_key()
        with self.client.get("/get", params={"key": key}, name="/get", catch_response=True) as r:
            if r.status_code == 200:
                if r.text and '"value"' not in r.text:
                    r.failure(f"get {key}: 200 without a value: {r.text[:100]!r}")
                else:
                    r.success()
            elif r.status_code == 404 and "Key not found" in (r.text or ""):
                r.success()  # expected until the key has been put
            else:
                r.failure(f"get {key}: HTTP {r.status_code} {r.text[:100]!r}")

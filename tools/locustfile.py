"""Locust load for kvcache, matching the assignment's grading load.

Random put/get over a pool of 5,000 keys with 128-byte values: 30% puts, 70% gets
(FastHttpUser, no wait between requests). A get of a key that was never put answers 404
"Key not found." and counts as a success; any other status is a failure.

Headless run for a fixed duration (50 users spawned at 50/s, 30 s), against a local server:

    /usr/bin/python3 -m locust -f tools/locustfile.py --headless -u 50 -r 50 -t 30s -H http://127.0.0.1:7171

Add `--csv /tmp/kvlocust` for CSV stats, `--only-summary` for a shorter report.
Env: KV_KEYS (5000), KV_VALUE_LEN (128), KV_PUT_RATIO (0.3).
"""
import os
import random

from locust import FastHttpUser, task

KEYS = int(os.environ.get("KV_KEYS", "5000"))
VALUE = "x" * int(os.environ.get("KV_VALUE_LEN", "128"))
PUT_RATIO = float(os.environ.get("KV_PUT_RATIO", "0.3"))
PUT_WEIGHT = round(PUT_RATIO * 100)
GET_WEIGHT = 100 - PUT_WEIGHT


def random_key():
    return f"key:{random.randint(1, KEYS)}"


class KvCacheUser(FastHttpUser):
    # no wait_time: back-to-back requests, as the grading load does

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

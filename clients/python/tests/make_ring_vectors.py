#!/usr/bin/python3
"""Writes ring_vectors.json: 10,000 keys and their owners on HAProxy's ring of
servers 1..3 and 1..5 (weight 100), all up and with each one down. The owners
come from kvcache.Ring; tests/e2e/test_client_cluster.py checks them against a
real HAProxy 2.6, so other languages can port the ring against this file."""

import json
import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from kvcache.ring import Ring  # noqa: E402

# Printable ASCII but the two characters JSON escapes (\ and "), which
# tests/e2e/test_cluster.py covers on their own.
ALPHABET = "".join(chr(c) for c in range(32, 127) if chr(c) not in '\\"')


def keys():
    rng = random.Random(27)
    out = {f"key:{i}": None for i in range(2000)}
    while len(out) < 4000:
        out[f"user:{rng.randrange(10**9)}:session"] = None
    while len(out) < 9900:
        out["".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 32)))] = None
    while len(out) < 10000:
        out["".join(rng.choice(ALPHABET) for _ in range(rng.randint(200, 256)))] = None
    return list(out)


def main():
    ks = keys()
    rings = []
    for n in (3, 5):
        ids = list(range(1, n + 1))
        ring = Ring(ids)
        for down in [[]] + [[i] for i in ids]:
            rings.append({"ids": ids, "down": down,
                          "owners": "".join(str(ring.owner(k, frozenset(down))) for k in ks)})
    doc = {
        "what": "Owners of keys on HAProxy 2.6's consistent-hash ring as deploy/haproxy/haproxy.cfg configures it: "
                "balance hash on the key's bytes, hash-type consistent (sdbm, then full_hash), servers with "
                "'id N' and weight 100 (1,600 points each). 'owners' has one character per key: the id of its "
                "server (ids here are 1..5); 'down' lists the servers HAProxy has DOWN (out of the ring).",
        "weight": 100,
        "keys": ks,
        "rings": rings,
    }
    with open(os.path.join(HERE, "ring_vectors.json"), "w") as f:
        json.dump(doc, f, indent=0)
        f.write("\n")


if __name__ == "__main__":
    main()

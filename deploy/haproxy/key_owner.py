#!/usr/bin/python3
"""Which node owns a key: HAProxy 2.6's consistent hashing, as haproxy.cfg beside
this file configures it, computed on the client. A thin command over the kvcache
Python package (clients/python), whose Ring is the one implementation:

    key_owner.py --ids 1,2,3 KEY...            prints "<id> <key>" per key
    key_owner.py --ids 1,2,3 --down 2 KEY...   the owners while HAProxy has server 2 DOWN
    from kvcache import Ring; Ring([1, 2, 3]).split(keys) -> {id: [keys]}

To send batches straight to their nodes, use kvcache.Cluster, which splits them
and follows HAProxy's view of a node that is down (its circuit breaker).
clients/python/tests/ring_vectors.json lists 10,000 keys' owners on a 3- and a
5-server ring, all up and with each one down, checked against a real HAProxy 2.6
(tests/e2e/test_client_cluster.py: all up, then each server stopped until
HAProxy has it DOWN).
"""
import os
import sys

try:
    import kvcache  # noqa: F401  (installed: pip install ./clients/python)
except ImportError:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.realpath(__file__)), "..", "..", "clients", "python"))

from kvcache.key_owner import main  # noqa: E402
from kvcache.ring import Ring  # noqa: E402,F401  (the name this module exported before)

if __name__ == "__main__":
    sys.exit(main())

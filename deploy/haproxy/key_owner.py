#!/usr/bin/python3
"""Which node owns a key: HAProxy 2.6's consistent hashing, as deploy/haproxy/haproxy.cfg
configures it (balance hash, hash-type consistent, weight 100, explicit server ids),
computed on the client. Use it to split a /mget or /mput batch into one batch per node
and send each to its node directly (the proxy answers batches with 501).

    key_owner.py --ids 1,2,3 KEY...       prints "<id> <key>" per key
    from key_owner import Ring; Ring([1, 2, 3]).split(keys) -> {id: [keys]}

The ring must list the ids of the nodes HAProxy has UP: while HAProxy has a node down
it routes that node's keys elsewhere, which this client does not know. The e2e suite
(tests/e2e/test_cluster.py) checks this against a real HAProxy 2.6 for 3,000 keys;
other HAProxy versions may place servers differently.
"""
import argparse
import bisect

MASK = 0xFFFFFFFF
WEIGHT_SCALE = 16  # HAProxy's BE_WEIGHT_SCALE: points per unit of weight
ID_SPACING = 256 * WEIGHT_SCALE  # SRV_EWGHT_RANGE: a server's points are id * this + n


def sdbm(data):
    """HAProxy's default hash function (hash_sdbm), 32 bits."""
    h = 0
    for c in data:
        h = (c + (h << 6) + (h << 16) - h) & MASK
    return h


def full_hash(a):
    """HAProxy's __full_hash: Bob Jenkins' integer avalanche, times a large prime."""
    a = ((a + 0x7ED55D16) + (a << 12)) & MASK
    a = ((a ^ 0xC761C23C) ^ (a >> 19)) & MASK
    a = ((a + 0x165667B1) + (a << 5)) & MASK
    a = ((a + 0xD3A2646C) ^ (a << 9)) & MASK
    a = ((a + 0xFD7046C5) + (a << 3)) & MASK
    a = ((a ^ 0xB55A4F09) ^ (a >> 16)) & MASK
    return (a * 3221225473) & MASK


class Ring:
    def __init__(self, ids, weight=100):
        points = sorted((full_hash(i * ID_SPACING + n), i) for i in ids for n in range(weight * WEIGHT_SCALE))
        self._keys = [p for p, _ in points]
        self._ids = [i for _, i in points]

    def owner(self, key):
        """The id of the node owning key (the exact bytes kvcache stores: decoded, not URL-encoded)."""
        h = full_hash(sdbm(key.encode()))
        after = bisect.bisect_left(self._keys, h) % len(self._keys)
        before = after - 1
        # the nearest point wins, the one before on a tie
        if (h - self._keys[before]) & MASK <= (self._keys[after] - h) & MASK:
            return self._ids[before]
        return self._ids[after]

    def split(self, keys):
        """{node id: [keys it owns]}, each list in the order given."""
        parts = {}
        for key in keys:
            parts.setdefault(self.owner(key), []).append(key)
        return parts


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ids", required=True, help="server ids in haproxy.cfg, comma separated (e.g. 1,2,3)")
    parser.add_argument("--weight", type=int, default=100, help="server weight in haproxy.cfg (100)")
    parser.add_argument("keys", nargs="+")
    args = parser.parse_args()
    ring = Ring([int(i) for i in args.ids.split(",")], args.weight)
    for key in args.keys:
        print(ring.owner(key), key)


if __name__ == "__main__":
    main()

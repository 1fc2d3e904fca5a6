"""HAProxy 2.6's consistent-hash ring, as deploy/haproxy/haproxy.cfg configures it.

    balance hash var(txn.key)      the key's exact bytes (URL- and JSON-decoded)
    hash-type consistent           sdbm, then the avalanche (HAProxy's full_hash)
    server ... id N weight 100     1,600 points per server, placed by its id

Each server owns weight * 16 points; point n of server id is
full_hash(id * 4096 + n). A key hashes to full_hash(sdbm(key)); the nearest point
on the circle wins, the one before on a tie (lb_chash.c, chash_get_server_hash).
A server HAProxy has DOWN has no points: its keys go to the nearest point of
the others, which is what Ring.owner(key, down) computes.

Two points of different servers with the same 32-bit value would be ordered
by HAProxy's insertion order, which this does not reproduce; ids 1..64 at
weight 100 have no such collision (tests/test_ring.py checks).
"""

import bisect
from operator import mul

MASK = 0xFFFFFFFF
WEIGHT_SCALE = 16  # HAProxy's BE_WEIGHT_SCALE: points per unit of weight
ID_SPACING = 256 * WEIGHT_SCALE  # SRV_EWGHT_RANGE: a server's points are id * this + n


# sdbm's step h = c + (h << 6) + (h << 16) - h is h * 65599 + c, so over n
# bytes it is the sum of byte i times 65599^(n-1-i), modulo 2^32: a dot
# product with precomputed powers, which runs in C instead of a Python loop.
_POWERS = [pow(65599, 255 - k, 1 << 32) for k in range(256)]  # _POWERS[256 - n + i] = 65599^(n-1-i)


def sdbm(data):
    """HAProxy's default hash function (hash_sdbm), 32 bits, over bytes (kvcache
    keys are ASCII, so HAProxy's signed char makes no difference)."""
    n = len(data)
    if n <= 256:
        return sum(map(mul, data, _POWERS[256 - n:])) & MASK
    h = 0
    for c in data:
        h = (h * 65599 + c) & MASK
    return h


def full_hash(a):
    """HAProxy's full_hash: Bob Jenkins' integer avalanche, times a large prime."""
    a = ((a + 0x7ED55D16) + (a << 12)) & MASK
    a = ((a ^ 0xC761C23C) ^ (a >> 19)) & MASK
    a = ((a + 0x165667B1) + (a << 5)) & MASK
    a = ((a + 0xD3A2646C) ^ (a << 9)) & MASK
    a = ((a + 0xFD7046C5) + (a << 3)) & MASK
    a = ((a ^ 0xB55A4F09) ^ (a >> 16)) & MASK
    return (a * 3221225473) & MASK


def key_hash(key):
    """Where a key (str or bytes, the bytes kvcache stores) falls on the circle."""
    if isinstance(key, str):
        key = key.encode()
    return full_hash(sdbm(key))


class Ring:
    """The ring of servers `ids` (HAProxy's `id`s), each of weight `weight`."""

    def __init__(self, ids, weight=100):
        ids = list(ids)
        if not ids:
            raise ValueError("a ring needs at least one server id")
        if len(set(ids)) != len(ids):
            raise ValueError(f"server ids must be distinct: {ids}")
        for i in ids:
            if not isinstance(i, int) or i < 1:
                raise ValueError(f"server ids are positive integers (HAProxy's 'id'): {i!r}")
        if not isinstance(weight, int) or not 1 <= weight <= 256:
            raise ValueError(f"weight must be 1..256 (HAProxy's range): {weight!r}")
        self.ids = tuple(ids)
        self.weight = weight
        points = sorted((full_hash(i * ID_SPACING + n), i) for i in ids for n in range(weight * WEIGHT_SCALE))
        self._points = [p for p, _ in points]
        self._owners = [i for _, i in points]

    def owner_of_hash(self, h, down=()):
        """The id owning hash h when the servers in `down` have no points; None if all are down."""
        points, owners = self._points, self._owners
        n = len(points)
        after = bisect.bisect_left(points, h)
        before = after - 1  # -1 is the last point: the circle wraps
        after %= n
        if down:
            steps = 0
            while owners[after] in down:
                after = (after + 1) % n
                steps += 1
                if steps == n:
                    return None
            while owners[before] in down:
                before -= 1  # reaches at most the `after` found above, which is up
        # the nearest point wins, the one before on a tie
        if (h - points[before]) & MASK <= (points[after] - h) & MASK:
            return owners[before]
        return owners[after]

    def owner(self, key, down=()):
        """The id of the server owning key (str or bytes: the decoded bytes kvcache stores),
        with the servers in `down` (a set of ids) out of the ring as HAProxy takes them out."""
        return self.owner_of_hash(key_hash(key), down)

    def split(self, keys, down=()):
        """{server id: [keys it owns]}, each list in the order given."""
        parts = {}
        for key in keys:
            parts.setdefault(self.owner(key, down), []).append(key)
        return parts

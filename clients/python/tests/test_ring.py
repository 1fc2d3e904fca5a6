"""The ring against its test vectors (ring_vectors.json, checked against a real
HAProxy 2.6 by tests/e2e/test_client_cluster.py) and against HAProxy's formulas."""

import json
import os
import random

import pytest

from kvcache.ring import ID_SPACING, MASK, Ring, full_hash, sdbm

VECTORS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ring_vectors.json")


@pytest.fixture(scope="module")
def vectors():
    with open(VECTORS) as f:
        return json.load(f)


def test_vectors_cover_3_and_5_servers_all_up_and_each_down(vectors):
    cases = {(tuple(r["ids"]), tuple(r["down"])) for r in vectors["rings"]}
    for n in (3, 5):
        ids = tuple(range(1, n + 1))
        assert (ids, ()) in cases
        assert all((ids, (i,)) in cases for i in ids)
    assert len(vectors["keys"]) == len(set(vectors["keys"])) == 10000
    assert all(len(r["owners"]) == 10000 for r in vectors["rings"])


def test_every_vector(vectors):
    for case in vectors["rings"]:
        ring = Ring(case["ids"], vectors["weight"])
        down = frozenset(case["down"])
        got = "".join(str(ring.owner(k, down)) for k in vectors["keys"])
        wrong = [(k, e, g) for k, e, g in zip(vectors["keys"], case["owners"], got) if e != g]
        assert not wrong, f"{case['ids']} down {case['down']}: {len(wrong)} keys differ, e.g. {wrong[:3]}"


def test_sdbm_is_haproxys_formula():
    def haproxy_sdbm(data):
        h = 0
        for c in data:
            h = (c + (h << 6) + (h << 16) - h) & MASK
        return h
    rng = random.Random(1)
    for _ in range(2000):
        data = bytes(rng.randrange(128) for _ in range(rng.randrange(300)))
        assert sdbm(data) == haproxy_sdbm(data)


def test_known_hashes():
    # hash_sdbm("a") = 97; full_hash spreads small integers over 32 bits
    assert sdbm(b"a") == 97
    assert sdbm(b"") == 0
    assert len({full_hash(i) for i in range(100000)}) == 100000


def test_a_down_server_leaves_the_ring_as_if_never_there():
    rng = random.Random(2)
    keys = [f"k{rng.random()}" for _ in range(3000)]
    for ids in ([1, 2, 3], [1, 2, 3, 4, 5], [4, 9, 17, 30]):
        ring = Ring(ids)
        for d in ids:
            smaller = Ring([i for i in ids if i != d])
            assert all(ring.owner(k, {d}) == smaller.owner(k) for k in keys)
        for a, b in zip(ids, ids[1:]):
            smaller = Ring([i for i in ids if i not in (a, b)])
            assert all(ring.owner(k, {a, b}) == smaller.owner(k) for k in keys)
        assert ring.owner("x", set(ids)) is None


def test_only_the_down_servers_keys_move():
    ring = Ring([1, 2, 3, 4, 5])
    keys = [f"key:{i}" for i in range(5000)]
    for k in keys:
        before = ring.owner(k)
        after = ring.owner(k, {3})
        assert after == before or before == 3


def test_no_two_points_collide_for_ids_1_to_64():
    # Equal points of two servers would be ordered by HAProxy's insertion order.
    points = [full_hash(i * ID_SPACING + n) for i in range(1, 65) for n in range(1600)]
    assert len(set(points)) == len(points)


def test_split_keeps_order():
    ring = Ring([1, 2, 3])
    keys = [f"key:{i}" for i in range(100)]
    parts = ring.split(keys)
    assert sorted(k for part in parts.values() for k in part) == sorted(keys)
    for node, part in parts.items():
        assert part == [k for k in keys if ring.owner(k) == node]


def test_str_and_bytes_hash_the_same():
    ring = Ring([1, 2, 3])
    assert all(ring.owner(f"key:{i}") == ring.owner(f"key:{i}".encode()) for i in range(300))


@pytest.mark.parametrize("ids,weight", [([], 100), ([1, 1], 100), ([0], 100), (["1"], 100), ([1], 0), ([1], 257)])
def test_bad_rings(ids, weight):
    with pytest.raises(ValueError):
        Ring(ids, weight)


def test_key_owner_command(capsys):
    from kvcache.key_owner import main
    assert main(["--ids", "1,2,3", "key:1", "abc"]) == 0
    ring = Ring([1, 2, 3])
    assert capsys.readouterr().out == f"{ring.owner('key:1')} key:1\n{ring.owner('abc')} abc\n"
    assert main(["--ids", "1,2,3", "--down", "1", "key:1"]) == 0
    assert capsys.readouterr().out == f"{ring.owner('key:1', {1})} key:1\n"
    with pytest.raises(SystemExit):
        main(["--ids", "1,2", "--down", "1,2", "k"])

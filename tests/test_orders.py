"""Balanced order designs (vprefer/annotate/orders.py) and how a run keeps the design it was planned with."""

import json
import math
from collections import Counter

import polars as pl
import pytest

from vprefer.annotate import annotate
from vprefer.annotate.orders import random_orders, shown_orders, williams_row
from vprefer.annotate.requests import order_design, plan
from vprefer.annotate.rubric import Rubric
from vprefer.errors import InputError
from vprefer.store import Run
from vprefer.testing.helpers import local_preset


def position_counts(orders, n):
    return Counter((img, pos) for o in orders for pos, img in enumerate(o))


def adjacent_pairs(orders):
    return Counter((o[i], o[i + 1]) for o in orders for i in range(len(o) - 1))


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6, 7])
def test_latin_square_blocks_every_image_in_every_position(n):
    for blocks in (1, 2):
        k = blocks * n
        if k > math.factorial(n):
            continue
        orders = shown_orders("p", n, k)
        assert len({tuple(o) for o in orders}) == k  # distinct
        assert all(sorted(o) == list(range(n)) for o in orders)
        c = position_counts(orders, n)
        assert set(c.values()) == {blocks} and len(c) == n * n, c


@pytest.mark.parametrize("n", [2, 4, 6, 8])
def test_williams_even_n_each_ordered_adjacent_pair_once(n):
    c = adjacent_pairs(shown_orders(f"set{n}", n, n))
    assert len(c) == n * (n - 1) and set(c.values()) == {1}


@pytest.mark.parametrize("n", [3, 5, 7])
def test_williams_odd_n_needs_2n_orders_then_each_pair_twice(n):
    c = adjacent_pairs(shown_orders(f"set{n}", n, 2 * n))
    assert len(c) == n * (n - 1) and set(c.values()) == {2}
    half = adjacent_pairs(shown_orders(f"set{n}", n, n))
    assert len(half) < n * (n - 1) or len(set(half.values())) > 1  # n orders alone are not carry-over balanced


@pytest.mark.parametrize("n,k", [(4, 3), (4, 6), (4, 13), (5, 7), (3, 4), (6, 9), (4, 24)])
def test_k_not_a_multiple_of_n_positions_differ_by_at_most_one(n, k):
    orders = shown_orders("q", n, k)
    assert len({tuple(o) for o in orders}) == min(k, math.factorial(n))
    c = position_counts(orders, n)
    per = [c.get((i, p), 0) for i in range(n) for p in range(n)]
    assert max(per) - min(per) <= 1


def test_orders_are_a_seeded_prefix_and_the_random_design_is_unchanged():
    assert shown_orders("a", 4, 8)[:5] == shown_orders("a", 4, 5)  # raising K keeps the orders already asked
    assert shown_orders("a", 4, 4) != shown_orders("b", 4, 4)  # relabelled per set
    assert williams_row(6) == [0, 1, 5, 2, 4, 3]
    # the legacy draw, byte for byte as before (runs planned with it keep their orders)
    assert random_orders("p1", 3, 2) == shown_orders("p1", 3, 2, "random")
    assert len(random_orders("p1", 3, 6)) == 6
    with pytest.raises(ValueError, match="unknown order design"):
        shown_orders("a", 3, 1, "latin")


def test_random_orders_leave_first_position_unbalanced():
    """Why the default changed: over 4 random distinct orders of 4 images, some image is first twice."""
    unbalanced = sum(max(Counter(o[0] for o in random_orders(f"s{i}", 4, 4)).values()) > 1 for i in range(60))
    balanced = sum(max(Counter(o[0] for o in shown_orders(f"s{i}", 4, 4)).values()) > 1 for i in range(60))
    assert unbalanced > 30 and balanced == 0


def test_plan_pins_the_design_and_a_legacy_run_keeps_random(judge, synth_run):
    run = Run(synth_run)
    p = local_preset(judge, permutations=3)
    rubric = Rubric.load(p.rubric)
    assert order_design(run, p) == "balanced"
    plan(run, p, rubric, pin=False)
    assert not (synth_run / "state" / f"orders-{p.slug}.json").exists()  # a dry run writes nothing
    annotate(synth_run, p)
    pinned = json.loads((synth_run / "state" / f"orders-{p.slug}.json").read_text())
    assert pinned["design"] == "balanced"
    ann = run.read("annotations").filter(pl.col("aspect") == "aesthetics")
    # 3 images x 3 balanced orders: every image shown once in every position
    assert set(ann.group_by("prompt_id", "image_id", "shown_position").len()["len"]) == {1}
    with pytest.raises(InputError, match="planned with balanced orders"):
        plan(run, p.model_copy(update={"order_design": "random"}), rubric)
    # a run annotated before designs were pinned (no pin file, answers present) keeps the random orders
    (synth_run / "state" / f"orders-{p.slug}.json").unlink()
    assert order_design(run, p) == "random"
    reqs = {r.request_id: r for r in plan(run, p, rubric)}
    legacy = {r.prompt_id: [list(r.image_ids).index(i) for i in r.shown] for r in reqs.values() if r.permutation == 0}
    assert all(o == random_orders(pid, 3, 3)[0] for pid, o in legacy.items())
    assert set(reqs) == set(ann["request_id"])  # same ids: a rerun sends nothing
    assert annotate(synth_run, p).todo == 0


def test_orders_and_request_ids_are_byte_for_byte_those_already_planned():
    """Planning was made fast (a shared JSON encoder, the Williams rows cached per set size): a request id or
    the order behind a permutation index may never change, or a rerun would pay again for answered requests.
    The digest was taken with the code before the change; any change to an id or an order breaks it."""
    import hashlib

    from vprefer.ids import short_hash

    orders = [shown_orders(f"p{i}", n, k, d) for d in ("balanced", "random") for i in range(40)
              for n in (1, 2, 3, 4, 5, 6) for k in (1, 2, n, n + 1, 2 * n, 2 * n + 1)]
    ids = [short_hash("judge", "vp@abc", f"p{i}", ("i1", "i2", "é"), i, n=24) for i in range(50)]
    ids.append(short_hash("x", {"b": 1, "a": [1.5, None]}, 3))
    assert hashlib.sha256(json.dumps([orders, ids]).encode()).hexdigest()[:16] == "d01cd9cd08c3ffd0"

"""Which order each permutation of an image set is shown in: balanced designs, or the legacy random draw.

Why balanced: a judge that favours the image shown first (an additive position
bias) adds that bonus to whichever image sits there. With random distinct
orders some images sit first more often than others, so the bias survives the
mean over permutations. With a balanced design every image sits in every
position equally often, so each image receives the same total bonus and the
ranking of the means is the ranking the bias-free judge gives.

The balanced sequence of orders for a set of ``n`` images is built in blocks of
``n`` orders; each block is a Latin square (every image once in every
position), made as the ``n`` cyclic relabellings ``(row + j) mod n`` of one
base row, so different base rows give disjoint blocks:

* block 0 is a Williams square (base row ``0, 1, n-1, 2, n-2, ...``): for even
  ``n`` every ordered pair of images is adjacent exactly once, which also
  balances first-order carry-over (the image seen just before);
* for odd ``n`` block 1 is block 0 reversed: the two together (``2n`` orders)
  have every ordered adjacent pair exactly twice — the Williams design for odd n;
* further blocks use seeded random base rows from unused blocks.

``K`` orders are the first ``K`` of this sequence (a prefix, so raising
``--permutations`` keeps the orders already asked): when ``K`` is a multiple of
``n`` every image is in every position ``K / n`` times; otherwise position
counts differ by at most one. Images are relabelled by a permutation seeded
by the prompt, so which image comes first is random but reproducible; at most
``n!`` distinct orders exist.
"""

from __future__ import annotations

import functools
import math
import random
from itertools import permutations as all_perms
from typing import Literal

from vprefer.ids import short_hash

Design = Literal["balanced", "random"]
DESIGNS = ("balanced", "random")


def williams_row(n: int) -> list[int]:
    """``0, 1, n-1, 2, n-2, ...``: consecutive differences are all distinct mod n (for even n)."""
    row, lo, hi = [0], 1, n - 1
    for k in range(1, n):
        if k % 2:
            row.append(lo)
            lo += 1
        else:
            row.append(hi)
            hi -= 1
    return row


def _block(base: list[int]) -> list[list[int]]:
    n = len(base)
    return [[(x + j) % n for x in base] for j in range(n)]


def _coset_key(row: list[int]) -> tuple[int, ...]:
    """Rows in the same block differ by a constant mod n; normalise so the first entry is 0."""
    n = len(row)
    return tuple((x - row[0]) % n for x in row)


@functools.lru_cache(maxsize=256)
def _fixed_rows(n: int, k: int) -> tuple[tuple[int, ...], ...] | None:
    """The rows :func:`balanced_rows` gives without drawing from its generator (the Williams block, and its
    reverse for odd n), shared by every set of size ``n``; None when ``k`` needs random further blocks."""
    k = min(k, math.factorial(n))
    fixed = n * (2 if n % 2 else 1) if n > 1 else 1
    if k > fixed:
        return None
    return tuple(tuple(r) for r in balanced_rows(n, k, random.Random(0)))


def balanced_rows(n: int, k: int, rng: random.Random) -> list[list[int]]:
    """The first ``min(k, n!)`` rows of the balanced sequence (before relabelling)."""
    k = min(k, math.factorial(n))
    if n <= 1:
        return [list(range(n))][:k]
    bases = [williams_row(n)]
    if n % 2:
        bases.append(bases[0][::-1])
    used = {_coset_key(b) for b in bases}
    rows: list[list[int]] = []
    b = 0
    while len(rows) < k:
        if b == len(bases):  # a further block, from a base row whose block is not used yet
            while True:
                cand = list(range(n))
                rng.shuffle(cand)
                if _coset_key(cand) not in used:
                    used.add(_coset_key(cand))
                    bases.append(cand)
                    break
        rows += _block(bases[b])
        b += 1
    return rows[:k]


def random_orders(prompt_id: str, n: int, k: int) -> list[list[int]]:
    """The orders every run planned before balanced designs existed: ``k`` distinct shuffles (all of them,
    shuffled, if n! <= k), seeded by the prompt. Kept unchanged so those runs plan the same requests."""
    rng = random.Random(int(short_hash("perm", prompt_id), 16))
    if math.factorial(n) <= k:
        orders = [list(p) for p in all_perms(range(n))]
        rng.shuffle(orders)
        return orders
    seen, out = set(), []
    while len(out) < k:
        o = list(range(n))
        rng.shuffle(o)
        if tuple(o) not in seen:
            seen.add(tuple(o))
            out.append(o)
    return out


def balanced_orders(prompt_id: str, n: int, k: int) -> list[list[int]]:
    """``k`` orders of ``range(n)`` from the balanced sequence, images relabelled by a prompt-seeded shuffle."""
    rng = random.Random(int(short_hash("balanced-orders", prompt_id), 16))
    label = list(range(n))
    rng.shuffle(label)
    rows = _fixed_rows(n, k) or balanced_rows(n, k, rng)  # same rows either way; planning 1M sets needs the cache
    return [[label[x] for x in row] for row in rows]


def shown_orders(prompt_id: str, n: int, k: int, design: Design = "balanced") -> list[list[int]]:
    """``k`` distinct orders of ``range(n)`` (as many as exist if n! < k) for one image set."""
    if design == "random":
        return random_orders(prompt_id, n, k)
    if design == "balanced":
        return balanced_orders(prompt_id, n, k)
    raise ValueError(f"unknown order design {design!r}; choose from {', '.join(DESIGNS)}")

"""Position bias (issue 14): ranking agreement with the truth of a noiseless judge with a first-position bias.

The judge scores ``round(value + bias if shown first else value)`` clamped to 1-5 (the stand-in judge's
rule), values uniform in [1, 5]; sets of 4; orders from ``vprefer.annotate.orders``; rankings and pairs
from ``vprefer.annotate.build_pairs`` (the code a run uses). Agreement = share of within-set pairs ordered
as the true values (a tie counts half), averaged over ``--trials`` worlds. Prints each condition's
agreement and its ratio to the bias-free judge's, and the cost of ``debias="positions"`` in ``build_pairs``
(ratio of times on ``--rows`` annotation rows).

    python benchmarks/position_bias.py [--sets 60 --bias 2 --trials 20 --rows 100000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from vprefer import schema
from vprefer.annotate.orders import random_orders, shown_orders
from vprefer.annotate.pairs import build_pairs
from vprefer.store import Run

N = 4


def annotations(values: dict, orders_for, bias: float) -> pl.DataFrame:
    rows = []
    for pid, vals in values.items():
        for k, order in enumerate(orders_for(pid)):
            for pos, i in enumerate(order, 1):
                v = vals[i] + (bias if pos == 1 else 0.0)
                rows.append({"run_id": "b", "request_id": f"{pid}-{k}", "annotator": "J", "rubric": "h",
                             "prompt_id": pid, "image_id": f"{pid}-{i}", "shown_position": pos, "permutation": k,
                             "aspect": "aesthetics", "score": float(min(5, max(1, round(v)))), "scale_max": 5,
                             "rationale": None, "rank": None, "status": "ok", "latency_s": 0.0, "input_tokens": 0,
                             "output_tokens": 0, "cost_usd": 0.0, "raw": None})
    return schema.frame("annotations", rows)


def agreement(pairs: pl.DataFrame, truth: dict) -> float:
    p = pairs.filter(pl.col("aspect") == "aesthetics")
    return float(np.mean([0.5 if t else float(truth[w] > lo_v)
                          for w, lo_v, t in ((w, truth[lo], t) for w, lo, t in
                                             p.select("win_image_id", "lose_image_id", "tie").rows())]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", type=int, default=60)
    ap.add_argument("--bias", type=float, default=2.0)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--rows", type=int, default=100_000)
    a = ap.parse_args()
    conds = {
        "bias-free judge, 1 order": (lambda p: shown_orders(p, N, 1), 0.0, None),
        "biased, 1 order": (lambda p: shown_orders(p, N, 1), a.bias, None),
        "biased, 1 order, --debias positions": (lambda p: shown_orders(p, N, 1), a.bias, "positions"),
        f"biased, {N} random orders (before)": (lambda p: random_orders(p, N, N), a.bias, None),
        f"biased, {N} random orders, --debias positions": (lambda p: random_orders(p, N, N), a.bias, "positions"),
        f"biased, {N} balanced orders (Latin/Williams)": (lambda p: shown_orders(p, N, N), a.bias, None),
    }
    got: dict[str, list[float]] = {c: [] for c in conds}
    with tempfile.TemporaryDirectory() as tmp:
        for t in range(a.trials):
            rng = np.random.default_rng(t)
            values = {f"t{t}s{s}": list(rng.uniform(1, 5, N)) for s in range(a.sets)}
            truth = {f"{pid}-{i}": v for pid, vals in values.items() for i, v in enumerate(vals)}
            for c, (orders, bias, debias) in conds.items():
                run = Run(Path(tmp) / f"{t}-{abs(hash(c))}", create=True)
                run.write("annotations", annotations(values, orders, bias))
                got[c].append(agreement(build_pairs(run, debias=debias)[1], truth))
        free = float(np.mean(got["bias-free judge, 1 order"]))
        print(f"noiseless judge, +{a.bias:g} points for the image shown first, {a.sets} sets of {N}, "
              f"{a.trials} worlds")
        print(f"{'condition':50s} {'agreement':>9s} {'ratio to bias-free':>19s} {'worlds == bias-free':>20s}")
        for c, xs in got.items():
            same = sum(x == f for x, f in zip(xs, got["bias-free judge, 1 order"]))
            print(f"{c:50s} {np.mean(xs):9.3f} {np.mean(xs) / free:19.3f} {same:>14d}/{len(xs)}")
        # cost of debiasing at scale: build_pairs with and without it on the same rows
        rng = np.random.default_rng(0)
        n_sets = a.rows // (N * N)
        values = {f"s{s}": list(rng.uniform(1, 5, N)) for s in range(n_sets)}
        run = Run(Path(tmp) / "scale", create=True)
        run.write("annotations", annotations(values, lambda p: shown_orders(p, N, N), a.bias))
        times = {}
        for debias in (None, "positions"):
            t0 = time.perf_counter()
            build_pairs(run, debias=debias)
            times[debias] = time.perf_counter() - t0
        rows = run.read("annotations").height
        print(f"build_pairs on {rows:,} rows: {times[None]:.2f}s plain, {times['positions']:.2f}s with "
              f"--debias positions (ratio {times['positions'] / times[None]:.2f})")


if __name__ == "__main__":
    main()

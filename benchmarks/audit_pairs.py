"""Pairwise audit tasks: how many of the judge's mistakes land in front of people, `--strategy disagreement`
vs random pairs. Synthetic image sets with a known truth, judged by the stand-in judge on 127.0.0.1 in several
shown orders; a judge mistake is a (pair, aspect) that the judge's mean score orders against the truth.

    python benchmarks/audit_pairs.py [--sets 60] [--pairs 40] [--permutations 3]

Prints the share of judge mistakes among the chosen pairs for both strategies and their ratio.
"""

from __future__ import annotations

import argparse

from _judge import judge_and_sets


def mistakes(run, chosen) -> float:
    import polars as pl

    truth = run.read("pairs").filter(pl.col("annotator") == "truth", ~pl.col("tie"))
    judge = (run.read("annotations").filter(pl.col("status") == "ok").group_by("image_id", "aspect")
             .agg(pl.col("score").mean()))
    j = dict(((i, a), s) for i, a, s in judge.rows())
    want = {(p, frozenset((w, lo)), a): (w, lo) for p, w, lo, a in truth.select("prompt_id", "win_image_id",
                                                                               "lose_image_id", "aspect").rows()}
    hits = []
    for pid, x, y in chosen:
        for (p, pair, aspect), (w, lo) in want.items():
            if p == pid and pair == frozenset((x, y)) and (w, aspect) in j and (lo, aspect) in j:
                hits.append(float(j[(w, aspect)] <= j[(lo, aspect)]))
    return sum(hits) / max(len(hits), 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", type=int, default=60)
    ap.add_argument("--pairs", type=int, default=40)
    ap.add_argument("--permutations", type=int, default=3)
    a = ap.parse_args()
    from vprefer.annotate import AnnotatorPreset, annotate
    from vprefer.audit.tasks import select_pairs
    from vprefer.ingest import ingest
    from vprefer.store import Run
    from vprefer.testing.synthetic import write_truth_pairs

    with judge_and_sets(a.sets) as (srv, tmp, manifest):
        ingest(manifest, tmp / "run")
        write_truth_pairs(tmp / "run")
        p = AnnotatorPreset.load("local-judge", base_url=srv.base_url, permutations=a.permutations, concurrency=8)
        annotate(tmp / "run", p)
        run = Run(tmp / "run")
        every = mistakes(run, select_pairs(run, 10**9, "random"))
        dis = mistakes(run, select_pairs(run, a.pairs, "disagreement"))
        rnd = [mistakes(run, select_pairs(run, a.pairs, "random", seed=s)) for s in range(20)]
        rnd_mean = sum(rnd) / len(rnd)
        print(f"{a.sets} sets of 4, {a.permutations} shown orders, stand-in judge; {a.pairs} pairs chosen")
        print(f"  judge mistakes over all pairs: {every:.3f}")
        print(f"  among disagreement pairs: {dis:.3f}; among random pairs (mean of 20 draws): {rnd_mean:.3f}")
        print(f"  ratio disagreement / random: {dis / rnd_mean:.2f}")


if __name__ == "__main__":
    main()

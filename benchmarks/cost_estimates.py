"""Cost estimates vs the bill: `--dry-run` figure / billed figure, against the stand-in judge (which reports
usage the way a real server bills: all message text and the schema at ~4 characters a token, 85 tokens per
low-detail image, rationales of the 2-3 sentences the rubric asks for).

    python benchmarks/cost_estimates.py [--sets 60]
"""

from __future__ import annotations

import argparse

from _judge import judge_and_sets


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", type=int, default=60)
    a = ap.parse_args()
    from vprefer.annotate import AnnotatorPreset, annotate
    from vprefer.ingest import ingest
    from vprefer.prompts import sample_prompts, upsample
    from vprefer.store import Run

    with judge_and_sets(a.sets) as (srv, tmp, manifest):
        ingest(manifest, tmp / "base")
        print(f"{a.sets} image sets of 4, 2 orders each, stand-in judge on 127.0.0.1")
        for mode in ("online", "batch"):
            run = tmp / mode
            ingest(manifest, run)
            p = AnnotatorPreset.load("local-judge", base_url=srv.base_url, permutations=2, concurrency=8, mode=mode)
            est = annotate(run, p, dry_run=True)
            annotate(run, p, poll_s=0.05)
            bill = Run(run).read("annotations")["cost_usd"].sum()
            print(f"  {mode:>6}: estimated ${est.est_cost_usd:.4f} ({est.est_basis}); billed ${bill:.4f}; "
                  f"ratio {est.est_cost_usd / bill:.3f}")
            more = p.model_copy(update={"permutations": 3})
            est2 = annotate(run, more, dry_run=True)
            annotate(run, more, poll_s=0.05)
            bill2 = Run(run).read("annotations")["cost_usd"].sum() - bill
            print(f"  {mode:>6}, a third order after calibration: estimated ${est2.est_cost_usd:.4f} "
                  f"({est2.est_basis}); billed ${bill2:.4f}; ratio {est2.est_cost_usd / bill2:.3f}")
        (tmp / "p.txt").write_text("\n".join(f"a {c} {s} {w}" for c in ("red", "blue", "green", "pink", "gold")
                                             for s in ("cube", "ball", "dog", "house") for w in ("", "at night"))
                                   + "\n")
        sample_prompts(tmp / "p.txt", tmp / "up")
        p = AnnotatorPreset.load("local-judge", base_url=srv.base_url, concurrency=8)
        for style in ("descriptive", "tags"):
            est = upsample(tmp / "up", p, style=style, dry_run=True)
            r = upsample(tmp / "up", p, style=style)
            print(f"  upsample {style}: {r.ok} rewrites, estimated ${est.est_cost_usd:.5f}, billed "
                  f"${r.cost_usd:.5f}; ratio {est.est_cost_usd / r.cost_usd:.3f}")


if __name__ == "__main__":
    main()

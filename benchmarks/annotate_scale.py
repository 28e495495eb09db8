"""Annotation bookkeeping at scale: planning (``annotate --dry-run``) and folding journalled answers.

The issue's goals are for 1M image sets: plan in <= 60 s and <= 4 GB, fold 1M answers in <= 30 s. This
script measures what the code does at the size you give, each phase in its own process (so peak memory is
that phase's), and prints each figure as a ratio to the goal's rate (time per set scaled to 1M):

    python benchmarks/annotate_scale.py [--sets 100000] [--fold 20000]

A run is written directly into the tables (4 images per set, files not needed: planning and folding
read tables and the journal only); the fold phase writes ``--fold`` synthetic "done" answers (4 images x
the rubric's aspects each) into the journal, then times ``fold`` into ``annotations``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl


def build(run_dir: Path, sets: int) -> None:

    from vprefer import schema
    from vprefer.store import Run

    run = Run(run_dir, create=True)
    pids = [f"p{i:08d}" for i in range(sets)]
    prompts = pl.DataFrame({"prompt_id": pids, "prompt": [f"prompt {i}" for i in range(sets)],
                            "source": ["bench"] * sets})
    run.write("prompts", prompts.with_columns(pl.lit(None, pl.String).alias("meta")).select(list(schema.SCHEMAS["prompts"]))
              .cast(schema.SCHEMAS["prompts"]))
    img = pl.DataFrame({"prompt_id": [p for p in pids for _ in range(4)]}).with_row_index("k").with_columns(
        (pl.lit("i") + pl.col("k").cast(pl.String).str.zfill(9)).alias("image_id"))
    img = img.with_columns((pl.lit("images/") + pl.col("image_id") + ".png").alias("uri"),
                           pl.lit("g").alias("generator"), pl.lit(0).alias("seed"), pl.lit(512).alias("width"),
                           pl.lit(512).alias("height")).drop("k")
    run.write("images", img.select(list(schema.SCHEMAS["images"])).cast(schema.SCHEMAS["images"]))


def phase_plan(run_dir: Path) -> dict:
    from vprefer.annotate import AnnotatorPreset, annotate

    preset = AnnotatorPreset.load("local-judge", base_url="http://127.0.0.1:9/v1", permutations=1)
    t0 = time.perf_counter()
    res = annotate(run_dir, preset, dry_run=True)
    return {"seconds": time.perf_counter() - t0, "planned": res.planned}


def why(rid: str, pos: str, aspect: str) -> str:
    """A rationale of the rubric's expected length (45 tokens, ~180 characters), different per row."""
    return (f"Image {pos} of {rid}: the {aspect} is judged from the subject, the composition and the detail; "
            f"it is convincing overall with minor flaws near the edges, so it gets a middling score.")[:180]


def phase_journal(run_dir: Path, n: int) -> dict:
    from vprefer.annotate import AnnotatorPreset
    from vprefer.annotate.requests import plan
    from vprefer.annotate.rubric import Rubric
    from vprefer.llm import Journal
    from vprefer.store import Run

    preset = AnnotatorPreset.load("local-judge", base_url="http://127.0.0.1:9/v1", permutations=1)
    rubric = Rubric.load(preset.rubric)
    run = Run(run_dir)
    reqs = plan(run, preset, rubric, limit=n, pin=False)
    aspects = list(rubric.aspects)
    with Journal(run, preset.slug, durable=False) as j:
        recs = []
        for r in reqs:
            pos = {str(p): {a: 3 for a in aspects} for p in range(1, r.n + 1)}
            recs.append({"event": "done", "request_id": r.request_id, "status": "ok", "run_id": "bench",
                         "annotator": preset.annotator_id, "rubric": rubric.hash, "scale_max": 5,
                         "prompt_id": r.prompt_id, "shown": list(r.shown), "permutation": 0, "scores": pos,
                         "rationales": {p: {a: why(r.request_id, p, a) for a in aspects} for p in pos},
                         "ranks": {a: {p: int(p) for p in pos} for a in aspects}, "raw": None,
                         "input_tokens": 1000, "output_tokens": 200, "cost_usd": 0.001, "latency_s": 0.2,
                         "attempts": 1, "error": None})
            if len(recs) == 5000:
                j.write_many(recs)
                recs = []
        j.write_many(recs)
    return {"journalled": len(reqs)}


def phase_fold(run_dir: Path) -> dict:
    """Timed in a process of its own, so the peak memory is the fold's (not the journal writer's)."""
    from vprefer.annotate import AnnotatorPreset
    from vprefer.annotate.records import fold, ledger_for
    from vprefer.annotate.rubric import Rubric
    from vprefer.store import Run

    preset = AnnotatorPreset.load("local-judge", base_url="http://127.0.0.1:9/v1", permutations=1)
    aspects = list(Rubric.load(preset.rubric).aspects)
    run = Run(run_dir)
    t0 = time.perf_counter()
    ledger = ledger_for(run, preset.slug, preset.annotator_id)
    added = fold(run, ledger, aspects)
    el = time.perf_counter() - t0
    rows = run.scan("annotations").select(pl.len()).collect().item()  # counted, not read: that memory is not the fold's
    return {"seconds": el, "folded": added, "rows": rows}


def child(kind: str, run_dir: str, n: int) -> None:
    phases = {"plan": lambda: phase_plan(Path(run_dir)), "journal": lambda: phase_journal(Path(run_dir), n),
              "fold": lambda: phase_fold(Path(run_dir))}
    out = phases[kind]()
    out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", type=int, default=100_000)
    ap.add_argument("--fold", type=int, default=20_000)
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a.child[0], a.child[1], int(a.child[2]))
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        t0 = time.perf_counter()
        build(run_dir, a.sets)
        print(f"built a run of {a.sets:,} sets x 4 images in {time.perf_counter() - t0:.1f}s")
        res = {}
        for kind, n in (("plan", 0), ("journal", a.fold), ("fold", 0)):
            p = subprocess.run([sys.executable, __file__, "--child", kind, str(run_dir), str(n)],
                               capture_output=True, text=True)
            if p.returncode:
                sys.exit(p.stderr[-3000:])
            res[kind] = json.loads(p.stdout.strip().splitlines()[-1])
    pl_, fo = res["plan"], res["fold"]
    plan_1m = pl_["seconds"] * 1e6 / pl_["planned"]
    fold_1m = fo["seconds"] * 1e6 / max(1, fo["folded"])
    print(f"plan (dry run): {pl_['planned']:,} sets in {pl_['seconds']:.1f}s, peak {pl_['peak_rss_gib']:.2f} GiB; "
          f"scaled to 1M: {plan_1m:.0f}s; goal 60 s -> ratio goal/ours = {60 / plan_1m:.2f}")
    print(f"fold: {fo['folded']:,} answers ({fo['rows']:,} rows) in {fo['seconds']:.1f}s, peak "
          f"{fo['peak_rss_gib']:.2f} GiB; scaled to 1M: {fold_1m:.0f}s; goal 30 s -> ratio goal/ours = "
          f"{30 / fold_1m:.2f}")


if __name__ == "__main__":
    main()

"""Time to turn 10^5 and 10^6 annotation rows into rankings and pairs (lazy polars).

Rows are synthetic but shaped like a real run: 4 images per set, 4 aspects,
2 permutations, 1-5 integer scores. Prints seconds, rows/s and the peak memory
of ``build_pairs`` (run in its own process, so the figure is its own) per size,
and the ratio to a plain-Python dict-of-lists reference on the first size.
Issue 14's goal: 10^7 rows in <= 30 s with bounded memory.

    python benchmarks/pairs_scale.py [--sizes 100000,1000000,10000000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from itertools import combinations
from pathlib import Path

import numpy as np
import polars as pl

from vprefer import schema
from vprefer.annotate.pairs import build_pairs
from vprefer.schema import ASPECTS
from vprefer.store import Run


def synth(n_rows: int, seed: int = 0) -> pl.DataFrame:
    per_req = 4 * len(ASPECTS)
    n_req = n_rows // per_req
    rng = np.random.default_rng(seed)
    req = np.repeat(np.arange(n_req), per_req)
    prompt = req // 2
    img = (np.tile(np.repeat(np.arange(4), len(ASPECTS)), n_req))
    return pl.DataFrame({
        "run_id": "bench", "request_id": pl.Series(req).cast(pl.String), "annotator": "bench",
        "rubric": "r", "prompt_id": pl.Series(prompt).cast(pl.String),
        "image_id": pl.Series(prompt * 4 + img).cast(pl.String),
        "shown_position": pl.Series(img + 1, dtype=pl.Int32), "permutation": pl.Series(req % 2, dtype=pl.Int32),
        "aspect": np.tile(np.array(ASPECTS), n_req * 4), "score": rng.integers(1, 6, n_req * per_req).astype(float),
        "scale_max": pl.Series([5] * (n_req * per_req), dtype=pl.Int32), "rationale": "r",
        "rank": pl.Series([None] * (n_req * per_req), dtype=pl.Int32), "status": "ok", "latency_s": 0.0,
        "input_tokens": pl.Series([0] * (n_req * per_req), dtype=pl.Int64),
        "output_tokens": pl.Series([0] * (n_req * per_req), dtype=pl.Int64), "cost_usd": 0.0, "raw": pl.Series([None] * (n_req * per_req), dtype=pl.String),
    })


def python_reference(df: pl.DataFrame) -> int:
    by = defaultdict(lambda: defaultdict(list))
    for r, p, i, a, s in df.select("request_id", "prompt_id", "image_id", "aspect", "score").iter_rows():
        by[(r, a)][i].append(s)
    agg = defaultdict(list)
    for (r, a), imgs in by.items():
        for x, y in combinations(sorted(imgs), 2):
            agg[(a, x, y)].append(imgs[x][0] - imgs[y][0])
    return len(agg)


def child(folder: str) -> None:
    t0 = time.perf_counter()
    rk, pairs = build_pairs(Run(Path(folder)))
    print(json.dumps({"seconds": time.perf_counter() - t0, "pairs": pairs.height, "rankings": rk.height,
                      "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a.child)
    sizes = [int(s) for s in a.sizes.split(",")]
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            run = Run(Path(tmp), create=True)
            df = synth(n)
            run.write("annotations", schema.validate("annotations", df))
            p = subprocess.run([sys.executable, __file__, "--child", tmp], capture_output=True, text=True)
            if p.returncode:
                sys.exit(p.stderr[-3000:])
            r = json.loads(p.stdout.strip().splitlines()[-1])
            el = r["seconds"]
            line = (f"{df.height:>10,} annotation rows -> {r['pairs']:,} pairs, {r['rankings']:,} rankings in "
                    f"{el:.2f}s ({df.height / el:,.0f} rows/s), peak {r['peak_gib']:.2f} GiB")
            if n == sizes[0]:
                t0 = time.perf_counter()
                python_reference(df)
                ref = time.perf_counter() - t0
                line += f"; plain-Python reference (aspects only) {ref:.2f}s -> ratio {ref / el:.1f}x"
            if n >= 10_000_000:
                line += f"; goal 30 s -> ratio goal/ours = {30 / el:.2f}"
            print(line, flush=True)
            del df


if __name__ == "__main__":
    main()

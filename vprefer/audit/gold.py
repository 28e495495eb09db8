"""Gold tasks: sets whose order is known, to measure each rater's attention.

A gold item is a run image next to a visibly corrupted copy of it (heavy blur and
noise): any attentive person ranks the original above the copy on aesthetics,
fidelity and overall. The copy is a real image file written into the run
(``RUN/images/gold/``, so the server's document root covers it) and listed in the
``gold`` table, never in ``images``: it cannot become training data, a score or an
export. Answers on gold tasks go to ``gold_answers``, never to ``human``.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image, ImageFilter

from vprefer import schema
from vprefer.store import Run

CORRUPTION = "gaussian blur r=6 + noise sd=40"
GOLD_ASPECTS = ("aesthetics", "fidelity", schema.OVERALL)
"""Aspects on which the corrupted copy must lose (prompt following and harmlessness may survive a blur)."""


def corrupt(src: Path, seed: int) -> Image.Image:
    """Heavy blur plus Gaussian noise: unmistakably worse, still recognisably the same picture."""
    im = Image.open(src).convert("RGB").filter(ImageFilter.GaussianBlur(radius=6))
    a = np.asarray(im, dtype=np.float32)
    a += np.random.default_rng(seed).normal(0, 40, a.shape)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def ensure_gold(run: Run, n: int, seed: int = 0) -> pl.DataFrame:
    """The first ``n`` gold items of a seeded draw of run images (same seed, same items), writing the missing ones."""
    have = run.read_or_empty("gold")
    if n <= 0:
        return have.clear()
    imgs = run.image_paths().filter(~pl.col("path").str.contains("://")).sort("image_id").unique("image_id",
                                                                                                  maintain_order=True)
    rows = imgs.select("image_id", "prompt_id", "path").rows()
    random.Random(f"gold:{seed}").shuffle(rows)
    picked, new = [], []
    for iid, pid, path in rows[:n]:
        known = have.filter(pl.col("source_image_id") == iid)
        if known.height:
            picked.append(known.row(0, named=True)["image_id"])
            continue
        im = corrupt(Path(path), int(hashlib.sha256(iid.encode()).hexdigest()[:8], 16))
        d = run.subdir("images") / "gold"
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".{iid}.png.tmp"
        im.save(tmp, format="PNG")
        gid = "gold-" + hashlib.sha256(tmp.read_bytes()).hexdigest()[:16]
        tmp.replace(d / f"{gid}.png")
        new.append({"image_id": gid, "source_image_id": iid, "prompt_id": pid, "uri": f"images/gold/{gid}.png",
                    "corruption": CORRUPTION})
        picked.append(gid)
    if new:
        run.append("gold", schema.frame("gold", new))
    return run.read("gold").filter(pl.col("image_id").is_in(picked))


def gold_correct(ranked_scores: dict[str, dict[str, float]], original: str, copy: str) -> dict[str, float]:
    """Per gold aspect: 1.0 when the original got the higher value, 0.0 for the copy or a tie; aspects the rater
    left unanswered are absent. ``ranked_scores``: aspect -> image id -> value (higher is better)."""
    out = {}
    for a in GOLD_ASPECTS:
        s = ranked_scores.get(a, {})
        if original in s and copy in s:
            out[a] = 1.0 if s[original] > s[copy] else 0.0
    return out

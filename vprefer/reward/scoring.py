"""Scoring a whole run with VP-Score into its ``scores`` table, recorded in the manifest.

The ``scores`` table is shared by every model that scored the run: a model's
new scores replace its own earlier ones and leave the other models' rows alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from vprefer.store import Result, Run, as_run


@dataclass
class ScoreResult(Result):
    scores: pl.DataFrame  # the rows written: model, prompt_id, image_id, aspect, score
    images: int
    aspects: list[str]


def score_run(model, run: Run | str | Path, *, batch_size: int = 32) -> ScoreResult:
    """``model`` is a VP-Score folder, hub id or loaded :class:`~vprefer.reward.VPScore`; recorded as ``score``."""
    from vprefer.reward.evaluate import score_images
    from vprefer.reward.model import VPScore

    from vprefer.images import require_image_files

    run = as_run(run)  # a wrong run folder (or one without its images) fails before a model is loaded
    require_image_files(run, "score images")
    if isinstance(model, (str, Path)):
        ref, rm = str(model), VPScore.from_pretrained(model)
    else:
        ref, rm = getattr(model, "name", None) or model.base, model
    sc = score_images(rm, run, batch_size=batch_size)
    with run.command("score", {"model": ref}):
        run.replace_rows("scores", sc, "model")
    return ScoreResult(sc, sc["image_id"].n_unique(), list(rm.aspects))

"""Training pairs for VP-Score: read from run directories, split by prompt, batched as tensors."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import polars as pl
import torch
from PIL import Image

from vprefer.errors import InputError, MissingError
from vprefer.ids import short_hash
from vprefer.rankings import training_sources
from vprefer.store import Run, as_run


def load_pairs(runs: Sequence[str | Path | Run], aspects: Sequence[str], annotators: Sequence[str] | None = None,
               annotator_weights: dict[str, float] | None = None) -> pl.DataFrame:
    """Columns: prompt_id, prompt, win_path, lose_path, aspect, aspect_idx, tie, weight (one row per pair).

    ``annotator_weights`` multiply the pair weights (missing annotators: 1; 0 drops the annotator's pairs), so
    human and judge pairs can be mixed in one training set."""
    frames = []
    annotator_weights = annotator_weights or {}
    if any(w < 0 for w in annotator_weights.values()):
        raise InputError(f"annotator weights must be >= 0, got {annotator_weights}")
    for rd in runs:
        run = as_run(rd)
        if not run.has("pairs"):
            raise InputError(f"{run.path}: no pairs table; run `vprefer pairs {run.path}` (or import human rankings) first")
        pairs = run.read("pairs").filter(pl.col("aspect").is_in(list(aspects)))
        if annotators:
            pairs = pairs.filter(pl.col("annotator").is_in(list(annotators)))
        if annotator_weights:
            w = pl.col("annotator").replace_strict(annotator_weights, default=1.0, return_dtype=pl.Float64)
            pairs = pairs.with_columns(pl.col("weight") * w).filter(pl.col("weight") > 0)
        imgs = run.image_paths().unique("image_id").select("image_id", "path")
        prompts = run.read("prompts").select("prompt_id", "prompt")
        frames.append(pairs.join(prompts, on="prompt_id")
                      .join(imgs.rename({"image_id": "win_image_id", "path": "win_path"}), on="win_image_id")
                      .join(imgs.rename({"image_id": "lose_image_id", "path": "lose_path"}), on="lose_image_id"))
    df = pl.concat(frames) if frames else pl.DataFrame()
    if df.height and not annotators and not annotator_weights:  # weights are a mix chosen on purpose
        training_sources(df, None, where=", ".join(str(r) for r in runs),
                         option="--annotator NAME (or the recipe's annotators: [NAME]; NAME=W,... to mix on purpose)")
    if df.height == 0:
        raise InputError(f"no training pairs for aspects {list(aspects)} and annotators {annotators} in {list(runs)}")
    missing = [p for p in df["win_path"].head(50).to_list() if not Path(p).exists()]
    if missing:
        raise MissingError(f"image files missing, e.g. {missing[0]} (imported without images?)")
    return df.with_columns(pl.col("aspect").replace_strict({a: i for i, a in enumerate(aspects)},
                                                           return_dtype=pl.Int64).alias("aspect_idx"))


def split_by_prompt(df: pl.DataFrame, val_fraction: float, seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Hold out whole prompts (pairs of one prompt are correlated: never split them across sets)."""
    if val_fraction <= 0:
        return df, df.clear()
    pids = df["prompt_id"].unique().sort().to_list()
    val = {p for p in pids if int(short_hash("split", seed, p), 16) % 10_000 < val_fraction * 10_000}
    is_val = pl.col("prompt_id").is_in(list(val))
    return df.filter(~is_val), df.filter(is_val)


class PairDataset(torch.utils.data.Dataset):
    def __init__(self, df: pl.DataFrame):
        self.rows = df.select("prompt", "win_path", "lose_path", "aspect_idx", "tie", "weight").to_dicts()

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


class PairCollator:
    """Loads and preprocesses images at batch time (workers can parallelise it)."""

    def __init__(self, model):
        self.tokenizer, self.proc, self.model = model.tokenizer, model.image_processor, model

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        load = lambda p: Image.open(p).convert("RGB")  # noqa: E731
        px = self.proc(images=[load(x["win_path"]) for x in items] + [load(x["lose_path"]) for x in items],
                       return_tensors="pt")["pixel_values"]
        ids, mask = self.model.tokenize([x["prompt"] for x in items], "cpu")
        return {"pixel_values": px, "input_ids": ids, "attention_mask": mask,
                "aspect_idx": torch.tensor([x["aspect_idx"] for x in items]),
                "tie": torch.tensor([bool(x["tie"]) for x in items]),
                "weight": torch.tensor([float(x["weight"]) for x in items])}

"""Evaluating a reward model against gold rankings (human or AI): scores for a run's images, then the
shared agreement metrics (``vprefer.metrics``: both tie rules, Kendall tau-b, bootstrap CIs over prompts)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import polars as pl

from vprefer import schema
from vprefer.errors import InputError
from vprefer.metrics import kendall_per_prompt, pair_metrics
from vprefer.store import Run, as_run


def score_images(model, run: Run, image_ids: list[str] | None = None, batch_size: int = 32) -> pl.DataFrame:
    """A ``scores`` table (model, prompt_id, image_id, aspect, score) for the run's images.

    Scores depend on the prompt, so an image shown under two prompts is scored twice."""
    imgs = run.image_paths()
    if image_ids is not None:
        imgs = imgs.filter(pl.col("image_id").is_in(image_ids))
    rows = imgs.select("prompt_id", "image_id", "prompt", "path").to_dicts()
    paths = [r["path"] for r in rows]
    s = model.score([r["prompt"] for r in rows], paths, batch_size=batch_size)
    name = getattr(model, "name", None) or model.base
    return pl.DataFrame([{"model": name, "prompt_id": r["prompt_id"], "image_id": r["image_id"], "aspect": a,
                          "score": s[a][k]} for a in s for k, r in enumerate(rows)], schema=schema.SCHEMAS["scores"])


def evaluate_run(model, run_dir: str | Path, *, annotator: str | None = None, aspects: list[str] | None = None,
                 n_boot: int = 1000, seed: int = 0, prompt_ids: list[str] | None = None) -> dict:
    """``prompt_ids``: evaluate on these prompts only (e.g. those a model held out from training)."""
    run = Run(run_dir)
    pairs = run.read("pairs")
    if prompt_ids is not None:
        pairs = pairs.filter(pl.col("prompt_id").is_in(list(prompt_ids)))
    have = sorted(pairs["annotator"].unique().to_list())
    annotator = annotator or (schema.HUMAN if schema.HUMAN in have else (have[0] if len(have) == 1 else None))
    if annotator is None:
        raise InputError(f"{run_dir} has pairs from several annotators {have}; choose one with --annotator")
    if annotator not in have:
        raise InputError(f"no pairs from annotator {annotator!r} in {run_dir}; available: {have}")
    aspects = [a for a in (aspects or model.aspects) if a in model.aspects]
    pairs = pairs.filter(pl.col("annotator") == annotator, pl.col("aspect").is_in(aspects))
    if pairs.height == 0:
        raise InputError(f"no {annotator} pairs for the model's aspects {model.aspects} in {run_dir}")
    scores = score_images(model, run, sorted(set(pairs["win_image_id"]) | set(pairs["lose_image_id"])))
    table = pair_metrics(pairs, scores, n_boot=n_boot, seed=seed)
    rk = run.read("rankings").filter(pl.col("annotator") == annotator) if run.has("rankings") else None
    taus = kendall_per_prompt(rk, scores) if rk is not None else {}
    table = table.with_columns(pl.col("aspect").replace_strict(taus, default=None, return_dtype=pl.Float64)
                               .alias("kendall_tau_b"))
    return {"annotator": annotator, "run": str(run_dir), "n_boot": n_boot, "prompts": pairs["prompt_id"].n_unique(),
            "tie_rules": {"skip_ties": "gold ties skipped, predicted tie wrong (ImageReward)",
                          "ties_half": "gold tie: 1 if predicted tie else 0.5; predicted tie on a decided pair: 0.5"},
            "aspects": table.to_dicts()}


def held_out_prompts(model: str | Path) -> list[str]:
    """The prompts a trained VP-Score held out from training (``MODEL/held_out.json``, written by train-reward)."""
    f = Path(model) / "held_out.json"
    if not f.is_file():
        raise InputError(f"--held-out: {f} not found (written by train-reward)")
    ids = json.loads(f.read_text())["prompt_ids"]
    if not ids:
        raise InputError(f"--held-out: {model} held out no prompts (training.val_fraction was 0)")
    return ids


def evaluate_reward(model: str | Path, data: str | Path, *, fmt: str = "vprefer", images_root: str | Path | None = None,
                    annotator: str | None = None, n_boot: int = 1000, baseline: str | Path | None = None,
                    held_out: bool = False) -> dict:
    """What ``vprefer eval-reward`` reports, for API users too: a VP-Score (folder or hub id) on a run or an
    exchange file (``fmt``: imagereward / hpdv2 need ``images_root``), optionally only on the prompts it held
    out, optionally beside a ``baseline`` model on the same pairs. Inputs are checked before a model loads."""
    from vprefer.exchange import FORMATS_IN, import_file

    data = Path(data)
    if fmt not in ("vprefer", *FORMATS_IN):
        raise InputError(f"unknown format {fmt!r}; --format is one of: vprefer, {', '.join(FORMATS_IN)}")
    if fmt == "vprefer":
        from vprefer.images import require_image_files

        require_image_files(as_run(data), "evaluate a reward model")
    elif not data.is_file():
        raise InputError(f"{data}: no such {fmt} file")
    if fmt in ("imagereward", "hpdv2") and images_root is None:
        raise InputError("--images-root is needed to score the images of an imagereward/hpdv2 file")
    prompt_ids = held_out_prompts(model) if held_out else None
    from vprefer.reward.model import VPScore  # torch: only once the inputs are known to be good

    rm = VPScore.from_pretrained(model)
    before = VPScore.from_pretrained(baseline) if baseline else None
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = data
        if fmt != "vprefer":
            run_dir = Path(tmp) / "run"
            import_file(data, run_dir, fmt, images_root)
        rep = evaluate_run(rm, run_dir, annotator=annotator, n_boot=n_boot, prompt_ids=prompt_ids)
        if before is not None:
            base = evaluate_run(before, run_dir, annotator=annotator, n_boot=n_boot, prompt_ids=prompt_ids)
            rep["baseline"] = {"model": str(baseline), "aspects": base["aspects"]}
    rep["run"], rep["held_out"] = str(data), held_out
    return rep

"""Captions as training data: new ``prompts`` rows, and an HF dataset of image + caption.

A folder of images becomes a text-to-image training set this way (DALL-E 3
retrained on its own descriptive captions; ShareGPT-4o-Image's image-first
prompts): each caption becomes a prompt (source ``caption:<style>``, meta naming
the image, the style, the annotator and the caption's request), so
``vprefer generate`` can draw new image sets for it, and ``export --format
hf-captions`` writes the (image, caption) pairs themselves.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from vprefer import ids, schema
from vprefer.errors import MissingError
from vprefer.store import Run, as_run, atomic_write_bytes


def _selected(run: Run, style: str | None, annotator: str | None) -> pl.DataFrame:
    cap = run.read_or_empty("captions")
    if style:
        cap = cap.filter(pl.col("style") == style)
    if annotator:
        cap = cap.filter(pl.col("annotator") == annotator)
    if cap.is_empty():
        what = ", ".join(f"{k} {v}" for k, v in (("style", style), ("annotator", annotator)) if v)
        raise MissingError(f"{run.path}: no captions{' for ' + what if what else ''} (run `vprefer caption` first)")
    return cap


def captions_to_prompts(run_dir: str | Path | Run, *, style: str | None = None,
                        annotator: str | None = None) -> int:
    """Add one prompt per caption not yet a prompt (ids are hashes of the text: idempotent); returns how many."""
    run = as_run(run_dir)
    cap = _selected(run, style, annotator)
    have = set(run.read_or_empty("prompts")["prompt_id"].to_list())
    rows = []
    for r in cap.iter_rows(named=True):
        pid = ids.prompt_id(r["caption"])
        if pid not in have:
            have.add(pid)
            rows.append({"prompt_id": pid, "prompt": r["caption"], "source": f"caption:{r['style']}",
                         "meta": json.dumps({"image_id": r["image_id"], "style": r["style"],
                                             "annotator": r["annotator"], "instruction": r["instruction"],
                                             "request_id": r["request_id"]})})
    if rows:
        with run.command("caption to-prompts", {"style": style, "annotator": annotator}) as entry:
            run.append("prompts", schema.frame("prompts", rows))
            run.compact("prompts")
            entry.update(prompts=len(rows))
    return len(rows)


def export_captions_hf(run_dir: str | Path | Run, out: Path, *, style: str | None = None,
                       annotator: str | None = None) -> int:
    """A folder that ``datasets.load_dataset(str(out))`` reads: one row per caption, with the image's bytes."""
    run = as_run(run_dir)
    cap = _selected(run, style, annotator)
    paths = dict(run.image_paths().select("image_id", "path").unique("image_id").iter_rows())
    uris = dict(run.read("images").select("image_id", "uri").unique("image_id").iter_rows())
    rows = []
    for r in cap.iter_rows(named=True):
        p = paths.get(r["image_id"])
        data = Path(p).read_bytes() if p and Path(p).exists() else None
        rows.append({"image": {"bytes": data, "path": uris.get(r["image_id"])}, "caption": r["caption"],
                     "image_id": r["image_id"], "style": r["style"], "annotator": r["annotator"]})
    out = Path(out)
    (out / "data").mkdir(parents=True, exist_ok=True)
    tmp = out / "data" / ".train.tmp"
    pl.DataFrame(rows, schema={"image": pl.Struct({"bytes": pl.Binary, "path": pl.String}), "caption": pl.String,
                               "image_id": pl.String, "style": pl.String, "annotator": pl.String}).write_parquet(tmp)
    tmp.replace(out / "data" / "train-00000-of-00001.parquet")
    card = ("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/*.parquet\n"
            "dataset_info:\n  features:\n  - name: image\n    dtype: image\n  - name: caption\n    dtype: string\n"
            "  - name: image_id\n    dtype: string\n  - name: style\n    dtype: string\n"
            "  - name: annotator\n    dtype: string\n---\n"
            f"# vprefer captions\n\nExported from `{run.path.name}` by vprefer: one row per (image, caption style, "
            "annotator): `image`, `caption` written by a multimodal LLM (`vprefer caption`).\n")
    atomic_write_bytes(out / "README.md", card.encode())
    return len(rows)

"""Bring a user's own prompts and images into a run directory.

The manifest is JSONL, CSV or parquet with one row per prompt::

    {"prompt": "a red cube", "images": ["imgs/a.png", "imgs/b.png"],
     "generator": "sdxl", "seeds": [1, 2], "prompt_id": "optional", "meta": {...}}

``images`` are paths relative to the manifest's folder, or http(s) URLs. In
CSV, ``images``/``seeds``/``generator`` may be a JSON list or a ``|``-separated
string. ``generator`` may be one name for the row or one per image.

Decisions (documented in the README too):

* All-or-nothing by default: if any image is bad, nothing is written and the
  report lists every bad file; ``skip_bad`` ingests the rest.
* Images are copied into ``RUN/images/<sha256><ext>`` (content-addressed), so a
  run directory is self-contained and moving it breaks nothing.
* A path escaping the manifest's folder (``..``, absolute, or a symlink that
  resolves outside) is refused unless ``allow_outside``: a shared manifest must
  not be able to read arbitrary files off the machine that ingests it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from vprefer import ids, schema
from vprefer.errors import InputError, MissingError, VpreferError
from vprefer.images import BadImage, Checked, fetch_checked, read_checked
from vprefer.store import Run, atomic_write_bytes

URL = re.compile(r"^https?://", re.I)


@dataclass
class IngestReport:
    prompts: int = 0
    images: int = 0
    new_prompts: int = 0  # not in the run before (a re-ingest of the same manifest adds none)
    new_images: int = 0
    bad: list[tuple[int, str, str]] = field(default_factory=list)  # (row, file, reason)
    dropped_prompts: list[int] = field(default_factory=list)


class IngestError(VpreferError, ValueError):
    """Some images are bad and nothing was written; ``report`` lists them."""

    def __init__(self, report: IngestReport, message: str):
        super().__init__(message)
        self.report = report


def read_manifest(path: Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        raise MissingError(f"manifest {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        rows = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise InputError(f"{path}:{n}: invalid JSON ({e.msg})") from None
    elif suffix == ".csv":
        rows = pl.read_csv(path, infer_schema=False).to_dicts()
    elif suffix == ".parquet":
        rows = pl.read_parquet(path).to_dicts()
    else:
        raise InputError(f"{path}: unknown manifest format {suffix!r}; use .jsonl, .csv or .parquet")
    for n, r in enumerate(rows, 1):
        missing = [c for c in ("prompt", "images") if r.get(c) in (None, "")]
        if missing:
            raise InputError(
                f"{path}: row {n} lacks {', '.join(missing)}; each row needs 'prompt' and 'images' "
                "(optional: generator, seeds, prompt_id, meta)"
            )
    return rows


def _as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):
        s = value.strip()
        if s.startswith("["):
            return list(json.loads(s))
        return [v.strip() for v in s.split("|") if v.strip()]
    return [value]


def resolve_local(root: Path, ref: str, allow_outside: bool) -> Path:
    """The file a manifest entry points at, refusing escapes from ``root`` unless allowed."""
    p = Path(ref)
    if p.is_absolute() and not allow_outside:
        raise BadImage(f"{ref}: absolute path refused (use --allow-outside to permit)")
    full = p if p.is_absolute() else root / p
    if not allow_outside:
        real, real_root = os.path.realpath(full), os.path.realpath(root)
        if os.path.commonpath([real, real_root]) != real_root:
            kind = "symlink" if full.is_symlink() else "path"
            raise BadImage(f"{ref}: {kind} escapes the manifest's folder (use --allow-outside to permit)")
    return full


def load_image(root: Path, ref: str, allow_outside: bool) -> Checked:
    if URL.match(ref):
        return fetch_checked(ref)
    if "://" in ref:
        raise BadImage(f"{ref}: only local paths and http(s) URLs are supported")
    return read_checked(resolve_local(root, ref, allow_outside))


def store_image(run: Run, img: Checked) -> tuple[str, str]:
    """Write image bytes content-addressed under RUN/images; returns (image_id, uri)."""
    image_id = ids.sha256_bytes(img.data)
    uri = f"images/{image_id}{img.ext}"
    target = run.path / uri
    if not target.exists():
        atomic_write_bytes(target, img.data)
    return image_id, uri


def ingest(
    manifest: Path, out: Path, *, skip_bad: bool = False, allow_outside: bool = False, source: str = "ingest"
) -> IngestReport:
    manifest = Path(manifest)
    rows = read_manifest(manifest)
    root = manifest.parent
    report = IngestReport()
    checked: list[tuple[dict, list[tuple[int, Checked]]]] = []
    for n, row in enumerate(rows, 1):
        good = []
        for k, ref in enumerate(_as_list(row["images"])):
            try:
                good.append((k, load_image(root, str(ref), allow_outside)))
            except BadImage as e:
                report.bad.append((n, str(ref), str(e)))
        checked.append((row, good))
    if report.bad and not skip_bad:
        raise IngestError(report, f"{len(report.bad)} bad image(s) in {manifest}; nothing was written "
                                  "(fix them, or pass --skip-bad to ingest the rest)")

    run = Run(out, create=True)
    prompt_rows, image_rows = [], []
    for n, (row, good) in enumerate(checked, 1):
        if not good:
            report.dropped_prompts.append(n)
            continue
        text = str(row["prompt"])
        pid = str(row.get("prompt_id") or ids.prompt_id(text))
        meta = row.get("meta")
        prompt_rows.append({
            "prompt_id": pid, "prompt": text, "source": source,
            "meta": meta if isinstance(meta, str) or meta is None else json.dumps(meta),
        })
        gens, seeds = _as_list(row.get("generator")), _as_list(row.get("seeds"))
        for k, img in good:
            image_id, uri = store_image(run, img)
            gen = gens[k] if len(gens) > 1 else (gens[0] if gens else None)
            seed = seeds[k] if k < len(seeds) else None
            image_rows.append({
                "image_id": image_id, "prompt_id": pid, "uri": uri,
                "generator": None if gen is None else str(gen),
                "seed": None if seed in (None, "") else int(seed),
                "width": img.width, "height": img.height,
            })
    had_p = set(run.read_or_empty("prompts")["prompt_id"].to_list())
    had_i = set(run.read_or_empty("images").select("image_id", "prompt_id").iter_rows())
    report.new_prompts = len({r["prompt_id"] for r in prompt_rows} - had_p)
    report.new_images = len({(r["image_id"], r["prompt_id"]) for r in image_rows} - had_i)
    with run.command("ingest", {"manifest": str(manifest), "skip_bad": skip_bad,
                                "allow_outside": allow_outside}) as entry:
        run.append("prompts", schema.frame("prompts", prompt_rows))
        run.append("images", schema.frame("images", image_rows))
        run.compact("prompts")
        run.compact("images")
        entry.update(bad_images=len(report.bad), new_prompts=report.new_prompts, new_images=report.new_images)
    report.prompts, report.images = len(prompt_rows), len(image_rows)
    return report


from vprefer.api import callable_module  # noqa: E402  (vprefer.ingest(...) calls the job)

callable_module(__name__, ingest)

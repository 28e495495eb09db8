"""Exchange formats, both ways: ImageReward / HPDv2 test json, Pick-a-Pic parquet, HF datasets.

Human rankings land in the same ``rankings``/``pairs`` tables as AI ones, with
annotator ``human`` and aspect ``overall``, so evaluation code serves both.

Conventions (also in the README):

* ImageReward/HPDv2 ranks (1 = best, ties allowed) are stored as scores
  ``-rank`` (higher is better), which makes the export exact.
* Each source row's own fields are kept in its prompt's ``meta`` under
  ``sets`` (one entry per image set, since one prompt text may carry several:
  row number (numbered on after earlier imports), ``id``, the listed image
  paths, any other fields, the key order), so ``export --format imagereward`` of an imported run writes the
  same rows in the same order with the same ids — the file it came from.
* ``--images-root DIR`` reads the listed image files (relative to DIR) and
  copies them in. Without it, rankings are imported *without images*: the
  image id is then ``sha256("path:" + path)`` and the uri is the listed path.
* Pick-a-Pic ``label_0`` is 1 (image 0 preferred), 0 (image 1) or 0.5 (tie);
  the set is stored in its original order with scores ``[label_0, 1 - label_0]``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import polars as pl

from vprefer import ids, schema
from vprefer.errors import MissingError, VpreferError
from vprefer.images import BadImage, check_bytes, read_checked
from vprefer.ingest import store_image
from vprefer.rankings import ranking_pairs, ranks_from_scores
from vprefer.store import Result, Run, as_run, atomic_write_bytes, is_url

FORMATS_IN = ("imagereward", "hpdv2", "pickapic")
FORMATS_OUT = ("imagereward", "pickapic", "hf", "hf-captions")


class FormatError(VpreferError, ValueError):
    """An exchange file that is not what its format says, or an export the run cannot serve."""


@dataclass
class ImportCounts(Result):
    """Rows brought in by one import (``ties`` counts the tied pairs among ``pairs``)."""

    prompts: int
    images: int
    rankings: int
    pairs: int
    ties: int


def _save(run: Run, name: str, prompts, images, rankings, pairs, recipe: dict) -> ImportCounts:
    with run.command(name, recipe):
        for table, rows in (("prompts", prompts), ("images", images), ("rankings", rankings), ("pairs", pairs)):
            run.append(table, schema.frame(table, rows))
            run.compact(table)
    return ImportCounts(len(prompts), len(images), len(rankings), len(pairs), sum(p["tie"] for p in pairs))


# ------------------------------------------------------------------ import
def import_ranking_json(path: Path, out: Path | Run, *, fmt: str = "imagereward",
                        images_root: Path | None = None) -> ImportCounts:
    path = Path(path)
    try:
        entries = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise FormatError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); --format {fmt} reads "
                          "a JSON list (a Pick-a-Pic parquet file is --format pickapic)") from None
    except UnicodeDecodeError:
        raise FormatError(f"{path}: not a text file, so not {fmt} JSON (a Pick-a-Pic parquet file is "
                          "--format pickapic)") from None
    if not isinstance(entries, list):
        raise FormatError(f"{path}: expected a JSON list of {{prompt, generations|image_path, ranking|rank}}")
    run = as_run(out, create=True)
    prompts: dict[str, dict] = {}
    images, rankings, pairs = [], [], []
    seen_images: set[str] = set()
    for n, e in enumerate(entries, 1):
        e = e if isinstance(e, dict) else {}
        gens = e.get("generations", e.get("image_path"))
        ranks = e.get("ranking", e.get("rank"))
        if "prompt" not in e or gens is None or ranks is None:
            raise FormatError(f"{path}: entry {n} needs 'prompt', 'generations' (or 'image_path') "
                              "and 'ranking' (or 'rank')")
        if len(gens) != len(ranks):
            raise FormatError(f"{path}: entry {n} has {len(gens)} images but {len(ranks)} ranks")
        pid = ids.prompt_id(e["prompt"])
        meta = prompts.setdefault(pid, {"prompt_id": pid, "prompt": e["prompt"], "source": fmt,
                                        "meta": {"id": e.get("id"), "sets": []}})["meta"]
        image_ids: list[str] = []
        meta["sets"].append({"row": n - 1, "image_ids": image_ids, "keys": list(e), "generations": list(gens),
                             "fields": {k: v for k, v in e.items() if k not in _RANKING_FIELDS}})
        for g in gens:
            if images_root is not None:
                img = read_checked(Path(images_root) / g)
                iid, uri = store_image(run, img)
                w, h = img.width, img.height
            else:
                iid, uri, w, h = hashlib.sha256(f"path:{g}".encode()).hexdigest(), str(g), None, None
            image_ids.append(iid)
            if (iid, pid) not in seen_images:
                seen_images.add((iid, pid))
                images.append({"image_id": iid, "prompt_id": pid, "uri": uri, "generator": None,
                               "seed": None, "width": w, "height": h})
        scores = [-float(r) for r in ranks]
        rankings.append({"prompt_id": pid, "aspect": schema.OVERALL, "annotator": schema.HUMAN,
                         "image_ids": image_ids, "scores": scores, "confidence": 1.0})
        pairs += ranking_pairs(pid, image_ids, scores, schema.OVERALL, schema.HUMAN)
    _keep_earlier(run, prompts)
    for p in prompts.values():
        p["meta"] = json.dumps(p["meta"])
    return _save(run, f"import {fmt}", list(prompts.values()), images, rankings, pairs,
                 {"file": str(path), "format": fmt, "images_root": str(images_root) if images_root else None})


_RANKING_FIELDS = ("prompt", "generations", "image_path", "ranking", "rank")


def _keep_earlier(run: Run, prompts: dict[str, dict]) -> None:
    """A prompt the run already has keeps what it had: its source, its other meta fields and the image sets
    earlier imports brought (the table holds one row per prompt, so the new row must carry them all).
    This import's rows are numbered after every earlier one, so an export lists the files in import order;
    a set imported again (same prompt, same images) replaces its earlier entry, as its ranking does."""
    if not run.has("prompts"):
        return
    table = run.read("prompts")
    earlier = _source_sets(table)
    offset = 1 + max((st.get("row", -1) for st in earlier.values()), default=-1)
    for p in prompts.values():
        for st in p["meta"]["sets"]:
            st["row"] += offset
    old = table.filter(pl.col("prompt_id").is_in(list(prompts)))
    for pid, source, meta in old.select("prompt_id", "source", "meta").iter_rows():
        try:
            before = json.loads(meta) if meta else {}
        except json.JSONDecodeError:
            before = {"text": meta}  # meta is JSON text by contract; a hand-made plain string is kept as is
        before = before if isinstance(before, dict) else {"value": before}
        new = prompts[pid]
        mine = {tuple(st["image_ids"]) for st in new["meta"]["sets"]}
        sets = [st for st in before.get("sets") or [] if isinstance(st, dict)
                and tuple(st.get("image_ids") or ()) not in mine]
        new["meta"] = {**new["meta"], **before, "sets": sets + new["meta"]["sets"]}
        new["source"] = source or new["source"]


def _source_sets(prompts: pl.DataFrame) -> dict[tuple[str, tuple[str, ...]], dict]:
    """(prompt id, image ids) -> the imported source row of that image set (see the module docstring)."""
    out: dict[tuple[str, tuple[str, ...]], dict] = {}
    for pid, meta in prompts.select("prompt_id", "meta").iter_rows():
        try:
            sets = json.loads(meta or "{}").get("sets") or []
        except (json.JSONDecodeError, AttributeError):
            continue
        for st in sets:
            if isinstance(st, dict) and "image_ids" in st:
                out[(pid, tuple(st["image_ids"]))] = st
    return out


def _imagereward_rows(run: Run, rk: pl.DataFrame, uris: dict[str, str]) -> list[dict]:
    """Imported sets come back as their source rows (same order, ids, paths, fields); others get
    the prompt id as ``id`` and their image uris, after them."""
    src = _source_sets(run.read("prompts"))
    known, other = [], []
    for r in rk.iter_rows(named=True):
        ranking = ranks_from_scores(r["scores"])
        st = src.get((r["prompt_id"], tuple(r["image_ids"])))
        if st is None:
            other.append({"id": r["prompt_id"], "prompt": r["prompt"],
                          "generations": [uris[i] for i in r["image_ids"]], "ranking": ranking})
            continue
        vals = {**st["fields"], "prompt": r["prompt"], "generations": st["generations"], "ranking": ranking,
                "image_path": st["generations"], "rank": ranking}
        keys = [k for k in st["keys"] if k not in ("image_path", "rank")]  # hpdv2 names -> imagereward names
        keys += [k for k in ("generations", "ranking") if k not in keys]
        known.append((st["row"], {k: vals[k] for k in keys}))
    return [row for _, row in sorted(known, key=lambda x: x[0])] + other


PICKAPIC_COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0")


def import_pickapic(path: Path, out: Path | Run) -> ImportCounts:
    path = Path(path)
    try:
        df = pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError) as e:
        raise FormatError(f"{path}: not a readable parquet file ({str(e).strip().splitlines()[0][:120]}); "
                          "--format pickapic reads Pick-a-Pic parquet (an ImageReward or HPDv2 JSON file is "
                          "--format imagereward or --format hpdv2)") from None
    missing = [c for c in PICKAPIC_COLUMNS if c not in df.columns]
    if missing:
        raise FormatError(f"{path}: Pick-a-Pic parquet lacks {', '.join(missing)} "
                          f"(expected {', '.join(PICKAPIC_COLUMNS)}; label_0: 1, 0 or 0.5 for a tie)")
    run = as_run(out, create=True)
    prompts, images, rankings, pairs = {}, {}, [], []
    for n, r in enumerate(df.iter_rows(named=True), 1):
        label = float(r["label_0"])
        if label not in (0.0, 0.5, 1.0):
            raise FormatError(f"{path}: row {n}: label_0 = {label}, expected 0, 0.5 or 1")
        pid = ids.prompt_id(r["caption"])
        prompts[pid] = {"prompt_id": pid, "prompt": r["caption"], "source": "pickapic", "meta": None}
        pair_ids = []
        for col in ("jpg_0", "jpg_1"):
            try:
                img = check_bytes(r[col] or b"", f"{path} row {n} {col}")
            except BadImage as e:
                raise FormatError(str(e)) from None
            iid, uri = store_image(run, img)
            pair_ids.append(iid)
            images[(iid, pid)] = {"image_id": iid, "prompt_id": pid, "uri": uri, "generator": None,
                                  "seed": None, "width": img.width, "height": img.height}
        scores = [label, 1.0 - label]
        rankings.append({"prompt_id": pid, "aspect": schema.OVERALL, "annotator": schema.HUMAN,
                         "image_ids": pair_ids, "scores": scores, "confidence": 1.0})
        pairs += ranking_pairs(pid, pair_ids, scores, schema.OVERALL, schema.HUMAN)
    return _save(run, "import pickapic", list(prompts.values()), list(images.values()), rankings, pairs,
                 {"file": str(path), "format": "pickapic"})


def import_file(path: Path, out: Path | Run, fmt: str, images_root: Path | None = None) -> ImportCounts:
    if fmt not in FORMATS_IN:
        raise FormatError(f"unknown format {fmt!r}; import formats: {', '.join(FORMATS_IN)}")
    if not Path(path).is_file():
        raise MissingError(f"{path}: no such file to import")
    if fmt in ("imagereward", "hpdv2"):
        return import_ranking_json(path, out, fmt=fmt, images_root=images_root)
    if fmt == "pickapic":
        return import_pickapic(path, out)
    raise AssertionError(fmt)


# ------------------------------------------------------------------ export
def _selected(run: Run, aspect: str, annotator: str | None) -> pl.DataFrame:
    rk = run.read("rankings").filter(pl.col("aspect") == aspect)
    if annotator:
        rk = rk.filter(pl.col("annotator") == annotator)
    if rk.height == 0:
        have = run.read("rankings").select("aspect", "annotator").unique().rows()
        raise FormatError(f"{run.path}: no rankings for aspect={aspect!r} annotator={annotator!r}; "
                          f"available (aspect, annotator): {sorted(have)}; run `vprefer pairs` first for AI judgements")
    prompts = run.read("prompts").select("prompt_id", "prompt")
    return rk.join(prompts, on="prompt_id", how="left")


def _image_bytes(paths: dict[str, str], iid: str) -> bytes:
    p = paths[iid]
    if is_url(p):
        raise FormatError(f"image {iid} is a URL ({p}); export needs local image files")
    if not Path(p).exists():
        raise FormatError(f"image {iid}: file {p} is missing (imported without images?)")
    return Path(p).read_bytes()


_SUFFIX = {"imagereward": ".json", "pickapic": ".parquet"}  # the others write a folder


def check_export_target(out: Path, fmt: str, overwrite: bool) -> None:
    """Before anything is read: the format is known, a file's name says what it holds (JSON written into
    ``x.parquet`` fooled every reader after), and nothing existing is replaced without ``overwrite``."""
    if fmt not in FORMATS_OUT:
        raise FormatError(f"unknown format {fmt!r}; export formats: {', '.join(FORMATS_OUT)}")
    want = _SUFFIX.get(fmt)
    if want and out.suffix.lower() != want:
        raise FormatError(f"--out {out}: --format {fmt} writes a {want} file; name it {out.with_suffix(want).name}")
    if not want and out.suffix.lower() in (".json", ".parquet", ".jsonl", ".csv"):
        raise FormatError(f"--out {out}: --format {fmt} writes a folder (a dataset), not a {out.suffix} file")
    if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not overwrite:
        raise FormatError(f"--out {out} exists; pass --overwrite to replace it, or choose another path")


def export_run(run_dir: Path | Run, out: Path, fmt: str, *, aspect: str = schema.OVERALL,
               annotator: str | None = None, overwrite: bool = False) -> int:
    check_export_target(Path(out), fmt, overwrite)
    run = as_run(run_dir)
    if fmt == "hf-captions":  # image + caption rows (vprefer caption), not rankings
        from vprefer.caption import export_captions_hf

        return export_captions_hf(run, Path(out), annotator=annotator)
    rk = _selected(run, aspect, annotator)
    imgs = run.image_paths().unique("image_id", keep="last", maintain_order=True)
    uris, paths = dict(imgs.select("image_id", "uri").iter_rows()), dict(imgs.select("image_id", "path").iter_rows())
    out = Path(out)
    if fmt == "imagereward":
        data = _imagereward_rows(run, rk, uris)
        atomic_write_bytes(out, json.dumps(data, indent=4, ensure_ascii=False).encode())
        return len(data)
    if fmt == "pickapic":
        rows = list(_pickapic_rows(rk, paths))
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        pl.DataFrame(rows, schema={"caption": pl.String, "jpg_0": pl.Binary, "jpg_1": pl.Binary,
                                   "label_0": pl.Float64, "label_1": pl.Float64,
                                   "image_0_uid": pl.String, "image_1_uid": pl.String}).write_parquet(tmp)
        tmp.replace(out)
        return len(rows)
    if fmt == "hf":
        return _export_hf(run, rk, uris, paths, out, aspect)
    raise FormatError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS_OUT)}")


def _pickapic_rows(rk: pl.DataFrame, paths: dict[str, str]) -> Iterable[dict]:
    for r in rk.iter_rows(named=True):
        iids, sc = r["image_ids"], r["scores"]
        for i in range(len(iids)):
            for j in range(i + 1, len(iids)):
                label = 1.0 if sc[i] > sc[j] else 0.0 if sc[i] < sc[j] else 0.5
                yield {"caption": r["prompt"], "jpg_0": _image_bytes(paths, iids[i]),
                       "jpg_1": _image_bytes(paths, iids[j]), "label_0": label, "label_1": 1.0 - label,
                       "image_0_uid": iids[i], "image_1_uid": iids[j]}


def _export_hf(run: Run, rk: pl.DataFrame, uris: dict[str, str], paths: dict[str, str], out: Path,
               aspect: str) -> int:
    """A folder that ``datasets.load_dataset(str(out))`` reads: parquet shard + dataset card."""
    rows = [{"prompt_id": r["prompt_id"], "prompt": r["prompt"], "aspect": aspect, "annotator": r["annotator"],
             "image_ids": r["image_ids"],
             "images": [{"bytes": _image_bytes(paths, i), "path": uris[i]} for i in r["image_ids"]],
             "ranking": ranks_from_scores(r["scores"]), "scores": r["scores"]} for r in rk.iter_rows(named=True)]
    (out / "data").mkdir(parents=True, exist_ok=True)
    pl.DataFrame(rows).write_parquet(out / "data" / "train-00000-of-00001.parquet")
    card = ("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/*.parquet\n---\n"
            f"# vprefer export\n\nExported from `{run.path.name}` by vprefer. One row per (prompt, aspect={aspect}):\n"
            "`images` (bytes + path), `ranking` (1 = best, ties allowed), `scores` (higher is better).\n")
    atomic_write_bytes(out / "README.md", card.encode())
    return len(rows)

"""Prompt sources: read each public format into one frame (prompt, category, nsfw, meta), with clear errors.

Formats (detected from the extension and columns; ``fmt`` overrides):

| fmt | file | columns used |
|---|---|---|
| diffusiondb | metadata parquet | prompt, seed, cfg, step, sampler, prompt_nsfw, image_nsfw |
| parti | PartiPrompts TSV | Prompt, Category, Challenge, Note |
| drawbench | CSV | Prompts, Category |
| geneval | JSONL | prompt, tag, include/exclude specs |
| hpdv2 | benchmark prompt JSON | a list of strings (one style per file, e.g. anime.json) |
| text | .txt | one prompt per line |
| jsonl / csv | any | prompt (+ optional category) |
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from vprefer.errors import VpreferError

FORMATS = ("diffusiondb", "parti", "drawbench", "geneval", "hpdv2", "text", "jsonl", "csv")
EXPECTED = {
    "diffusiondb": ["prompt"], "parti": ["Prompt", "Category"], "drawbench": ["Prompts"], "geneval": ["prompt"],
    "jsonl": ["prompt"], "csv": ["prompt"],
}
NSFW_THRESHOLD = 0.5  # DiffusionDB's prompt_nsfw / image_nsfw are probabilities in [0, 1]


class SourceError(VpreferError, ValueError):
    """A prompt file that is missing or not in the format asked for; the message names the expected columns."""


def detect(path: Path) -> str:
    suf = path.suffix.lower()
    if suf == ".tsv":
        return "parti"
    if suf == ".txt":
        return "text"
    if suf == ".parquet":
        return "diffusiondb"
    if suf in (".jsonl", ".ndjson"):
        first = next((json.loads(x) for x in path.read_text().splitlines() if x.strip()), {})
        return "geneval" if "include" in first or "tag" in first else "jsonl"
    if suf == ".json":
        return "hpdv2"
    if suf == ".csv":
        head = path.read_text().splitlines()[0] if path.stat().st_size else ""
        return "drawbench" if "Prompts" in head.split(",") else "csv"
    raise SourceError(f"{path}: cannot tell the format from {suf!r}; pass --format ({', '.join(FORMATS)})")


def _need(df: pl.DataFrame, fmt: str, path: Path) -> None:
    missing = [c for c in EXPECTED.get(fmt, []) if c not in df.columns]
    if missing:
        raise SourceError(f"{path}: not a {fmt} file: missing column(s) {missing}; expected {EXPECTED[fmt]} "
                          f"(found {df.columns[:12]})")


def read_source(path: str | Path, fmt: str | None = None) -> pl.DataFrame:
    """Columns: prompt, category (nullable), nsfw (nullable float), meta (JSON text)."""
    path = Path(path)
    if not path.exists():
        raise SourceError(f"{path} does not exist")
    fmt = fmt or detect(path)
    if fmt not in FORMATS:
        raise SourceError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    try:
        if fmt == "parti":
            df = pl.read_csv(path, separator="\t", quote_char=None, infer_schema=False)
            _need(df, fmt, path)
            df = df.select(pl.col("Prompt").alias("prompt"), pl.col("Category").alias("category"),
                           meta=pl.struct([c for c in ("Challenge", "Note") if c in df.columns]).struct.json_encode())
        elif fmt == "drawbench":
            df = pl.read_csv(path, infer_schema=False)
            _need(df, fmt, path)
            df = df.select(pl.col("Prompts").alias("prompt"),
                           (pl.col("Category") if "Category" in df.columns else pl.lit(None)).alias("category"))
        elif fmt == "diffusiondb":
            df = pl.read_parquet(path)
            _need(df, fmt, path)
            keep = [c for c in ("seed", "cfg", "step", "sampler", "width", "height") if c in df.columns]
            nsfw = [c for c in ("prompt_nsfw", "image_nsfw") if c in df.columns]
            df = df.select("prompt", pl.lit(None, pl.String).alias("category"),
                           (pl.max_horizontal(nsfw) if nsfw else pl.lit(None, pl.Float64)).cast(pl.Float64).alias("nsfw"),
                           meta=pl.struct(keep).struct.json_encode() if keep else pl.lit(None, pl.String))
        elif fmt == "geneval":
            rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
            df = pl.DataFrame({"prompt": [r.get("prompt") for r in rows], "category": [r.get("tag") for r in rows],
                               "meta": [json.dumps({k: v for k, v in r.items() if k != "prompt"}) for r in rows]})
            _need(df, fmt, path)
        elif fmt == "hpdv2":
            data = json.loads(path.read_text())
            if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
                raise SourceError(f"{path}: an HPDv2 benchmark prompt file is a JSON list of strings")
            df = pl.DataFrame({"prompt": data, "category": [path.stem] * len(data)})
        elif fmt == "text":
            lines = [x.strip() for x in path.read_text().splitlines() if x.strip()]
            df = pl.DataFrame({"prompt": lines}, schema={"prompt": pl.String})
        elif fmt == "jsonl":
            df = pl.read_ndjson(path)
            _need(df, fmt, path)
        else:
            df = pl.read_csv(path, infer_schema=False)
            _need(df, fmt, path)
    except (pl.exceptions.ComputeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SourceError(f"{path}: could not read as {fmt} ({str(e).splitlines()[0]})") from None
    for col, dt in (("category", pl.String), ("nsfw", pl.Float64), ("meta", pl.String)):
        if col not in df.columns:
            df = df.with_columns(pl.lit(None, dt).alias(col))
    return (df.select(pl.col("prompt").cast(pl.String), pl.col("category").cast(pl.String),
                      pl.col("nsfw").cast(pl.Float64), pl.col("meta").cast(pl.String))
            .filter(pl.col("prompt").is_not_null() & (pl.col("prompt").str.strip_chars() != ""))
            .with_columns(pl.lit(fmt).alias("format")))


def read_prompts(src: str | Path) -> list[str]:
    """Prompt texts from a run directory (its ``prompts`` table) or from any file :func:`read_source` reads.

    Training and sampling commands take either, so they all read prompts the same way.
    """
    from vprefer.store import Run

    src = Path(src)
    if src.is_dir():
        return Run(src).read("prompts")["prompt"].to_list()
    return read_source(src)["prompt"].to_list()

"""Sampling prompts into a run: exact and near-duplicate removal, NSFW filter, stratified draws.

Near-duplicates are prompts whose *bag of words* is the same after lower-casing
and dropping punctuation ("A red cube." / "a cube, red"), the commonest kind
in scraped prompt logs such as DiffusionDB; exact duplicates compare the
stripped text. The first occurrence is kept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from vprefer import ids, schema
from vprefer.errors import InputError
from vprefer.prompts.sources import NSFW_THRESHOLD, read_source
from vprefer.store import Result, Run, as_run


def dedupe(df: pl.DataFrame) -> tuple[pl.DataFrame, int, int]:
    n0 = df.height
    df = df.unique(subset=pl.col("prompt").str.strip_chars(), keep="first", maintain_order=True)
    n1 = df.height
    key = (pl.col("prompt").str.to_lowercase().str.replace_all(r"[^\w\s]", " ").str.split(" ")
           .list.eval(pl.element().filter(pl.element() != "")).list.unique().list.sort().list.join(" "))
    df = df.with_columns(key.alias("_bag")).unique(subset="_bag", keep="first", maintain_order=True).drop("_bag")
    return df, n0 - n1, n1 - df.height


def stratified(df: pl.DataFrame, column: str, n: int, seed: int) -> pl.DataFrame:
    """Proportional allocation (largest remainders), at least one per stratum while n allows."""
    if column not in df.columns:
        raise InputError(f"--stratify {column!r}: no such column; columns: {df.columns}")
    sizes = df.group_by(column).len().sort(column)
    total = sizes["len"].sum()
    quotas = {k: n * v / total for k, v in sizes.iter_rows()}
    alloc = {k: int(q) for k, q in quotas.items()}
    for k in sorted(quotas, key=lambda k: quotas[k] - alloc[k], reverse=True)[: n - sum(alloc.values())]:
        alloc[k] += 1
    parts = [g.sample(min(alloc[k[0]], g.height), seed=seed) for k, g in df.group_by([column], maintain_order=True)]
    return pl.concat(parts)


@dataclass
class SampleResult(Result):
    """What a sample read and wrote; the optional counts are None when their step was not asked for."""

    read: int
    written: int = 0
    nsfw_dropped: int | None = None
    exact_duplicates: int | None = None
    near_duplicates: int | None = None
    per_stratum: dict[str, int] | None = None

    @property
    def dropped(self) -> dict[str, int]:
        """The drop counts that apply, in the order the steps ran."""
        steps = {"nsfw_dropped": self.nsfw_dropped, "exact_duplicates": self.exact_duplicates,
                 "near_duplicates": self.near_duplicates}
        return {k: v for k, v in steps.items() if v is not None}


def sample_prompts(source: str | Path, out: str | Path | Run, *, n: int | None = None, seed: int = 0,
                   fmt: str | None = None, dedupe_prompts: bool = False, drop_nsfw: bool = False,
                   stratify: str | None = None) -> SampleResult:
    df = read_source(source, fmt)
    report = SampleResult(read=df.height)
    if stratify and stratify.lower() in ("category", "tag"):  # Parti's Category, GenEval's tag, DrawBench's Category
        stratify = "category"
    if drop_nsfw:
        before = df.height
        df = df.filter(pl.col("nsfw").is_null() | (pl.col("nsfw") < NSFW_THRESHOLD))
        report.nsfw_dropped = before - df.height
    if dedupe_prompts:
        df, exact, near = dedupe(df)
        report.exact_duplicates, report.near_duplicates = exact, near
    if n is not None and n < df.height:
        df = stratified(df, stratify, n, seed) if stratify else df.sample(n, seed=seed)
    elif stratify and stratify not in df.columns:
        raise InputError(f"--stratify {stratify!r}: no such column; columns: {df.columns}")
    src = Path(source).name
    rows = []
    for r in df.iter_rows(named=True):
        meta = json.loads(r["meta"]) if r["meta"] else {}
        if r["category"] is not None:
            meta["category"] = r["category"]
        rows.append({"prompt_id": ids.prompt_id(r["prompt"]), "prompt": r["prompt"], "source": f"{r['format']}:{src}",
                     "meta": json.dumps(meta) if meta else None})
    run = as_run(out, create=True)
    with run.command("prompts sample", {"source": str(source), "n": n, "seed": seed, "format": fmt,
                                        "dedupe": dedupe_prompts, "drop_nsfw": drop_nsfw, "stratify": stratify}):
        run.append("prompts", schema.frame("prompts", rows))
        run.compact("prompts")
    report.written = len(rows)
    if stratify:
        report.per_stratum = dict(df.group_by(stratify).len().sort("len", descending=True).iter_rows())
    return report

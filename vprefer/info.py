"""What a run holds: rows per table, who annotated it at what cost, and what was recorded.

The figures ``vprefer info`` prints, as a value the API returns, so a notebook
or a script reads the same numbers the command shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from vprefer.store import Result, Run, as_run


@dataclass
class AnnotationTotals(Result):
    """One annotator's requests with one status, and what they used and cost."""

    annotator: str
    status: str
    requests: int
    input_tokens: int
    output_tokens: int
    cost_usd: float


@dataclass
class RunSummary(Result):
    path: Path
    counts: dict[str, int]  # rows per table
    annotations: list[AnnotationTotals] = field(default_factory=list)
    aspects: list[str] = field(default_factory=list)  # aspects the annotations scored
    groups: dict[str, list[tuple[str, str, int]]] = field(default_factory=dict)  # rankings/pairs: (annotator, aspect, n)
    created: str | None = None
    commands: int = 0  # commands recorded in the manifest
    recorded_cost_usd: float = 0.0  # annotation cost the manifest's commands recorded


def summarize(run: Run | str | Path) -> RunSummary:
    run = as_run(run)
    counts = run.counts()
    s = RunSummary(run.path, counts)
    if counts.get("annotations"):
        ann = run.scan("annotations")
        per = (ann.group_by("annotator", "status").agg(
            pl.col("request_id").n_unique().alias("requests"), pl.col("cost_usd").sum().alias("cost"),
            pl.col("input_tokens").sum().alias("in_tok"), pl.col("output_tokens").sum().alias("out_tok"),
        ).sort("annotator", "status").collect())
        s.annotations = [AnnotationTotals(r["annotator"], r["status"], r["requests"], r["in_tok"], r["out_tok"],
                                          r["cost"]) for r in per.iter_rows(named=True)]
        s.aspects = ann.select(pl.col("aspect").unique().sort()).collect().to_series().to_list()
    for name in ("rankings", "pairs"):
        if counts.get(name):
            s.groups[name] = run.scan(name).group_by("annotator", "aspect").len().sort("annotator", "aspect").collect().rows()
    m = run.manifest()
    s.created, s.commands = m.get("created"), len(m.get("commands", []))
    s.recorded_cost_usd = sum(c.get("cost_usd", 0) or 0 for c in m.get("commands", []))
    return s


def find_runs(folder: str | Path, *, depth: int = 2) -> list[Path]:
    """Run folders inside ``folder`` (itself included), at most ``depth`` levels down, sorted.

    ``vprefer info demo-run`` is the obvious first try after the demo, whose runs are
    ``demo-run/run`` and ``demo-run/heldout``: a folder of runs is answered with its runs.
    """
    folder = Path(folder)
    if (folder / "manifest.json").is_file():
        return [folder]
    if depth == 0 or not folder.is_dir():
        return []
    return [r for sub in sorted(p for p in folder.iterdir() if p.is_dir()) for r in find_runs(sub, depth=depth - 1)]

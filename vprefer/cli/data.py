"""Data commands: ingest, import, export, info."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from vprefer import exchange, schema
from vprefer.cli._app import app, console, fail, out
from vprefer.info import find_runs, summarize
from vprefer.ingest import IngestError, ingest as ingest_api


@app.command()
def ingest(
    manifest: Path = typer.Argument(..., help="JSONL, CSV or parquet; one row per prompt: prompt, images "
                                               "(paths relative to the manifest, or URLs), optional generator, "
                                               "seeds, prompt_id, meta."),
    out_dir: Path = typer.Option(..., "--out", help="Run directory to create or add to."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Ingest the good images and report the bad ones "
                                                            "(default: write nothing if any image is bad)."),
    allow_outside: bool = typer.Option(False, "--allow-outside", help="Permit paths that leave the manifest's "
                                                                      "folder (.., absolute paths, symlinks)."),
) -> None:
    """Bring your own prompts and images into a run (each image decoded once to verify it)."""
    try:
        rep = ingest_api(manifest, out_dir, skip_bad=skip_bad, allow_outside=allow_outside)
    except IngestError as e:
        _bad_table(e.report.bad)
        fail(str(e))
    if rep.bad:
        _bad_table(rep.bad)
    new = ("0 new: all were in the run already" if not (rep.new_prompts or rep.new_images)
           else f"{rep.new_prompts} new prompts, {rep.new_images} new images")
    out.print(f"ingested {rep.prompts} prompts, {rep.images} images into {out_dir} ({new})"
              + (f" (skipped {len(rep.bad)} bad images, {len(rep.dropped_prompts)} prompts left empty)" if rep.bad else ""))


def _bad_table(bad: list[tuple[int, str, str]]) -> None:
    t = Table("row", "file", "problem", title="bad images", title_style="bold red")
    for row, f, why in bad:
        t.add_row(str(row), f, why.split(": ", 1)[-1])
    console.print(t)


@app.command("import")
def import_(
    file: Path = typer.Argument(..., help="ImageReward/HPDv2 test json or Pick-a-Pic parquet."),
    fmt: str = typer.Option(..., "--format", help="imagereward | hpdv2 | pickapic"),
    out_dir: Path = typer.Option(..., "--out", help="Run directory to create or add to."),
    images_root: Optional[Path] = typer.Option(None, "--images-root", help="Folder the json's image paths are "
                                               "relative to. Without it, rankings are imported without images."),
) -> None:
    """Import human preference data; it lands in rankings/pairs with annotator 'human', aspect 'overall'."""
    c = exchange.import_file(file, out_dir, fmt, images_root)
    out.print(f"imported {c.prompts} prompts, {c.images} images, {c.rankings} rankings, "
              f"{c.pairs} pairs ({c.ties} ties) into {out_dir}")


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="Run directory."),
    fmt: str = typer.Option(..., "--format", help="imagereward | pickapic | hf | hf-captions (image + caption "
                                                  "rows written by `vprefer caption`)"),
    out_path: Path = typer.Option(..., "--out", help="Output file (imagereward: .json, pickapic: .parquet) "
                                                     "or folder (hf, hf-captions)."),
    aspect: str = typer.Option(schema.OVERALL, help="Which aspect's rankings to export."),
    annotator: Optional[str] = typer.Option(None, help="Only this annotator's rankings (e.g. human)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists (default: refuse)."),
) -> None:
    """Export rankings to an exchange format (ties preserved)."""
    n = exchange.export_run(run_dir, out_path, fmt, aspect=aspect, annotator=annotator, overwrite=overwrite)
    out.print(f"exported {n} rows to {out_path}")


@app.command()
def info(run_dir: Path = typer.Argument(..., help="Run directory, or a folder of runs (e.g. the demo's).")) -> None:
    """Summary of a run: rows per table, annotators, aspects, annotation status and cost so far.

    Given a folder that holds runs (such as `demo-run`, with `run/` and `heldout/`), summarises each.
    """
    runs = find_runs(run_dir)
    if len(runs) > 1 or (runs and runs[0] != run_dir):
        out.print(f"{run_dir} is not a run; it holds {len(runs)}: " + ", ".join(str(r) for r in runs))
        for r in runs:
            _info_one(r)
        return
    _info_one(run_dir)


def _info_one(run_dir: Path) -> None:
    s = summarize(run_dir)
    t = Table("table", "rows", title=f"run {run_dir}")
    for name, n in s.counts.items():
        t.add_row(name, f"{n:,}")
    out.print(t)
    if s.counts.get("annotations"):
        t = Table("annotator", "status", "requests", "input tokens", "output tokens", "cost (USD)",
                  title="annotations")
        for r in s.annotations:
            t.add_row(r.annotator, r.status, f"{r.requests:,}", f"{r.input_tokens:,}", f"{r.output_tokens:,}",
                      f"{r.cost_usd:.4f}")
        out.print(t)
        out.print("aspects: " + ", ".join(a for a in s.aspects if a))
    for name, g in s.groups.items():
        out.print(f"{name}: " + ", ".join(f"{a}/{asp}={n:,}" for a, asp, n in g))
    out.print(f"created {s.created}, {s.commands} commands recorded; "
              f"total annotation cost so far: ${s.recorded_cost_usd:.4f}")


@app.command()
def demo(
    out_dir: Path = typer.Option(Path("demo-run"), "--out", help="Folder for the demo run and report.html."),
    fast: bool = typer.Option(False, "--fast", help="A smaller, quicker version (used by the tests)."),
) -> None:
    """The whole loop offline on CPU on a stand-in world: world generator -> judge -> pairs -> VP-Score -> ReFL/DPO/GRPO,
    each measured on held-out prompts by the world's truth -> report.html."""
    from vprefer.demo import run_demo

    res = run_demo(out_dir, fast=fast, console=console)
    out.print(res.summary, soft_wrap=True, highlight=False)

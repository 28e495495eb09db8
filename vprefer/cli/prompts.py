"""Upstream commands: prompts sample | upsample, generate."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vprefer.cli import _paid as paid
from vprefer.cli._app import app, out

prompts_app = typer.Typer(help="Prompt sourcing and LLM upsampling.", no_args_is_help=True)
app.add_typer(prompts_app, name="prompts")


@prompts_app.command("sample")
def sample(
    source: Path = typer.Argument(..., help="DiffusionDB metadata parquet, PartiPrompts TSV, DrawBench CSV, GenEval "
                                            "jsonl, HPDv2 benchmark json, or a .txt/.jsonl/.csv with a 'prompt' column."),
    n: Optional[int] = typer.Option(None, "--n", help="How many prompts (default: all)."),
    out_dir: Path = typer.Option(..., "--out", help="Run directory to create or add to."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the sample (the same seed gives the same prompts)."),
    fmt: Optional[str] = typer.Option(None, "--format", help="Override format detection: diffusiondb, parti, "
                                      "drawbench, geneval, hpdv2, text, jsonl, csv."),
    dedupe: bool = typer.Option(False, "--dedupe", help="Drop exact and near duplicates (same bag of words)."),
    drop_nsfw: bool = typer.Option(False, "--drop-nsfw", help="Drop prompts flagged NSFW (DiffusionDB scores >= 0.5)."),
    stratify: Optional[str] = typer.Option(None, "--stratify", help="Sample proportionally within this column "
                                           "(e.g. Category for PartiPrompts)."),
) -> None:
    """Sample prompts from a public source or your own file into a run."""
    from vprefer.prompts import sample_prompts

    r = sample_prompts(source, out_dir, n=n, seed=seed, fmt=fmt, dedupe_prompts=dedupe, drop_nsfw=drop_nsfw,
                       stratify=stratify)
    extra = ", ".join(f"{k} {v}" for k, v in r.dropped.items())
    out.print(f"read {r.read:,} prompts, wrote {r.written:,} to {out_dir}" + (f" ({extra})" if extra else ""))
    if r.per_stratum:
        out.print("per stratum: " + ", ".join(f"{k}={v}" for k, v in r.per_stratum.items()))


@prompts_app.command("upsample")
def upsample_cmd(
    run_dir: Path = typer.Argument(..., help="Run directory with prompts."),
    annotator: str = typer.Option(..., "--annotator", help="Preset (annotators/NAME.yaml): any chat model; or local:DIR, a rewriter trained by `vprefer rl prompts`."),
    style: str = typer.Option("descriptive", "--style", help="descriptive (DALL-E 3 captions) | tags (TIPO-style)"),
    max_cost: Optional[float] = paid.max_cost(),
    limit: Optional[int] = paid.limit("prompts"),
    mode: Optional[str] = paid.mode(),
    results: Optional[list[Path]] = paid.results(),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="Override the preset's server URL."),
    model: Optional[str] = typer.Option(None, "--model", help="Override the preset's model."),
    dry_run: bool = paid.dry_run(),
) -> None:
    """Rewrite each short prompt into a detailed one with an LLM; originals are kept and linked. Resumable."""
    from vprefer.annotate.preset import AnnotatorPreset
    from vprefer.prompts import upsample

    if annotator.startswith("local:"):  # a rewriter trained by `vprefer rl prompts`, run here without a server
        from vprefer.prompts.local import LocalRewriter

        p = LocalRewriter(annotator.removeprefix("local:"))
    else:
        p = AnnotatorPreset.load(annotator, base_url=base_url, model=model)
    r = upsample(run_dir, p, style=style, max_cost=max_cost, limit=limit, dry_run=dry_run, mode=mode,
                 results=results or None)
    if dry_run:
        out.print(f"{r.planned} prompts: {r.already_done} already upsampled, {r.todo} to send, estimated "
                  f"${r.est_cost_usd:.4f}; dry run: nothing was sent")
        return
    out.print(f"{r.planned} prompts: {r.already_done} already upsampled, {r.ok} new, {r.error} failed "
              f"(rerun to retry), " + (f"{r.pending} still to send (a rerun sends them), " if r.pending else "")
              + f"${r.cost_usd:.4f}" + (" — stopped before --max-cost" if r.stopped_for_budget else ""))
    paid.print_chunks(r, getattr(p, "model", ""), f"vprefer prompts upsample {run_dir} --annotator {annotator} "
                      f"--style {style}")


@app.command()
def generate(
    run_dir: Path = typer.Argument(..., help="Run directory with prompts."),
    recipe: str = typer.Option(..., "--recipe", help="rl/generators-*.yaml"),
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N prompts."),
    max_cost: Optional[float] = typer.Option(None, "--max-cost", help="Cap (USD) on this run's total spend on API "
                                             "generators; stops cleanly before passing it (rerun to resume)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Count the images to make and price the API ones; "
                                 "load and send nothing."),
) -> None:
    """Generate image sets with diffusers pipelines and OpenAI-protocol image APIs. Resumable; `accelerate launch -m vprefer generate` splits prompts across GPUs."""
    from vprefer.generate import GenerateRecipe, generate as gen

    from vprefer.testing.stand_ins import ensure_generators

    rec = GenerateRecipe.load(recipe)
    if dry_run:
        c = gen(run_dir, rec, limit=limit, dry_run=True)
        out.print(f"{c.todo:,} images to make ({c.skipped:,} already present), API images estimated "
                  f"${c.est_cost_usd:.4f}; dry run: nothing was generated or sent")
        return
    ensure_generators(rec)
    c = gen(run_dir, rec, limit=limit, max_cost=max_cost)
    extra = f", ${c.cost_usd:.4f} paid to API generators" if c.cost_usd else ""
    if c.errors:
        extra += f", {c.errors} API requests failed (rerun to retry)"
    if c.resent:
        extra += f", {c.resent} re-sent (in flight when the last run stopped; the images API keeps no copy)"
    if c.stopped_for_budget:
        extra += " — stopped before --max-cost"
    out.print(f"generated {c.generated:,} images, skipped {c.skipped:,} already present{extra}")

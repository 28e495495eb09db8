"""``vprefer caption``: recaption a run's images with a multimodal LLM."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from vprefer.cli import _paid as paid
from vprefer.cli._app import app, out


@app.command()
def caption(
    run_dir: Path = typer.Argument(..., help="Run directory with images."),
    annotator: str = typer.Option(..., "--annotator", help="Preset (annotators/NAME.yaml): any vision chat model."),
    style: str = typer.Option("detailed", "--style", help="short (one sentence: ShareGPT-4o-Image, DALL-E 3 short) | "
                              "detailed (ShareGPT4V, DALL-E 3 descriptive) | a path to your own caption YAML."),
    max_cost: Optional[float] = paid.max_cost(),
    limit: Optional[int] = paid.limit("images"),
    mode: Optional[str] = paid.mode(),
    results: Optional[list[Path]] = paid.results(),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="Override the preset's server URL."),
    model: Optional[str] = typer.Option(None, "--model", help="Override the preset's model."),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", help="Parallel requests (online mode)."),
    to_prompts: bool = typer.Option(False, "--to-prompts", help="Then add every caption of this style as a prompt "
                                    "(source caption:<style>), e.g. to generate new image sets for it."),
    dry_run: bool = paid.dry_run(),
) -> None:
    """Write a caption for every image (captions table) through the annotation client. Resumable."""
    from vprefer.annotate.preset import AnnotatorPreset
    from vprefer.caption import CaptionStyle, caption as caption_api, captions_to_prompts

    p = AnnotatorPreset.load(annotator, base_url=base_url, model=model, concurrency=concurrency)
    st = CaptionStyle.load(style)
    r = caption_api(run_dir, p, style=st, max_cost=max_cost, limit=limit, dry_run=dry_run, mode=mode,
                    results=results or None, on_update=_progress() if sys.stderr.isatty() else None)
    if dry_run:
        out.print(f"{r.planned} images: {r.already_done} already captioned ({st.name}), {r.todo} to send, "
                  f"estimated ${r.est_cost_usd:.4f} ({r.est_basis}); dry run: nothing was sent")
        return
    out.print(f"{r.planned} images: {r.already_done} already captioned ({st.name}), {r.ok} new, {r.error} failed "
              f"(rerun to retry), " + (f"{r.invalid} refused answers marked invalid (not stored), " if r.invalid else "")
              + (f"{r.pending} still to send (a rerun sends them), " if r.pending else "")
              + f"${r.cost_usd:.4f} now, ${r.spent_total_usd:.4f} in all"
              + (" — stopped before --max-cost" if r.stopped_for_budget else ""))
    paid.print_chunks(r, p.model, f"vprefer caption {run_dir} --annotator {annotator} --style {style}")
    if to_prompts:
        n = captions_to_prompts(run_dir, style=st.name, annotator=p.annotator_id)
        out.print(f"added {n} prompts (source caption:{st.name})")


def _progress():
    from vprefer.cli._app import console

    def show(r) -> None:
        console.print(f"\r{r.done}/{r.todo} captions, {r.in_flight} in flight, ${r.cost_usd:.4f}", end="")

    return show

"""Annotation commands: annotate, batches, pairs, judge-server."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from vprefer.annotate import AnnotatorPreset, annotate as annotate_api, make_pairs
from vprefer.annotate.status import batch_status
from vprefer.cli import _paid as paid
from vprefer.cli._app import app, out
from vprefer.store import Run


def _preset(name: str, **overrides) -> AnnotatorPreset:
    return AnnotatorPreset.load(name, **overrides)


def bias_table(bias) -> Table:
    effects = ",".join(sorted(set(bias["effects"]))) if "effects" in bias.columns else ""
    t = Table("aspect", "shown position", "n", "effect (points)", "95% CI",
              title=f"position bias (vs the average position; {effects} fixed effects)")
    for r in bias.iter_rows(named=True):
        ci = f"[{r['lo']:+.3f}, {r['hi']:+.3f}]" if r["lo"] == r["lo"] else "-"  # NaN: one prompt, no bootstrap
        t.add_row(r["aspect"], str(r["shown_position"]), f"{r['n']:,}", f"{r['bias']:+.3f}", ci)
    return t


@app.command()
def annotate(
    run_dir: Path = typer.Argument(..., help="Run directory with prompts and images."),
    annotator: str = typer.Option(..., "--annotator", help="Preset name (annotators/NAME.yaml) or path."),
    dry_run: bool = paid.dry_run(),
    max_cost: Optional[float] = paid.max_cost(),
    limit: Optional[int] = paid.limit("image sets"),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="Override the preset's server URL; several, "
                                           "comma-separated, make a pool (least-loaded routing, failover)."),
    model: Optional[str] = typer.Option(None, "--model", help="Override the preset's model."),
    mode: Optional[str] = paid.mode(),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", help="Parallel requests (online mode)."),
    permutations: Optional[int] = typer.Option(None, "--permutations", help="Shown orders per image set "
                                               "(position-bias control)."),
    no_wait: bool = typer.Option(False, "--no-wait", help="Batch mode: submit and return; rerun to collect."),
    results: Optional[list[Path]] = paid.results(),
    log_every: float = typer.Option(30.0, "--log-every", help="When stderr is not a terminal (nohup, a "
                                    "scheduler's log): print a plain progress line every this many seconds."),
) -> None:
    """Score every image set with an MLLM judge. Resumable: rerun the same command after any crash."""
    urls = [u.strip() for u in base_url.split(",") if u.strip()] if base_url and "," in base_url else None
    preset = _preset(annotator, base_url=None if urls else base_url, base_urls=urls, model=model, mode=mode,
                     concurrency=concurrency, permutations=permutations)
    res = annotate_api(run_dir, preset, dry_run=dry_run, max_cost=max_cost, limit=limit, wait=not no_wait,
                       progress=sys.stderr.isatty(), results=results or None, log_every_s=log_every)
    t = Table("", "value", title=f"annotate {preset.annotator_id} ({preset.mode})")
    t.add_row("image sets x permutations", f"{res.planned:,}")
    t.add_row("already answered", f"{res.already_done:,}")
    t.add_row("to send", f"{res.todo:,}")
    if res.folded is not None:
        f = res.folded
        t.add_row("results lines folded / failed / already folded / not ours",
                  f"{f['answered']:,} / {f['failed']:,} / {f['already']:,} / {f['unknown']:,}")
    t.add_row("estimated tokens (in / out)", f"{res.est_input_tokens:,} / {res.est_output_tokens:,}")
    t.add_row("estimated cost", f"${res.est_cost_usd:.4f}")
    if res.est_basis:
        t.add_row("estimate basis", res.est_basis)
    if not res.dry_run:
        t.add_row("ok / invalid / error", f"{res.ok} / {res.invalid} / {res.error}")
        left = res.todo - res.ok - res.invalid - res.error
        if left and res.folded is None:
            t.add_row("still to send (a rerun sends them)", f"{left:,}")
        if res.recovered:
            t.add_row("answers recovered from the server (not paid again)", str(res.recovered))
        t.add_row("cost this time / total on this run", f"${res.cost_usd:.4f} / ${res.spent_total_usd:.4f}")
    out.print(t)
    if res.bias is not None and res.bias.height:
        out.print(bias_table(res.bias))
    if res.stopped_for_budget:
        out.print(f"[yellow]stopped before passing --max-cost ${max_cost:.2f}[/]; rerun with a higher cap to continue")
    if res.open_batches:
        out.print(f"{res.open_batches} batch(es) still running; `vprefer batches {run_dir}` shows them, "
                  "rerun this command to collect")
    paid.print_chunks(res, preset.model, f"vprefer annotate {run_dir} --annotator {annotator}")
    if res.dry_run:
        out.print("dry run: nothing was sent")


@app.command()
def batches(
    run_dir: Path = typer.Argument(..., help="Run directory."),
    annotator: Optional[str] = typer.Option(None, "--annotator", help="Preset name or path: ask the server for "
                                            "this annotator's batches now. Without it: every job's batches "
                                            "(annotation, captions, upsampling) as last recorded, no server asked."),
) -> None:
    """Status of the Batch API jobs submitted for a run."""
    if annotator is None:
        from vprefer.annotate.status import recorded_batches

        recorded = recorded_batches(run_dir)
        if not recorded:
            out.print("no batches submitted for this run")
            return
        t = Table("job", "batch", "chunk", "requests", "status (last seen)", "collected", title="batches")
        for job, r in recorded:
            t.add_row(job, r.batch_id or "-", r.chunk, str(r.requests), r.status, "yes" if r.collected else "no")
        out.print(t)
        out.print("live counts for one annotator: vprefer batches RUN --annotator NAME")
        return
    rows = batch_status(run_dir, _preset(annotator))
    if not rows:
        out.print("no batches submitted for this annotator")
        return
    t = Table("batch", "chunk", "requests", "status", "collected", "completed/failed", title="batches")
    for r in rows:
        c = r.counts or {}
        t.add_row(r.batch_id or "-", r.chunk, str(r.requests), r.status, "yes" if r.collected else "no",
                  f"{c.get('completed', '-')}/{c.get('failed', '-')}")
    out.print(t)


@app.command()
def pairs(
    run_dir: Path = typer.Argument(..., help="Run directory with annotations."),
    overall: str = typer.Option("mean", "--overall", help="How 'overall' combines the aspects: mean, or "
                                "weights:prompt_following=2,aesthetics=1,fidelity=1,harmlessness=1"),
    min_margin: float = typer.Option(0.0, "--min-margin", help="Score differences up to this are ties (kept, flagged)."),
    annotators: Optional[str] = typer.Option(None, "--annotators", help="Comma-separated annotator ids (default: all)."),
    debias: Optional[str] = typer.Option(None, "--debias", help="positions: subtract each annotator's estimated "
                                         "effect of the shown position before ranking (for one order per set, "
                                         "or unbalanced orders)."),
) -> None:
    """Aggregate annotations (over permutations and annotators) into rankings and preference pairs."""
    run = Run(run_dir)
    t0 = time.perf_counter()
    names = [a.strip() for a in annotators.split(",")] if annotators else None
    r = make_pairs(run, overall=overall, min_margin=min_margin, annotators=names, debias=debias)
    how = " (scores debiased by the estimated position effects)" if debias else ""
    out.print(f"{r.rankings.height:,} rankings, {r.pairs.height:,} pairs ({r.ties:,} ties){how} "
              f"in {time.perf_counter() - t0:.2f}s")


@app.command("judge-server")
def judge_server(
    port: int = typer.Option(8765, help="Port on 127.0.0.1."),
    latency: float = typer.Option(0.0, help="Seconds per request."),
    rate_429: float = typer.Option(0.0, "--rate-429", help="Share of requests answered 429 (with Retry-After)."),
    rate_500: float = typer.Option(0.0, "--rate-500", help="Share answered 500."),
    malformed: float = typer.Option(0.0, help="Share of answers made unparseable."),
    stall: float = typer.Option(0.0, help="Share of requests that stall for --stall-s seconds."),
    stall_s: float = typer.Option(5.0, "--stall-s", help="How long a stalled request stalls (seconds)."),
    position_bias: float = typer.Option(0.0, "--position-bias", help="Score bonus for the image shown first."),
    judge_noise: float = typer.Option(0.0, "--judge-noise", help="Standard deviation of the noise added to each "
                                      "score (points of the 1-5 scale; fixed per prompt, image and aspect)."),
    seed: int = typer.Option(0, help="Seed of the injected faults and of the judge noise."),
    capacity: int = typer.Option(0, "--capacity", help="At most this many requests served at once (a replica's "
                                 "batch slots; more wait in a queue); 0: no limit."),
    workers: int = typer.Option(1, "--workers", help="Processes serving the port (SO_REUSEPORT, Linux): one "
                                "process tops out near 120 requests/s, so throughput benchmarks use several. "
                                "Each keeps its own state (stored completions, batches, /_stats, /_config): "
                                "tests that read or set state use 1."),
) -> None:
    """Start the embedded stand-in judge: an OpenAI-compatible server scoring by pixel statistics (offline demos/tests)."""
    from vprefer.judge_server.serve import serve
    from vprefer.judge_server.server import Faults

    faults = Faults(latency_s=latency, rate_429=rate_429, rate_500=rate_500, malformed_rate=malformed,
                    stall_rate=stall, stall_s=stall_s, position_bias=position_bias, judge_noise=judge_noise,
                    seed=seed, capacity=capacity)
    ready = lambda url: out.print(f"stand-in judge on {url} (pixel statistics, not a model; "  # noqa: E731
                                  f"{workers} worker{'s' if workers != 1 else ''}); Ctrl-C to stop")
    serve(port, faults, workers=workers, on_ready=ready)

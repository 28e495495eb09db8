"""``annotate()``: the judge's job (:class:`vprefer.annotate.job.AnnotationJob`) run by the client layer.

Resumption is the default, not a flag: every call first folds the journal into
``annotations``, then plans the run's requests and sends only those not yet
answered (:func:`vprefer.llm.run_job`). Rerunning a finished run sends nothing.
What is done, in flight and spent comes from one :class:`vprefer.llm.Ledger`,
read once per call. This module adds what only annotation shows: the live bar
(or plain lines for logs) and the position bias of the answers.

``max_cost`` caps the *total* spend of this annotator on this run (recorded
cost so far + estimates of requests in flight + the next request), so the same
command with the same cap never spends more on a rerun.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from vprefer.annotate.job import AnnotationJob
from vprefer.annotate.pairs import position_bias
from vprefer.annotate.preset import AnnotatorPreset
from vprefer.llm import Report, run_job
from vprefer.store import Run


@dataclass
class AnnotateResult(Report):
    """The client layer's report, plus what only annotation measures."""
    bias: pl.DataFrame | None = field(default=None, repr=False)


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TextColumn("ok {task.fields[ok]} · failed {task.fields[failed]} · in flight {task.fields[inflight]}"),
        TextColumn("{task.fields[rate]:.1f} req/s"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        TextColumn("{task.fields[tokens]:,} tok · ${task.fields[cost]:.4f}"), TextColumn("{task.fields[servers]}"),
        TextColumn("{task.fields[note]}"),
        disable=not enabled, transient=False,
    )


def progress_note(report: Report, preset: AnnotatorPreset) -> str:
    """Why the line may stand still after a crash: the resume waits for answers the dead process left running
    (sending them again would pay twice)."""
    n = report.recovering
    return (f"waiting for {n} answer{'s' if n != 1 else ''} in flight when the last process died "
            f"(up to {preset.timeout_s:.0f} s after sent)" if n else "")


def annotate(run_dir: str | Path, preset: AnnotatorPreset, *, dry_run: bool = False, max_cost: float | None = None,
             limit: int | None = None, wait: bool = True, progress: bool = False,
             poll_s: float | None = None, wait_timeout_s: float | None = None,
             results: list[Path] | None = None, log_every_s: float | None = None) -> AnnotateResult:
    """``results``: fold these ``vllm run-batch`` output files (offline mode) and send nothing.
    ``log_every_s``: without the live bar (``progress``), a plain progress line on stderr this often (logs)."""
    run = Run(run_dir)
    job = AnnotationJob(run, preset, run_id=_run_id())
    res = AnnotateResult()
    plain = _plain(res, preset, log_every_s if not progress else None)
    bar, task, t0 = _progress(progress), None, time.monotonic()

    def update(s: Report) -> None:  # the live bar starts with the first request (a dry run shows none)
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task(f"annotate {preset.name}", total=s.todo, ok=0, failed=0, inflight=0, rate=0.0,
                                tokens=0, cost=0.0, servers="", note="")
        batch = preset.mode == "batch"
        bar.update(task, completed=s.ok + s.invalid if batch else s.done, ok=s.ok, failed=s.invalid + s.error,
                   inflight=s.open_batches if batch else s.in_flight,
                   rate=s.done / max(1e-9, time.monotonic() - t0), tokens=s.input_tokens + s.output_tokens,
                   cost=s.cost_usd, servers=s.servers_line(),  # a pool: per-server ok/failed
                   note=progress_note(s, preset))
        plain()

    try:
        run_job(run, job, mode=preset.mode, max_cost=max_cost, limit=limit, dry_run=dry_run, wait=wait,
                poll_s=poll_s, wait_timeout_s=wait_timeout_s, results=results, report=res, on_update=update,
                extra=lambda: {"run_id": job.run_id})
    finally:
        plain.final()
        if task is not None:
            bar.stop()
    res.bias = position_bias(run, preset.annotator_id) if run.has("annotations") else None
    return res


def _plain(res: AnnotateResult, preset: AnnotatorPreset, every_s: float | None):
    from vprefer.progress import PlainProgress, eta

    def line() -> str:
        el = time.monotonic() - res.started
        note = progress_note(res, preset)
        return (f"{res.done:,}/{res.todo:,} done · ok {res.ok:,} · failed {res.invalid + res.error:,}"
                + (f" · still to send {res.pending:,}" if res.pending else "")
                + f" · in flight {res.in_flight} · {res.done / max(el, 1e-9):.1f} req/s · ${res.cost_usd:.4f}"
                + (f" · {res.servers_line()}" if res.servers else "") + (f" · {note}" if note else "")
                + (f" · {eta(res.done, res.todo, el)}" if res.done < res.todo else ""))

    return PlainProgress(f"annotate {preset.name}", line, every_s=every_s)


def _run_id() -> str:
    return f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"

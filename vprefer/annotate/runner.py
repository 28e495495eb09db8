"""``annotate()``: plan, resume, estimate, send (online or batch), fold.

Resumption is the default, not a flag: every call first folds the journal into
``annotations``, then plans the run's requests and sends only those not yet
answered. Rerunning a finished run sends nothing. What is done, in flight and
spent comes from one :class:`vprefer.llm.Ledger`, read once per call.

``max_cost`` caps the *total* spend of this annotator on this run (recorded
cost so far + estimates of requests in flight + the next request; the rule of
:func:`vprefer.llm.send_all`), so the same command with the same cap never
spends more on a rerun.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from vprefer.annotate.batch import BatchRunner
from vprefer.annotate.offline import fold_results, write_offline
from vprefer.annotate.online import OnlineRunner
from vprefer.annotate.pairs import position_bias
from vprefer.annotate.preset import AnnotatorPreset
from vprefer.annotate.records import fold, ledger_for
from vprefer.annotate.estimate import Estimator
from vprefer.annotate.requests import image_uris, pending, plan
from vprefer.annotate.rubric import Rubric
from vprefer.llm import FatalAPIError, Report
from vprefer.store import Run


@dataclass
class AnnotateResult(Report):
    """The client layer's report, plus what only annotation measures."""
    bias: pl.DataFrame | None = field(default=None, repr=False)
    chunk_files: list[str] = field(default_factory=list)  # offline mode: written by this call
    waiting_files: list[str] = field(default_factory=list)  # offline mode: written before, not folded yet
    folded: dict | None = None  # --results: line counts of the fold


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
    rubric = Rubric.load(preset.rubric)
    aspects = list(rubric.aspects)
    ledger = ledger_for(run, preset.slug, preset.annotator_id)
    fold(run, ledger, aspects)  # answers journalled by a process that died before folding them
    reqs = plan(run, preset, rubric, limit=limit, pin=not dry_run)
    if results:
        return _fold_results(run, preset, rubric, ledger, reqs, results)
    todo = pending(reqs, ledger.done)
    res = AnnotateResult(planned=len(reqs), already_done=len(reqs) - len(todo), todo=len(todo), dry_run=dry_run)
    est = Estimator.for_run(run, preset, rubric)
    res.est_input_tokens, res.est_output_tokens, res.est_cost_usd = est.total(todo)
    res.est_basis = est.basis
    if dry_run or not todo:
        res.spent_total_usd = ledger.spent_usd
        res.bias = position_bias(run, preset.annotator_id) if run.has("annotations") else None
        return res
    if preset.mode != "offline":  # offline chunks need no server and no key
        preset.api_key()  # fail fast, before anything is written, if the key is missing
    run_id = _run_id()
    recipe = {"annotator": preset.resolved(), "rubric": rubric.hash, "max_cost": max_cost, "limit": limit}
    with run.command("annotate", recipe) as entry, ledger, _progress(progress) as bar:
        task = bar.add_task(f"annotate {preset.name}", total=len(todo), ok=0, failed=0, inflight=0, rate=0.0,
                            tokens=0, cost=0.0, servers="", note="")
        plain = _plain(res, preset, log_every_s if not progress else None)
        try:
            if preset.mode == "online":
                t0 = time.monotonic()

                def update(s: Report) -> None:
                    el = max(1e-9, time.monotonic() - t0)
                    bar.update(task, completed=s.done, ok=s.ok, failed=s.invalid + s.error, inflight=s.in_flight,
                               rate=s.done / el, tokens=s.input_tokens + s.output_tokens, cost=s.cost_usd,
                               servers=s.servers_line(),  # a pool: per-server ok/failed
                               note=progress_note(s, preset))
                    plain()

                runner = OnlineRunner(run, preset, rubric, ledger, image_uris(run), run_id=run_id, report=res,
                                      budget_usd=max_cost, on_update=update, estimator=est)
                asyncio.run(runner.run_all(todo))
            elif preset.mode == "offline":
                new, waiting = write_offline(run, preset, rubric, ledger, todo, image_uris(run), run_id=run_id,
                                             report=res)
                res.chunk_files, res.waiting_files = [str(p) for p in new], [str(p) for p in waiting]
            else:
                batches = BatchRunner(run, preset, rubric, ledger, run_id=run_id, report=res,
                                      on_update=lambda r: plain() or bar.update(
                                          task, completed=r.ok + r.invalid, ok=r.ok, failed=r.invalid + r.error,
                                          inflight=r.open_batches, cost=r.cost_usd))
                by_id = {r.request_id: r for r in reqs}
                # re-asks an earlier process paid (and died before their answer) count against the cap too
                todo = _within_budget(todo, est, ledger, max_cost, res,
                                      pending_usd=batches.reask_cost_pending(ledger.done))
                batches.submit(todo, image_uris(run))
                rounds = 0
                while wait and batches.wait(by_id, poll_s=poll_s, timeout_s=wait_timeout_s):
                    left = pending(todo, ledger.done)
                    rounds += 1
                    if not left or rounds > preset.max_retries + preset.invalid_retries:
                        break
                    left = _within_budget(left, est, ledger, max_cost, res,  # re-asks are paid too
                                          pending_usd=batches.reask_cost_pending(ledger.done))
                    if not left:
                        break
                    batches.submit(left, image_uris(run))  # error-file lines (not billed) and re-asks
                if not wait:
                    batches.poll(by_id)
        except FatalAPIError as e:  # the one line says what this run came to, not only why it stopped
            e.args = (f"{e.args[0]}. This run: {res.ok} answered, {res.invalid} invalid, {res.error} failed, "
                      f"{res.todo - res.ok - res.invalid - res.error} still to send (rerun the same command; "
                      "everything answered so far is saved)",)
            raise
        finally:
            plain.final()
            fold(run, ledger, aspects)
            entry.update(cost_usd=res.cost_usd, ok=res.ok, invalid=res.invalid, error=res.error,
                         pending=res.todo - res.ok - res.invalid - res.error, run_id=run_id,
                         stopped_for_budget=res.stopped_for_budget)
    res.spent_total_usd = ledger.spent_usd
    res.bias = position_bias(run, preset.annotator_id)
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


def _within_budget(todo: list, est: Estimator, ledger, max_cost: float | None, res: AnnotateResult, *,
                   pending_usd: float = 0.0) -> list:
    """The requests of a batch that fit the cap (a batch is paid whole: submit only what fits), reserving
    each at the upper estimate on top of everything spent so far (``pending_usd``: paid re-asks whose
    request has no final answer yet)."""
    if max_cost is None:
        return todo
    keep, acc = [], ledger.spent_usd + pending_usd
    for r in todo:
        c = est.cost(r, batch=True, upper=True)
        if acc + c > max_cost:
            res.stopped_for_budget = True
            break
        keep.append(r)
        acc += c
    return keep


def _run_id() -> str:
    return f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"


def _fold_results(run: Run, preset: AnnotatorPreset, rubric: Rubric, ledger, reqs, results: list[Path]
                  ) -> AnnotateResult:
    res, run_id = AnnotateResult(planned=len(reqs)), _run_id()
    recipe = {"annotator": preset.resolved(), "rubric": rubric.hash, "results": [str(p) for p in results]}
    with run.command("annotate --results", recipe) as entry, ledger:
        res.folded = fold_results(run, preset, rubric, ledger, reqs, list(results), run_id=run_id, report=res)
        entry.update(ok=res.ok, invalid=res.invalid, error=res.error, cost_usd=res.cost_usd, run_id=run_id)
    left = pending(reqs, ledger.done)
    res.already_done, res.todo, res.spent_total_usd = len(reqs) - len(left), len(left), ledger.spent_usd
    res.bias = position_bias(run, preset.annotator_id) if run.has("annotations") else None
    return res

"""``run_job``: the one lifecycle of a paid LLM job, whatever it asks and however it is sent.

Every job (annotation, captions, prompt upsampling) runs the same steps, so a
resume, a budget or a crash means the same thing everywhere:

1. read the ledger once (journal + what the results table holds) and **fold**
   answers a dead process journalled but never folded;
2. **plan** every item (request ids are content hashes: the same question is the
   same id in every process) and keep those not answered: the **todo**;
3. **estimate** the todo's tokens and cost; a **dry run** stops here;
4. check the **key** (not for offline chunks, which need no server), open a
   manifest entry (the job's settings, never a key);
5. **send**: ``online`` through :func:`vprefer.llm.send_all` and :func:`vprefer.llm.ask`
   (concurrency, retries, stored-completion recovery, invalid re-asks, the
   budget rule); ``batch`` through the Batch API (only what fits ``max_cost``
   is submitted, since a batch is paid whole; error-file lines and re-asks go
   in later batches); ``offline``: chunk files for ``vllm run-batch``, whose
   outputs ``results=`` folds back;
6. **fold** again (also after a failure) and record the outcome in the manifest.

``max_cost`` caps the job's *total* spend on the run directory (recorded + in
flight + next), so the same command with the same cap never spends more on a
rerun.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Callable

from vprefer.errors import InputError
from vprefer.llm.client import Client, FatalAPIError
from vprefer.llm.job import ChatJob, JobBatches, ask
from vprefer.llm.ledger import Ledger
from vprefer.llm.report import Report
from vprefer.llm.send import send_all
from vprefer.store import Run



def ledger_of(run: Run, job: ChatJob) -> Ledger:
    ids, usd = job.recorded(run)
    return Ledger(run, job.name, kind=job.kind, recorded=ids, recorded_usd=usd)


def run_job(run: Run, job: ChatJob, *, mode: str = "online", max_cost: float | None = None, limit: int | None = None,
            dry_run: bool = False, wait: bool = True, poll_s: float | None = None,
            wait_timeout_s: float | None = None, results: list[Path] | None = None, report: Report | None = None,
            on_update: Callable[[Report], None] | None = None, extra: Callable[[], dict] | None = None) -> Report:
    """Run ``job`` on ``run``; resumable. ``results``: fold these ``vllm run-batch`` output files and send
    nothing. ``report``: a :class:`Report` (or subclass) to fill. ``extra``: more fields for the manifest
    entry once the job ends (e.g. annotation's run id)."""
    if mode not in job.modes:
        raise InputError(f"mode must be one of {', '.join(job.modes)} for {job.command}, not {mode!r}")
    res = report if report is not None else Report()
    on_update = on_update or (lambda r: None)
    ledger = ledger_of(run, job)
    job.fold(run, ledger)  # answers journalled by a process that died before folding them
    items = job.plan(run, limit, dry_run=dry_run)
    res.planned = len(items)
    if results:
        return _fold_results(run, job, ledger, items, results, res, extra)
    todo = [i for i in items if i.request_id not in ledger.done]
    res.already_done, res.todo, res.dry_run = len(items) - len(todo), len(todo), dry_run
    res.est_input_tokens, res.est_output_tokens, res.est_cost_usd, res.est_basis = job.forecast(
        todo, ledger, batch=mode == "batch")
    if dry_run or not todo:
        res.spent_total_usd = ledger.spent_usd
        return res
    if mode != "offline":  # offline chunks need no server and no key
        job.settings.api_key()  # fail fast, before anything is written, if the key is missing
    recipe = {**job.manifest(), "mode": mode, "max_cost": max_cost, "limit": limit}
    with run.command(job.command, recipe) as entry, ledger:
        try:
            if mode == "online":
                asyncio.run(_online(job, ledger, res, todo, max_cost, on_update))
            elif mode == "batch":
                _batch(run, job, ledger, res, todo, items, max_cost, wait, poll_s, wait_timeout_s, on_update)
            else:
                _offline(run, job, ledger, res, todo)
        except FatalAPIError as e:  # the one line says what this run came to, not only why it stopped
            e.args = (f"{e.args[0]}. This run: {res.ok} answered, {res.invalid} invalid, {res.error} failed, "
                      f"{res.todo - res.ok - res.invalid - res.error} still to send (rerun the same command; "
                      "everything answered so far is saved)",)
            raise
        finally:
            job.fold(run, ledger)
            entry.update(cost_usd=res.cost_usd, ok=res.ok, invalid=res.invalid, error=res.error,
                         pending=res.todo - res.ok - res.invalid - res.error,
                         stopped_for_budget=res.stopped_for_budget, **(extra() if extra else {}))
    res.spent_total_usd = ledger.spent_usd
    return res


async def _online(job: ChatJob, ledger: Ledger, res: Report, todo: list, max_cost: float | None, on_update) -> None:
    in_flight_before = ledger.in_flight()  # before anything is sent: what the last crash left
    recover = job.settings.store_completions

    async with Client(job.settings, res) as client:
        await send_all(todo, lambda it: ask(job, client, ledger, it, recover=recover and it.request_id in
                                            in_flight_before),
                       ledger=ledger, report=res, concurrency=job.settings.concurrency, budget=max_cost,
                       on_update=on_update,
                       estimate=lambda it: job.estimate(it, ledger, batch=False, upper=True))  # updated as answers land


def _batch(run: Run, job: ChatJob, ledger: Ledger, res: Report, todo: list, items: list, max_cost: float | None,
           wait: bool, poll_s: float | None, wait_timeout_s: float | None, on_update) -> None:
    batches = JobBatches(run, job, ledger, report=res, on_update=on_update)
    by_id = {i.request_id: i for i in items}
    # re-asks an earlier process paid (and died before their answer) count against the cap too
    todo = within_budget(job, todo, ledger, max_cost, res, pending_usd=batches.reask_cost_pending(ledger.done))
    batches.submit(todo)
    rounds = 0
    while wait and batches.wait(by_id, poll_s=poll_s, timeout_s=wait_timeout_s):
        left = [i for i in todo if i.request_id not in ledger.done]
        rounds += 1
        if not left or rounds > job.settings.max_retries + job.invalid_retries:
            break
        left = within_budget(job, left, ledger, max_cost, res, pending_usd=batches.reask_cost_pending(ledger.done))
        if not left:
            break
        batches.submit(left)  # error-file lines (not billed) and re-asks
    if not wait:
        batches.poll(by_id)


def within_budget(job: ChatJob, todo: list, ledger: Ledger, max_cost: float | None, res: Report, *,
                  pending_usd: float = 0.0) -> list:
    """The requests of a batch that fit the cap (a batch is paid whole: submit only what fits), reserving
    each at the upper estimate on top of everything spent so far (``pending_usd``: paid re-asks whose
    request has no final answer yet)."""
    if max_cost is None:
        return todo
    keep, acc = [], ledger.spent_usd + pending_usd
    for it in todo:
        c = job.estimate(it, ledger, batch=True, upper=True)
        if acc + c > max_cost:
            res.stopped_for_budget = True
            break
        keep.append(it)
        acc += c
    return keep


def _offline(run: Run, job: ChatJob, ledger: Ledger, res: Report, todo: list) -> None:
    """Chunk files for ``vllm run-batch`` (new ones in ``res.chunk_files``; those written before and not
    folded yet in ``res.waiting_files``, so a user who lost track sees them)."""
    runner = JobBatches(run, job, ledger, report=res)
    new = runner.write_offline(todo, job.offline_folder(run))
    waiting = [Path(e["path"]) for e in runner.offline_chunks() if Path(e["path"]) not in new]
    res.chunk_files, res.waiting_files = [str(p) for p in new], [str(p) for p in waiting]


def _fold_results(run: Run, job: ChatJob, ledger: Ledger, items: list, paths: list[Path], res: Report,
                  extra: Callable[[], dict] | None) -> Report:
    """Fold ``vllm run-batch`` output files into the journal and the results table: joined on ``custom_id``,
    answered ids skipped (a second fold journals nothing), then every chunk the files had lines of is closed
    (its missing and failed lines are pending again: the next offline run writes them into a new chunk)."""
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise InputError(f"results file(s) not found: {', '.join(missing)}")
    recipe = {**job.manifest(), "results": [str(p) for p in paths]}
    with run.command(f"{job.command} --results", recipe) as entry, ledger:
        runner = JobBatches(run, job, ledger, report=res)
        done = set(ledger.done)
        with ledger.deferred_sync():  # the results files stay on disk: one fsync at the end, not per line
            n = runner.fold_files(list(paths), {i.request_id: i for i in items}, done)
        n["chunks_closed"] = runner.close_offline(n.pop("seen"))
        n["recorded"] = job.fold(run, ledger)
        res.folded = n
        entry.update(ok=res.ok, invalid=res.invalid, error=res.error, cost_usd=res.cost_usd,
                     **(extra() if extra else {}))
    left = [i for i in items if i.request_id not in ledger.done]
    res.already_done, res.todo, res.spent_total_usd = len(items) - len(left), len(left), ledger.spent_usd
    return res

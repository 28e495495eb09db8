"""The one concurrent send loop, and its one budget rule.

Every online LLM job (annotation, upsampling, captioning later) goes through
:func:`send_all`, so "how many at once" and "when to stop paying" mean the same
thing everywhere:

* at most ``concurrency`` requests are in flight (asyncio, one event loop);
* **budget**: no new request starts once *recorded spend* (the ledger: table +
  journal, this run's answers included as they land) *+ the estimates of the
  requests in flight + the estimate of the next one* would pass ``budget``. The
  cap is on the total for the run directory, so the same command with the same
  cap never spends more on a rerun;
* a :class:`FatalAPIError` (bad key, unknown model, a server that cannot be
  reached) stops new requests, journals the end of the request it came from
  (refused or never delivered: not in flight, so a rerun sends it at once),
  lets those in flight land in the journal, then propagates. Requests it ends
  count as ``pending``: a rerun sends them.

What one request *is* (body, parsing, what gets journalled) is the job's
``ask`` coroutine; the loop only counts its :class:`Outcome`.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Iterable, TypeVar

from vprefer.llm.client import FatalAPIError, ended
from vprefer.llm.ledger import Ledger
from vprefer.llm.report import Outcome, Report

T = TypeVar("T")


async def send_all(items: Iterable[T], ask: Callable[[T], Awaitable[Outcome]], *, ledger: Ledger, report: Report,
                   concurrency: int, estimate: Callable[[T], float], budget: float | None = None,
                   on_update: Callable[[Report], None] | None = None) -> Report:
    on_update = on_update or (lambda r: None)
    sem = asyncio.Semaphore(concurrency)
    tasks: set[asyncio.Task] = set()
    fatal: list[BaseException] = []
    reserved = 0.0

    async def guarded(item: T, est: float) -> None:
        nonlocal reserved
        try:
            report.count(await ask(item))
        except FatalAPIError as e:
            fatal.append(e)
            report.pending += 1
            if e.request_id is not None:
                await ledger.awrite(ended(e.request_id, e))
        finally:
            reserved -= est
            report.in_flight -= 1
            sem.release()
            on_update(report)

    async def tick() -> None:  # a progress line that moves while nothing lands (e.g. waiting on a recovery)
        while True:
            await asyncio.sleep(1.0)
            on_update(report)

    ticker = asyncio.create_task(tick())
    try:
        for item in items:
            await sem.acquire()
            if fatal:
                sem.release()
                break
            est = estimate(item)
            if budget is not None and ledger.spent_usd + reserved + est > budget:
                sem.release()
                report.stopped_for_budget = True
                break
            reserved += est
            report.in_flight += 1
            t = asyncio.create_task(guarded(item, est))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
    finally:
        ticker.cancel()
        for t in tasks:
            t.cancel()
    if fatal:
        raise fatal[0]
    return report

"""Online annotation: what one judge request is, sent through the client layer's loop.

How requests are sent, retried, budgeted and journalled is ``vprefer.llm``'s;
this module says what one request is: build its body (images re-encoded, off
the event loop), fetch back a stored answer if it was in flight at a crash,
parse the answer with the rubric, re-ask up to ``invalid_retries`` times when
it fails validation, and journal the outcome. Requests whose transient retries
ran out are journalled as ``transient`` (not ``done``), so a rerun asks again.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

import openai

from vprefer.annotate.preset import AnnotatorPreset
from vprefer.annotate.records import done_record
from vprefer.annotate.estimate import Estimator
from vprefer.annotate.requests import JudgeRequest, chat_body
from vprefer.annotate.rubric import InvalidAnswer, Rubric
from vprefer.images import BadImage
from vprefer.llm import Client, Ledger, Outcome, PermanentError, Report, cost, ended, send_all, usage
from vprefer.store import Run


class OnlineRunner:
    def __init__(self, run: Run, preset: AnnotatorPreset, rubric: Rubric, ledger: Ledger, uris: dict[str, str],
                 *, run_id: str, report: Report, budget_usd: float | None = None,
                 on_update: Callable[[Report], None] | None = None, estimator: Estimator | None = None):
        self.run, self.preset, self.rubric, self.ledger, self.uris = run, preset, rubric, ledger, uris
        self.run_id, self.budget, self.report, self.on_update = run_id, budget_usd, report, on_update
        self.in_flight_before: set[str] = set()
        self.est = estimator or Estimator.for_run(run, preset, rubric)

    async def ask(self, client: Client, req: JudgeRequest) -> Outcome:
        t0 = time.monotonic()
        tin = tout = 0
        attempts, raw, judgement, status, error = 0, None, None, "invalid", None
        try:
            recover = req.request_id in self.in_flight_before and self.preset.store_completions
            resp = await client.recover(req.request_id, self.ledger.sent_at(req.request_id)) if recover else None
            body = None
            for attempts in range(1, self.preset.invalid_retries + 2):
                if resp is None:
                    if body is None:
                        body = await asyncio.to_thread(chat_body, req, self.preset, self.rubric, self.run, self.uris)
                    await self.ledger.awrite({"event": "sent", "request_id": req.request_id, "attempt": attempts})
                    resp = await client.chat(body, req.request_id)
                i, o = usage(resp)
                tin, tout = tin + i, tout + o
                raw = resp.choices[0].message.content if resp.choices else None
                try:
                    judgement = self.rubric.parse(raw, req.n)
                    status = "ok"
                    break
                except InvalidAnswer as e:
                    error = f"invalid answer: {e}"
                    resp = None
        except (PermanentError, BadImage, FileNotFoundError) as e:
            status, error = "error", str(e)
        except (openai.APIError, openai.APIConnectionError) as e:
            # retries exhausted on a transient fault: not journalled as done, so a rerun asks again
            await self.ledger.awrite(ended(req.request_id, e))
            return Outcome("pending")
        c = cost(self.preset, tin, tout, batch=False)
        await self.ledger.awrite(done_record(
            req, annotator=self.preset.annotator_id, rubric=self.rubric.hash, scale_max=self.rubric.scale.max,
            run_id=self.run_id, status=status, judgement=judgement, raw=raw, usage=(tin, tout), cost_usd=c,
            latency_s=time.monotonic() - t0, attempts=attempts, error=error))
        if status == "ok":
            self.est.observe(req.n, tout)
        return Outcome(status, tin, tout, c)

    async def run_all(self, reqs: list[JudgeRequest]) -> Report:
        self.in_flight_before = self.ledger.in_flight()  # before anything is sent: what the last crash left
        async with Client(self.preset, self.report) as client:
            return await send_all(
                reqs, lambda r: self.ask(client, r), ledger=self.ledger, report=self.report,
                concurrency=self.preset.concurrency, budget=self.budget, on_update=self.on_update,
                estimate=lambda r: self.est.cost(r, batch=False, upper=True))  # calibrated, updated as answers land

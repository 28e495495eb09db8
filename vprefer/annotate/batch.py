"""Batch-API annotation: what a judge request's line is, and what its answer means.

Submitting, finding lost batches, polling and downloading — and the crash
safety of all that — are :class:`vprefer.llm.BatchRunner`'s. Here: the body of
a line is the online request's body; an answered line is parsed with the
rubric and journalled at the batch price.

An answer that fails validation is re-asked in the next batch, as online mode
re-asks it, up to ``invalid_retries`` times: it is journalled as a ``reask``
event (its tokens and cost, keyed by the completion's id so collecting the
same output file twice counts it once), not as ``done``, so the request stays
pending and the runner submits it again. The final answer's ``done`` record
carries the tokens, cost and attempts of every answer paid for, as online mode's.
"""

from __future__ import annotations

from typing import Callable

from vprefer.annotate.preset import AnnotatorPreset
from vprefer.annotate.records import done_record
from vprefer.annotate.requests import JudgeRequest, chat_body
from vprefer.annotate.rubric import InvalidAnswer, Rubric
from vprefer.llm import BatchRunner as _Batches
from vprefer.llm import Journal, Ledger, Outcome, Report, cost, read_journal
from vprefer.store import Run


class BatchRunner(_Batches[JudgeRequest]):
    def __init__(self, run: Run, preset: AnnotatorPreset, rubric: Rubric, journal: Journal | Ledger, *, run_id: str,
                 report: Report | None = None, on_update: Callable[[Report], None] | None = None):
        super().__init__(run, preset, report=report, on_update=on_update)
        self.preset, self.rubric, self.journal, self.run_id = preset, rubric, journal, run_id
        self.uris: dict[str, str] = {}
        self.reasks: dict[str, dict[str, dict]] = {}  # request id -> completion id -> reask record
        for rec in read_journal(journal.path):
            if rec.get("event") == "reask":
                self.reasks.setdefault(rec["request_id"], {}).setdefault(rec["response_id"], rec)

    def submit(self, reqs: list[JudgeRequest], uris: dict[str, str]) -> None:
        self.uris = uris
        super().submit(reqs)

    def body(self, req: JudgeRequest) -> dict:
        return chat_body(req, self.preset, self.rubric, self.run, self.uris)

    def reask_cost_pending(self, done: set[str]) -> float:
        """Paid re-asks of requests not answered for good yet: spent, but in no ``done`` record so far."""
        return sum(r["cost_usd"] for rid, recs in self.reasks.items() if rid not in done for r in recs.values())

    def answer(self, req: JudgeRequest, body: dict) -> Outcome | None:
        usage = body.get("usage") or {}
        tin, tout = usage.get("prompt_tokens", 0) or 0, usage.get("completion_tokens", 0) or 0
        raw = (body.get("choices") or [{}])[0].get("message", {}).get("content")
        try:
            judgement, status, err = self.rubric.parse(raw, req.n), "ok", None
        except InvalidAnswer as ex:
            judgement, status, err = None, "invalid", f"invalid answer: {ex}"
        c = cost(self.preset, tin, tout, batch=True)
        earlier = self.reasks.setdefault(req.request_id, {})
        rid = body.get("id") or f"{req.request_id}:{len(earlier)}"
        if rid in earlier:  # the same output collected again (a crash mid-collect): already counted
            return None
        if status == "invalid" and len(earlier) < self.preset.invalid_retries:
            rec = {"event": "reask", "request_id": req.request_id, "response_id": rid, "input_tokens": tin,
                   "output_tokens": tout, "cost_usd": c, "error": err}
            self.journal.write(rec)
            earlier[rid] = rec
            return Outcome("retries", tin, tout, c)  # Report.count: a re-ask counts under ``retries``
        before = list(earlier.values())
        self.journal.write(done_record(
            req, annotator=self.preset.annotator_id, rubric=self.rubric.hash, scale_max=self.rubric.scale.max,
            run_id=self.run_id, status=status, judgement=judgement, raw=raw,
            usage=(tin + sum(r["input_tokens"] for r in before), tout + sum(r["output_tokens"] for r in before)),
            cost_usd=c + sum(r["cost_usd"] for r in before), latency_s=0.0, attempts=len(before) + 1, error=err))
        return Outcome(status, tin, tout, c)

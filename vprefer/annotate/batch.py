"""Batch-API annotation: what a judge request's line is, and what its answer means.

Submitting, finding lost batches, polling and downloading — and the crash
safety of all that — are :class:`vprefer.llm.BatchRunner`'s. Here: the body of
a line is the online request's body; an answered line is parsed with the
rubric and journalled at the batch price.
"""

from __future__ import annotations

from typing import Callable

from vprefer.annotate.preset import AnnotatorPreset
from vprefer.annotate.records import done_record
from vprefer.annotate.requests import JudgeRequest, chat_body
from vprefer.annotate.rubric import InvalidAnswer, Rubric
from vprefer.llm import BatchRunner as _Batches
from vprefer.llm import Journal, Ledger, Outcome, Report, cost
from vprefer.store import Run


class BatchRunner(_Batches[JudgeRequest]):
    def __init__(self, run: Run, preset: AnnotatorPreset, rubric: Rubric, journal: Journal | Ledger, *, run_id: str,
                 report: Report | None = None, on_update: Callable[[Report], None] | None = None):
        super().__init__(run, preset, report=report, on_update=on_update)
        self.preset, self.rubric, self.journal, self.run_id = preset, rubric, journal, run_id
        self.uris: dict[str, str] = {}

    def submit(self, reqs: list[JudgeRequest], uris: dict[str, str]) -> None:
        self.uris = uris
        super().submit(reqs)

    def body(self, req: JudgeRequest) -> dict:
        return chat_body(req, self.preset, self.rubric, self.run, self.uris)

    def answer(self, req: JudgeRequest, body: dict) -> Outcome:
        usage = body.get("usage") or {}
        tin, tout = usage.get("prompt_tokens", 0) or 0, usage.get("completion_tokens", 0) or 0
        raw = (body.get("choices") or [{}])[0].get("message", {}).get("content")
        try:
            judgement, status, err = self.rubric.parse(raw, req.n), "ok", None
        except InvalidAnswer as ex:
            judgement, status, err = None, "invalid", f"invalid answer: {ex}"
        c = cost(self.preset, tin, tout, batch=True)
        self.journal.write(done_record(
            req, annotator=self.preset.annotator_id, rubric=self.rubric.hash, scale_max=self.rubric.scale.max,
            run_id=self.run_id, status=status, judgement=judgement, raw=raw, usage=(tin, tout), cost_usd=c,
            latency_s=0.0, attempts=1, error=err))
        return Outcome(status, tin, tout, c)

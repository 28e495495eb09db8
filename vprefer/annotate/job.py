"""Annotation as a job on the client layer: what one judge request is and what its answer means.

How requests are sent, retried, recovered after a crash, re-asked when invalid,
batched, budgeted and journalled is ``vprefer.llm``'s (:func:`vprefer.llm.run_job`);
this declares only the judge's part: the requests (image sets x permutations,
:func:`vprefer.annotate.requests.plan`), their body (images re-encoded), the
rubric's parse of an answer, the journal record, the fold into ``annotations``
and the calibrated cost estimate. A permanent error (a bad image, a 4xx) is
recorded as an ``error`` row, not asked again.
"""

from __future__ import annotations

from typing import Any

from vprefer.annotate.estimate import Estimator
from vprefer.annotate.preset import AnnotatorPreset
from vprefer.annotate.records import done_record, fold, recorded
from vprefer.annotate.requests import JudgeRequest, chat_body, image_uris, plan
from vprefer.annotate.rubric import Rubric
from vprefer.images import BadImage
from vprefer.llm import ChatJob, Ledger
from vprefer.store import Run


class AnnotationJob(ChatJob[JudgeRequest]):
    kind = command = "annotate"
    bad_input = (BadImage, FileNotFoundError)
    record_errors = True

    def __init__(self, run: Run, preset: AnnotatorPreset, *, run_id: str, rubric: Rubric | None = None):
        self.run, self.settings, self.run_id = run, preset, run_id
        self.rubric = rubric or Rubric.load(preset.rubric)
        self.name, self.invalid_retries = preset.slug, preset.invalid_retries
        self.est = Estimator.for_run(run, preset, self.rubric)
        self._uris: dict[str, str] | None = None

    @property
    def uris(self) -> dict[str, str]:
        if self._uris is None:
            self._uris = image_uris(self.run)
        return self._uris

    def recorded(self, run: Run) -> tuple[list[str], float]:
        return recorded(run, self.settings.annotator_id)

    def plan(self, run: Run, limit: int | None, *, dry_run: bool) -> list[JudgeRequest]:
        return plan(run, self.settings, self.rubric, limit=limit, pin=not dry_run)

    def body(self, req: JudgeRequest) -> dict:
        return chat_body(req, self.settings, self.rubric, self.run, self.uris)

    def parse(self, req: JudgeRequest, text: str | None, finish_reason: str | None) -> Any:
        return self.rubric.parse(text, req.n)

    def record(self, req: JudgeRequest, result: Any, *, status: str, raw: str | None, usage: tuple[int, int],
               cost_usd: float, latency_s: float, attempts: int, error: str | None) -> dict:
        return done_record(req, annotator=self.settings.annotator_id, rubric=self.rubric.hash,
                           scale_max=self.rubric.scale.max, run_id=self.run_id, status=status, judgement=result,
                           raw=raw, usage=usage, cost_usd=cost_usd, latency_s=latency_s, attempts=attempts,
                           error=error)

    def fold(self, run: Run, ledger: Ledger) -> int:
        return fold(run, ledger, list(self.rubric.aspects))

    def estimate(self, req: JudgeRequest, ledger: Ledger, *, batch: bool, upper: bool = False) -> float:
        return self.est.cost(req, batch=batch, upper=upper)  # calibrated, updated as answers land

    def forecast(self, todo: list[JudgeRequest], ledger: Ledger, *, batch: bool) -> tuple[int, int, float, str]:
        return (*self.est.total(todo), self.est.basis)

    def observe(self, req: JudgeRequest, record: dict) -> None:
        self.est.observe(req.n, record["output_tokens"])

    def manifest(self) -> dict:
        return {"annotator": self.settings.resolved(), "rubric": self.rubric.hash}

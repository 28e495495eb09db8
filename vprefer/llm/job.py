"""A paid LLM job, declared: what an item is, what its request is, what an answer means, where it lands.

Annotation, captioning and prompt upsampling differ only in these few things;
*how* a request is sent, retried, recovered after a crash, re-asked when its
answer fails validation, journalled, priced, batched and folded is the same for
all of them and lives here and in :mod:`vprefer.llm.engine` once. A job
subclasses :class:`ChatJob` and fills in its methods; :func:`ask` (one online
request) and :class:`JobBatches` (the Batch API and ``vllm run-batch`` answers)
do the rest.

The journal records are the job's (:meth:`ChatJob.record`): existing runs keep
their journal format and request ids, so a run made by an older vprefer resumes
unchanged.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Generic, Protocol, TypeVar

import openai

from vprefer.llm.batch import BatchRunner
from vprefer.llm.client import Client, PermanentError, ended, usage
from vprefer.llm.ledger import Ledger
from vprefer.llm.report import Outcome, Report
from vprefer.llm.settings import ClientSettings, cost
from vprefer.store import Run


class Item(Protocol):
    request_id: str


T = TypeVar("T", bound=Item)


class ChatJob(Generic[T]):
    """One kind of paid chat request. Subclasses set ``kind``/``name``/``settings`` and the methods below."""

    kind: str = "job"  # journal RUN/journal/<kind>-<name>.jsonl; manifest command; batch state name
    command: str = "job"  # the manifest entry's name
    settings: ClientSettings
    name: str = ""  # the ledger's name within the kind (annotator slug, plus a style for some jobs)
    bad_input: tuple[type[BaseException], ...] = (OSError,)  # building this item's request failed for good
    record_errors: bool = False  # a permanent error: a ``done`` record (never asked again) or only ``ended``
    invalid_retries: int = 2  # answers that fail validation are asked again this often
    modes: tuple[str, ...] = ("online", "batch", "offline")  # the image API has no Batch API: online only

    # ------------------------------------------------------------------ what the job declares
    def recorded(self, run: Run) -> tuple[list[str], float]:
        """Request ids already in the job's results table, and what they cost."""
        return [], 0.0

    def plan(self, run: Run, limit: int | None, *, dry_run: bool) -> list[T]:
        raise NotImplementedError

    def body(self, item: T) -> dict:
        """The chat-completions body (may read files: called off the event loop)."""
        raise NotImplementedError

    async def call(self, client: Client, body: dict, rid: str):
        """One request to the server (chat completions; the images job calls ``images.generate``)."""
        return await client.chat(body, rid)

    def answer_of(self, resp) -> tuple[Any, str | None]:
        """What ``parse`` reads from a response: the first choice's text and finish reason."""
        return text_of(resp)

    def tokens(self, resp) -> tuple[int, int]:
        return usage(resp) if not isinstance(resp, dict) else (
            (resp.get("usage") or {}).get("prompt_tokens", 0) or 0, (resp.get("usage") or {}).get("completion_tokens", 0) or 0)

    def price(self, resp, tin: int, tout: int, *, batch: bool) -> float:
        """USD for one answer: tokens at the preset's prices (the images job adds a price per image)."""
        return cost(self.settings, tin, tout, batch=batch)

    def parse(self, item: T, text: str | None, finish_reason: str | None) -> Any:
        """The answer's meaning; a :class:`ValueError` marks it invalid (asked again, then recorded invalid)."""
        raise NotImplementedError

    def record(self, item: T, result: Any, *, status: str, raw: str | None, usage: tuple[int, int], cost_usd: float,
               latency_s: float, attempts: int, error: str | None) -> dict:
        """The journal's ``done`` record for this item."""
        raise NotImplementedError

    def fold(self, run: Run, ledger: Ledger) -> int:
        """Copy journalled answers the results table lacks into it; returns how many."""
        raise NotImplementedError

    def estimate(self, item: T, ledger: Ledger, *, batch: bool, upper: bool = False) -> float:
        """USD for one request (``upper``: a bound for the budget rule)."""
        raise NotImplementedError

    def forecast(self, todo: list[T], ledger: Ledger, *, batch: bool) -> tuple[int, int, float, str]:
        """(input tokens, output tokens, USD, what the estimate is based on) of the whole todo, for the report
        a dry run prints."""
        return 0, 0, sum(self.estimate(i, ledger, batch=batch) for i in todo), ""

    def observe(self, item: T, record: dict) -> None:
        """An answer landed (calibrate estimates as the run goes)."""

    def manifest(self) -> dict:
        """What the run's manifest records about this job (settings, never a key)."""
        return {"annotator": self.settings.resolved()}

    def offline_folder(self, run: Run):
        folder = run.subdir("offline") / self.name
        folder.mkdir(parents=True, exist_ok=True)
        return folder


def request_body(job: ChatJob[T], item: T) -> dict:
    """The job's body, marked to be stored server-side (``store_completions``) with the request id in its
    metadata: what lets a resume fetch back the answer of a request in flight at a crash, for every job."""
    body = job.body(item)
    if job.settings.store_completions:
        body["store"] = True
        body["metadata"] = {"vprefer_request_id": item.request_id}
    return body


def text_of(resp) -> tuple[str | None, str | None]:
    """The first choice's text and finish reason, from an SDK object or a Batch API line's body (a dict)."""
    if isinstance(resp, dict):
        choice = (resp.get("choices") or [{}])[0]
        return (choice.get("message") or {}).get("content"), choice.get("finish_reason")
    if not resp.choices:
        return None, None
    return resp.choices[0].message.content, resp.choices[0].finish_reason


async def ask(job: ChatJob[T], client: Client, ledger: Ledger, item: T, *, recover: bool) -> Outcome:
    """One online request, start to journal: recover a stored answer (``recover``: it was in flight when the
    last process died), else build the body, journal ``sent``, call; parse, re-ask an invalid answer up to
    ``invalid_retries`` times, journal the outcome. Transient faults that outlast the retries end the request
    without an answer (``pending``: a rerun asks again)."""
    rid, t0 = item.request_id, time.monotonic()
    tin = tout = attempts = 0
    raw, result, status, error, paid = None, None, "invalid", None, 0.0
    try:
        resp = await client.recover(rid, ledger.sent_at(rid)) if recover else None
        body = None
        for attempts in range(1, job.invalid_retries + 2):
            if resp is None:
                if body is None:
                    body = await asyncio.to_thread(request_body, job, item)
                await ledger.awrite({"event": "sent", "request_id": rid, "attempt": attempts})
                resp = await job.call(client, body, rid)
            i, o = job.tokens(resp)
            tin, tout, paid = tin + i, tout + o, paid + job.price(resp, i, o, batch=False)
            raw, finish = job.answer_of(resp)
            try:
                result, status, error = job.parse(item, raw, finish), "ok", None
                break
            except ValueError as e:
                error, resp = f"invalid answer: {e}", None
    except (PermanentError, *job.bad_input) as e:
        if not job.record_errors:
            await ledger.awrite(ended(rid, e))
            return Outcome("error")
        status, error = "error", str(e)
    except openai.APIError as e:  # retries exhausted on a transient fault: a rerun asks again
        await ledger.awrite(ended(rid, e))
        return Outcome("pending")
    c = paid
    rec = job.record(item, result, status=status, raw=raw, usage=(tin, tout), cost_usd=c,
                     latency_s=time.monotonic() - t0, attempts=attempts, error=error)
    await ledger.awrite(rec)
    if status == "ok":
        job.observe(item, rec)
    return Outcome(status, tin, tout, c)


class JobBatches(BatchRunner[T]):
    """Batch API (and ``vllm run-batch``) answers of a job: a line's body is the online body; an answer is
    parsed by the job and journalled at the batch price. An invalid answer is re-asked in the next batch, as
    online, up to ``invalid_retries`` times: journalled as a ``reask`` (its tokens and cost, keyed by the
    completion's id so collecting the same output file twice counts it once), not as ``done``, so the request
    stays pending; the final ``done`` record carries the tokens, cost and attempts of every answer paid for."""

    def __init__(self, run: Run, job: ChatJob[T], ledger: Ledger, *, report: Report | None = None, on_update=None):
        super().__init__(run, job.settings, report=report, on_update=on_update, state_name=_state_name(job))
        self.job, self.ledger = job, ledger
        self.reasks: dict[str, dict[str, dict]] = {}  # request id -> completion id -> reask record
        from vprefer.llm.journal import read

        for rec in read(ledger.path):
            if rec.get("event") == "reask":
                self.reasks.setdefault(rec["request_id"], {}).setdefault(rec["response_id"], rec)

    def body(self, item: T) -> dict:
        return request_body(self.job, item)

    def reask_cost_pending(self, done: set[str]) -> float:
        """Paid re-asks of requests not answered for good yet: spent, but in no ``done`` record so far."""
        return sum(r["cost_usd"] for rid, recs in self.reasks.items() if rid not in done for r in recs.values())

    def answer(self, item: T, body: dict) -> Outcome | None:
        if item.request_id in self.ledger.done:  # the same output file collected again after a crash
            return None
        tin, tout = self.job.tokens(body)
        raw, finish = self.job.answer_of(body)
        try:
            result, status, err = self.job.parse(item, raw, finish), "ok", None
        except ValueError as ex:
            result, status, err = None, "invalid", f"invalid answer: {ex}"
        c = self.job.price(body, tin, tout, batch=True)
        earlier = self.reasks.setdefault(item.request_id, {})
        rid = body.get("id") or f"{item.request_id}:{len(earlier)}"
        if rid in earlier:  # the same output collected again (a crash mid-collect): already counted
            return None
        if status == "invalid" and len(earlier) < self.job.invalid_retries:
            rec = {"event": "reask", "request_id": item.request_id, "response_id": rid, "input_tokens": tin,
                   "output_tokens": tout, "cost_usd": c, "error": err}
            self.ledger.write(rec)
            earlier[rid] = rec
            return Outcome("retries", tin, tout, c)  # Report.count: a re-ask counts under ``retries``
        before = list(earlier.values())
        rec = self.job.record(
            item, result, status=status, raw=raw,
            usage=(tin + sum(r["input_tokens"] for r in before), tout + sum(r["output_tokens"] for r in before)),
            cost_usd=c + sum(r["cost_usd"] for r in before), latency_s=0.0, attempts=len(before) + 1, error=err)
        self.ledger.write(rec)
        if status == "ok":
            self.job.observe(item, rec)
        return Outcome(status, tin, tout, c)


def _state_name(job: ChatJob) -> str:
    """The Batch API state file's name: annotation keeps the name runs already have (``batches-<annotator>``);
    every other job has its own (``batches-<kind>-<name>``), so a caption batch is never taken for an
    annotation batch (it used to switch the next annotation plan's order design)."""
    return job.name if job.kind == "annotate" else f"{job.kind}-{job.name}"

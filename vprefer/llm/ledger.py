"""The ledger: done / in flight / spent for one job, from one read of its journal.

A job's answers live in two places: the results table the job folds them into
(``annotations``, ``prompts``), and the journal, which may hold answers the
table has not seen yet (the process died before folding). Asking each place
separately, at several moments, is how a budget or a resume goes wrong; so the
ledger reads the journal once, is told what the table already holds, and from
then on sees every line written through it. Its answers are therefore the
same as re-reading both places, at any moment, without doing so.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable

import polars as pl

from vprefer.llm.journal import Journal, index, read
from vprefer.store import Run


_ENDS = ("transient", "error")  # with ``in_flight: false``, an attempt the server refused (see the journal)


@dataclass(frozen=True)
class Paid:
    """Billed costs of accepted answers: how many, their sum and their largest."""
    n: int = 0
    total: float = 0.0
    largest: float = 0.0

    def plus(self, c: float) -> "Paid":
        return Paid(self.n + 1, self.total + c, max(self.largest, c))

    def calibrated(self, upper: bool) -> float | None:
        """Once three answers are billed: their mean (``upper``: their largest); before that, None."""
        if self.n < 3:
            return None
        return self.largest if upper else self.total / self.n


class Ledger:
    def __init__(self, run: Run, name: str, *, kind: str = "annotate", recorded: Iterable[str] = (),
                 recorded_usd: float = 0.0):
        """``recorded``: request ids already in the job's results table, ``recorded_usd`` what they cost."""
        self.run, self.name, self.kind = run, name, kind
        self.path = Journal.path_for(run, name, kind)
        self._recorded = set(recorded)
        self._recorded_usd = recorded_usd
        self._unrecorded_usd = 0.0  # kept as a running sum: the send loop asks before every request
        self._answers: dict[str, float] = {}  # first "done" per request (the one paid for) -> its cost
        self._paid = Paid()  # the billed costs of accepted ("ok") answers: count, sum, max
        self._sent: set[str] = set()
        self._sent_at: dict[str, float] = {}  # wall-clock time of the last "sent" line per request
        self._lock = threading.Lock()
        self._journal: Journal | None = None
        self._pending: list[tuple[dict, asyncio.Future]] = []  # group commit (awrite)
        self._flushing = False
        self._load()

    def _load(self) -> None:
        """Learn done / sent / spent from the journal's index (columns, not records: 1M answers fit)."""
        ix = index(self.path)
        if ix.is_empty():
            return
        sent = ix.filter(pl.col("event") == "sent").unique("request_id", keep="last")
        last = ix.filter(pl.col("event").is_in(["sent", *_ENDS])).unique("request_id", keep="last")
        ended = last.filter((pl.col("event") != "sent") & ~pl.col("in_flight"))  # null (no field): still in flight
        self._sent = set(sent["request_id"].to_list()) - set(ended["request_id"].to_list())
        self._sent_at = dict(zip(sent["request_id"].to_list(), sent["at"].fill_null(0.0).to_list()))
        done = ix.filter(pl.col("event") == "done").unique("request_id", keep="first", maintain_order=True)
        self._answers = dict(zip(done["request_id"].to_list(), done["cost_usd"].fill_null(0.0).to_list()))
        ok = done.filter((pl.col("status") == "ok") & (pl.col("cost_usd") > 0))["cost_usd"]
        self._paid = Paid(ok.len(), float(ok.sum() or 0.0), float(ok.max() or 0.0))
        if self._recorded:
            done = done.filter(~pl.col("request_id").is_in(pl.Series(list(self._recorded), dtype=pl.String).implode()))
        self._unrecorded_usd = float(done["cost_usd"].fill_null(0.0).sum())

    def _observe(self, rec: dict) -> None:
        ev = rec.get("event")
        if ev == "sent":
            self._sent.add(rec["request_id"])
            self._sent_at[rec["request_id"]] = float(rec.get("at") or 0.0)
        elif ev in _ENDS and rec.get("in_flight") is False:  # refused by the server: nothing runs there
            self._sent.discard(rec["request_id"])
        elif ev == "done" and rec["request_id"] not in self._answers:
            self._answers[rec["request_id"]] = rec.get("cost_usd") or 0.0
            if rec.get("status") == "ok" and rec.get("cost_usd"):
                self._paid = self._paid.plus(rec["cost_usd"])
            if rec["request_id"] not in self._recorded:
                self._unrecorded_usd += rec.get("cost_usd") or 0.0

    # ------------------------------------------------------------------ the questions
    @property
    def done(self) -> set[str]:
        """Requests answered: in the table, or journalled (by an earlier process or this one)."""
        with self._lock:
            return self._recorded | self._answers.keys()

    def in_flight(self) -> set[str]:
        """Requests sent but never answered; read before sending, these were in flight when the last
        process died."""
        with self._lock:
            return self._sent - self._answers.keys()

    def sent_at(self, rid: str) -> float | None:
        """When the request last left (wall clock, from its "sent" line), or None if it never did."""
        with self._lock:
            return self._sent_at.get(rid)

    @property
    def spent_usd(self) -> float:
        """Everything paid on this run: the table's cost plus journalled answers not folded into it yet."""
        return self._recorded_usd + self._unrecorded_usd

    def paid(self) -> "Paid":
        """What accepted answers were billed so far (journalled: this process's and earlier ones'), kept as
        lines are written: what a cost estimate calibrates on, asked before every request without re-reading
        the journal (re-reading it per item cost 151 ms a call on a 20k-line journal)."""
        with self._lock:
            return self._paid

    def answers(self) -> list[dict]:
        """The first ``done`` record of every answered request, in journal order. Read from the journal on
        each call (the ledger keeps ids and costs, not records): for jobs of thousands of answers; the
        annotation fold streams instead (:mod:`vprefer.annotate.fold`)."""
        with self._lock:
            seen: set[str] = set()
            out = []
            for rec in read(self.path):
                if rec.get("event") == "done" and rec["request_id"] not in seen:
                    seen.add(rec["request_id"])
                    out.append(rec)
            return out

    def unrecorded(self) -> list[dict]:
        """Answers the results table does not hold yet: what a fold must add."""
        with self._lock:
            if not self._answers.keys() - self._recorded:
                return []
        return [r for r in self.answers() if r["request_id"] not in self._recorded]

    def unrecorded_ids(self) -> set[str]:
        with self._lock:
            return self._answers.keys() - self._recorded

    def recorded_ids(self) -> set[str]:
        with self._lock:
            return set(self._recorded)

    def mark_recorded(self, records: Iterable[dict | str]) -> None:
        """The job folded these answers (records or request ids) into its table (cost moves from journal to
        table, the total stays)."""
        with self._lock:
            for r in records:
                rid = r if isinstance(r, str) else r["request_id"]
                if rid not in self._recorded:
                    self._recorded.add(rid)
                    if rid in self._answers:
                        paid = self._answers[rid]
                        self._unrecorded_usd -= paid
                    else:
                        paid = 0.0 if isinstance(r, str) else r.get("cost_usd") or 0.0
                    self._recorded_usd += paid

    # ------------------------------------------------------------------ writing
    def write(self, record: dict) -> None:
        """Append durably to the journal (opened on first use: a dry run creates no file), then count it."""
        self._open().write(record)
        with self._lock:
            self._observe(record)

    def _open(self) -> Journal:
        with self._lock:
            if self._journal is None:
                self._journal = Journal(self.run, self.name, kind=self.kind)
            return self._journal

    def write_many(self, records: list[dict]) -> None:
        for r in records:
            if r.get("event") == "sent":
                r.setdefault("at", time.time())  # so a resume knows whether the request may still be running
        self._open().write_many(records)
        with self._lock:
            for r in records:
                self._observe(r)

    async def awrite(self, record: dict) -> None:
        """:meth:`write` off the event loop (fsync must not stall the other requests), as a group commit:
        records awaited while a flush is under way go out together in the next one (one ``write``, one
        fsync). Each caller still returns only once its record is durable."""
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((record, fut))
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().create_task(self._flush())
        await fut

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    await asyncio.to_thread(self.write_many, [r for r, _ in batch])
                except BaseException as e:  # noqa: BLE001 - handed to every waiter of this batch
                    for _, f in batch:
                        if not f.done():
                            f.cancel() if isinstance(e, asyncio.CancelledError) else f.set_exception(e)
                    continue
                for _, f in batch:
                    if not f.done():
                        f.set_result(None)
        finally:
            self._flushing = False

    @contextmanager
    def deferred_sync(self):
        """Writes inside skip their own fsync; one fsync at the end. Only for answers whose source stays on
        disk (a results file being folded): a crash inside loses lines that the next fold reads again."""
        j = self._open()
        j.durable = False
        try:
            yield self
        finally:
            j.durable = True
            os.fsync(j._fd)

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    def __enter__(self) -> "Ledger":
        """Open the journal for writing now, as a run starts (a dry run never enters)."""
        self._open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

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
import threading
from typing import Iterable

from vprefer.llm.journal import Journal, read
from vprefer.store import Run


class Ledger:
    def __init__(self, run: Run, name: str, *, kind: str = "annotate", recorded: Iterable[str] = (),
                 recorded_usd: float = 0.0):
        """``recorded``: request ids already in the job's results table, ``recorded_usd`` what they cost."""
        self.run, self.name, self.kind = run, name, kind
        self.path = Journal.path_for(run, name, kind)
        self._recorded = set(recorded)
        self._recorded_usd = recorded_usd
        self._unrecorded_usd = 0.0  # kept as a running sum: the send loop asks before every request
        self._answers: dict[str, dict] = {}  # first "done" per request: the one that was paid for
        self._sent: set[str] = set()
        self._lock = threading.Lock()
        self._journal: Journal | None = None
        for rec in read(self.path):
            self._observe(rec)

    def _observe(self, rec: dict) -> None:
        ev = rec.get("event")
        if ev == "sent":
            self._sent.add(rec["request_id"])
        elif ev == "done" and rec["request_id"] not in self._answers:
            self._answers[rec["request_id"]] = rec
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

    @property
    def spent_usd(self) -> float:
        """Everything paid on this run: the table's cost plus journalled answers not folded into it yet."""
        return self._recorded_usd + self._unrecorded_usd

    def answers(self) -> list[dict]:
        """The first ``done`` record of every answered request, in journal order."""
        with self._lock:
            return list(self._answers.values())

    def unrecorded(self) -> list[dict]:
        """Answers the results table does not hold yet: what a fold must add."""
        with self._lock:
            return [r for rid, r in self._answers.items() if rid not in self._recorded]

    def mark_recorded(self, records: Iterable[dict]) -> None:
        """The job folded these answers into its table (cost moves from journal to table, the total stays)."""
        with self._lock:
            for r in records:
                rid = r["request_id"]
                if rid not in self._recorded:
                    self._recorded.add(rid)
                    paid = self._answers.get(rid, r).get("cost_usd") or 0.0
                    if rid in self._answers:
                        self._unrecorded_usd -= paid
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

    async def awrite(self, record: dict) -> None:
        """:meth:`write` off the event loop: fsync must not stall the other requests."""
        await asyncio.to_thread(self.write, record)

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

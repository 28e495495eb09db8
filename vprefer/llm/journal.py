"""The journal: every answer is made durable the moment it arrives, so nothing paid for is lost.

One JSONL file per job and annotator under ``RUN/journal/``
(``<kind>-<name>.jsonl``; kinds today: ``annotate``, ``upsample``). Each line
is written with a single ``write`` on an ``O_APPEND`` descriptor and fsync'd
before the request counts as done, so ``kill -9`` at any point loses at most a
line that was never acknowledged (a torn last line is ignored on read). Every
line passes through the secret redactor first: keys never reach the disk.
Lines the client layer relies on (jobs add their own fields and events):

* ``{"event": "sent", "request_id": ..., "at": <unix time>}`` — written before a
  request leaves; with stored completions, a request sent but never answered (in
  flight at a crash) is looked up on the server instead of being paid again, for
  up to the client's timeout after ``at`` (it may still be running there).
* ``{"event": "done", "request_id": ..., "status": ..., "cost_usd": ...}`` —
  the first ``done`` for a request is the one that was paid for.

Lines are encoded with orjson (a fast codec: at concurrency 64 the client's CPU
per request is the throughput limit). :meth:`Journal.write_many` appends several
lines with one ``write`` and one fsync: the ledger's group commit, which keeps
"durable before acknowledged" while paying one fsync per batch of answers.

Reading it back (done / in flight / spent) is :class:`vprefer.llm.Ledger`'s job.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Iterable, Iterator

import orjson

from vprefer.secrets import redact
from vprefer.store import Run, fsync_dir


class Journal:
    def __init__(self, run: Run, name: str, *, kind: str = "annotate", durable: bool = True):
        self.path = self.path_for(run, name, kind)
        self.durable = durable
        self._lock = threading.Lock()
        new = not self.path.exists()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if new:
            fsync_dir(self.path.parent)

    @staticmethod
    def path_for(run: Run, name: str, kind: str = "annotate") -> Path:
        return run.subdir("journal") / f"{kind}-{name}.jsonl"

    def write(self, record: dict) -> None:
        self.write_many((record,))

    def write_many(self, records: Iterable[dict]) -> None:
        data = b"".join(orjson.dumps(redact(r)) + b"\n" for r in records)
        with self._lock:
            view = memoryview(data)
            while view:  # os.write may be partial for large buffers
                view = view[os.write(self._fd, view):]
            if self.durable:
                os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read(path: Path) -> Iterator[dict]:
    """Records in order; a torn or garbled line (a crash mid-write) is skipped."""
    if not path.exists():
        return
    with open(path, "rb") as f:
        for line in f:
            try:
                yield orjson.loads(line)
            except orjson.JSONDecodeError:  # also covers invalid UTF-8
                continue

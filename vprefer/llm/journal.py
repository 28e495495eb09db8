"""The journal: every answer is made durable the moment it arrives, so nothing paid for is lost.

One JSONL file per job and annotator under ``RUN/journal/``
(``<kind>-<name>.jsonl``; kinds today: ``annotate``, ``upsample``). Each line
is written with a single ``write`` on an ``O_APPEND`` descriptor and fsync'd
before the request counts as done, so ``kill -9`` at any point loses at most a
line that was never acknowledged (a torn last line is ignored on read). Every
line passes through the secret redactor first: keys never reach the disk.
Lines the client layer relies on (jobs add their own fields and events):

* ``{"event": "sent", "request_id": ...}`` — written before a request leaves;
  with stored completions, a request sent but never answered (in flight at a
  crash) is looked up on the server instead of being paid again.
* ``{"event": "done", "request_id": ..., "status": ..., "cost_usd": ...}`` —
  the first ``done`` for a request is the one that was paid for.

Reading it back (done / in flight / spent) is :class:`vprefer.llm.Ledger`'s job.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Iterator

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
        line = (json.dumps(redact(record), ensure_ascii=False) + "\n").encode()
        with self._lock:
            os.write(self._fd, line)
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
                yield json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue

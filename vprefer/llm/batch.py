"""The OpenAI Batch API (``/v1/batches``; the same JSONL runs under vLLM's ``run_batch``).

Crash safety, step by step. The state file ``RUN/state/batches-<job>.json``
is rewritten atomically after every step, so a ``kill -9`` anywhere leaves one
of these situations, each resumed without paying twice:

1. chunk written, not uploaded -> upload it (uploads are free);
2. uploaded, batch id not recorded -> find the batch by its ``metadata``
   (``vprefer_chunk``) in ``batches.list`` before creating one: never two batches
   for one chunk;
3. batch recorded -> poll it; when it ends, download the output and the error
   file, hand every answer to the job (joined on ``custom_id``; output order is
   not guaranteed), which journals it, then mark the batch collected.
   Collecting twice only re-reads the same downloaded files, and the journal
   keeps the first answer.

Lines in the error file were not answered (and not billed): they are counted as
``error`` and stay pending, so the job submits them again.

Offline batches (vLLM's ``vllm run-batch``, which reads and writes the same JSONL
with no server): :meth:`BatchRunner.write_offline` writes the chunk files and
records them in the same state file (status ``offline``: a rerun does not write
the same requests again); :meth:`BatchRunner.fold_files` reads the output files
back through the same answer path, joined on ``custom_id``. A chunk with at least
one line in the folded files is then closed; its missing and failed lines are
pending again, so the next offline run writes them into a new chunk.

A job subclasses :class:`BatchRunner` and says what a request's body is
(:meth:`~BatchRunner.body`) and what to make of an answer
(:meth:`~BatchRunner.answer`); items are anything with a ``request_id``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Generic, Protocol, TypeVar

from vprefer.errors import InputError
from vprefer.ids import short_hash
from vprefer.llm.client import sync_client
from vprefer.llm.report import Outcome, Report
from vprefer.llm.settings import ClientSettings
from vprefer.store import Run, atomic_write_bytes, atomic_write_json

TERMINAL = ("completed", "failed", "expired", "cancelled")


class Item(Protocol):
    request_id: str


T = TypeVar("T", bound=Item)


class BatchState:
    def __init__(self, run: Run, settings: ClientSettings, name: str | None = None):
        """``name``: the job's state name (default: the annotator's slug, annotation's file)."""
        self.dir = run.subdir("state")
        self.path = self.dir / f"batches-{name or settings.slug}.json"
        self.entries: list[dict] = json.loads(self.path.read_text()) if self.path.exists() else []

    def save(self) -> None:
        atomic_write_json(self.path, self.entries)

    def covered(self) -> set[str]:
        """Request ids inside batches that may still deliver (not collected, not dead)."""
        out: set[str] = set()
        for e in self.entries:
            if not e.get("collected"):
                out.update(e["request_ids"])
        return out


class BatchRunner(Generic[T]):
    def __init__(self, run: Run, settings: ClientSettings, *, report: Report | None = None,
                 on_update: Callable[[Report], None] | None = None, state_name: str | None = None):
        self.run, self.settings = run, settings
        self.state = BatchState(run, settings, state_name)
        self._client = None
        self.report = report if report is not None else Report()
        self.on_update = on_update or (lambda r: None)

    @property
    def client(self):
        """The Batch API client, made on first use: offline batches never need a server or a key."""
        if self._client is None:
            self._client = sync_client(self.settings)
        return self._client

    # ----------------------------------------------------------------- the job's part
    def body(self, item: T) -> dict:
        """The ``/v1/chat/completions`` body for one item."""
        raise NotImplementedError

    def answer(self, item: T, body: dict) -> Outcome | None:
        """Journal one answered line (``body`` is the completion) and say what it came to; None when this
        answer was already counted (the same output file collected again after a crash)."""
        raise NotImplementedError

    # ----------------------------------------------------------------- submit
    def write_chunks(self, items: list[T], folder: Path) -> list[tuple[Path, list[str]]]:
        """Split requests into JSONL files within the Batch API limits (lines and bytes)."""
        chunks, lines, ids, size = [], [], [], 0
        lim = self.settings.batch

        def flush() -> None:
            nonlocal lines, ids, size
            if lines:
                # salted with the submissions so far: the same requests asked again (error-file lines,
                # re-asks) get a new chunk, never an earlier batch found again by its metadata
                name = f"chunk-{short_hash(ids, len(self.state.entries), n=16)}.jsonl"
                atomic_write_bytes(folder / name, b"".join(lines))
                chunks.append((folder / name, ids))
            lines, ids, size = [], [], 0

        for r in items:
            line = (json.dumps({"custom_id": r.request_id, "method": "POST", "url": "/v1/chat/completions",
                                "body": self.body(r)}) + "\n").encode()
            if len(line) > lim.max_bytes_per_file:
                raise InputError(f"request {r.request_id} alone is {len(line)} bytes, over the batch file limit; "
                                 "lower image_max_side or image_detail")
            if len(lines) >= lim.max_requests_per_file or size + len(line) > lim.max_bytes_per_file:
                flush()
            lines.append(line)
            ids.append(r.request_id)
            size += len(line)
        flush()
        return chunks

    def submit(self, items: list[T]) -> None:
        covered = self.state.covered()
        new = [r for r in items if r.request_id not in covered]
        if new:
            for path, ids in self.write_chunks(new, self.state.dir):
                self.state.entries.append({"chunk": path.name, "request_ids": ids, "input_file_id": None,
                                           "batch_id": None, "status": "prepared", "collected": False})
                self.state.save()
                self.report.submitted += len(ids)
        for e in self.state.entries:
            if not e.get("collected"):
                self._advance(e)

    def _advance(self, e: dict) -> None:
        if e["status"] == "offline":  # waiting for `vllm run-batch` and a fold, not for a server
            return
        if e["input_file_id"] is None:
            with open(self.state.dir / e["chunk"], "rb") as f:
                e["input_file_id"] = self.client.files.create(file=(e["chunk"], f), purpose="batch").id
            self.state.save()
        if e["batch_id"] is None:
            found = self._find_batch(e["chunk"])
            if found is None:
                found = self.client.batches.create(
                    input_file_id=e["input_file_id"], endpoint="/v1/chat/completions",
                    completion_window=self.settings.batch.completion_window,
                    metadata={"vprefer_chunk": e["chunk"], "vprefer_annotator": self.settings.annotator_id})
            e["batch_id"], e["status"] = found.id, found.status
            self.state.save()

    def _find_batch(self, chunk: str):
        for b in self.client.batches.list(limit=100):
            if (b.metadata or {}).get("vprefer_chunk") == chunk and b.status not in ("failed", "cancelled", "expired"):
                return b
        return None

    # ----------------------------------------------------------------- poll / collect
    def poll(self, by_id: dict[str, T]) -> bool:
        """One pass over open batches; collects finished ones. True when none is left open."""
        open_ = 0
        for e in self.state.entries:
            if e.get("collected") or e["batch_id"] is None:
                continue
            b = self.client.batches.retrieve(e["batch_id"])
            if b.status != e["status"]:
                e["status"] = b.status
                self.state.save()
            if b.status in TERMINAL:
                self._collect(e, b, by_id)
            else:
                open_ += 1
        self.report.open_batches = open_
        self.on_update(self.report)
        return open_ == 0

    def _download(self, file_id: str | None, name: str) -> list[dict]:
        if not file_id:
            return []
        path = self.state.dir / name
        if not path.exists():
            atomic_write_bytes(path, self.client.files.content(file_id).read())
        return [json.loads(x) for x in path.read_bytes().splitlines() if x.strip()]

    def _collect(self, e: dict, b, by_id: dict[str, T]) -> None:
        outputs = self._download(b.output_file_id, f"{b.id}-output.jsonl")
        errors = self._download(b.error_file_id, f"{b.id}-errors.jsonl")
        self._answer_lines(outputs, by_id)
        self.report.error += len(errors)
        e["collected"] = True
        e["request_counts"] = b.request_counts.model_dump() if b.request_counts else None
        self.state.save()
        self.report.collected += 1

    def _answer_lines(self, lines: list[dict], by_id: dict[str, T], done: set[str] | None = None) -> dict:
        """Hand each answered output line to the job; ``done`` (ids already answered) are skipped."""
        n = {"answered": 0, "failed": 0, "already": 0, "unknown": 0}
        for line in lines:
            cid = line.get("custom_id")
            item = by_id.get(cid)
            if item is None:
                n["unknown"] += 1
                continue
            if done is not None and cid in done:
                n["already"] += 1
                continue
            resp = line.get("response") or {}
            if resp.get("status_code") == 200 and not line.get("error") and isinstance(resp.get("body"), dict):
                outcome = self.answer(item, resp["body"])
                if outcome is not None:
                    self.report.count(outcome)
                n["answered"] += 1
                if done is not None:
                    done.add(cid)
            else:
                self.report.error += 1  # unanswered: stays pending for the next submission
                n["failed"] += 1
        return n

    # ----------------------------------------------------------------- offline (vllm run-batch)
    def write_offline(self, items: list[T], folder: Path) -> list[Path]:
        """Chunk files for ``vllm run-batch``, for requests not already in a chunk awaiting its fold."""
        covered = self.state.covered()
        out = []
        for path, ids in self.write_chunks([r for r in items if r.request_id not in covered], folder):
            self.state.entries.append({"chunk": path.name, "path": str(path), "request_ids": ids,
                                       "input_file_id": None, "batch_id": None, "status": "offline",
                                       "collected": False})
            self.state.save()
            self.report.submitted += len(ids)
            out.append(path)
        return out

    def offline_chunks(self) -> list[dict]:
        return [e for e in self.state.entries if e["status"] == "offline" and not e.get("collected")]

    def fold_files(self, paths: list[Path], by_id: dict[str, T], done: set[str]) -> dict:
        """Answers from output files of ``vllm run-batch`` (any order, any split into files); ids in ``done``
        are skipped, so folding the same files twice journals nothing new."""
        lines: list[dict] = []
        for p in paths:
            try:
                raw = Path(p).read_bytes()
            except OSError as ex:
                raise InputError(f"{p}: cannot read results file ({ex.strerror})") from None
            for k, x in enumerate(raw.splitlines(), 1):
                if not x.strip():
                    continue
                try:
                    rec = json.loads(x)
                except ValueError:
                    raise InputError(f"{p}:{k}: not a JSON line; expected `vllm run-batch` output") from None
                if not isinstance(rec, dict) or "custom_id" not in rec:
                    raise InputError(f"{p}:{k}: no custom_id; expected `vllm run-batch` output lines") from None
                lines.append(rec)
        n = self._answer_lines(lines, by_id, done)
        n["seen"] = {ln["custom_id"] for ln in lines}
        return n

    def close_offline(self, seen: set[str]) -> int:
        """After the fold's answers are durable: close the chunks these lines came from (their missing and
        failed lines are pending again). Returns how many were closed."""
        closed = 0
        for e in self.offline_chunks():
            if seen.intersection(e["request_ids"]):
                e["collected"], e["status"] = True, "folded"
                closed += 1
        self.state.save()
        return closed

    def wait(self, by_id: dict[str, T], *, poll_s: float | None = None, timeout_s: float | None = None) -> bool:
        t0 = time.monotonic()
        while not self.poll(by_id):
            if timeout_s is not None and time.monotonic() - t0 > timeout_s:
                return False
            time.sleep(poll_s if poll_s is not None else self.settings.batch.poll_interval_s)
        return True

    def status_rows(self) -> list[dict]:
        rows = []
        for e in self.state.entries:
            live = None
            if e["batch_id"] and not e.get("collected"):
                b = self.client.batches.retrieve(e["batch_id"])
                live = b.request_counts.model_dump() if b.request_counts else None
                e["status"] = b.status
            rows.append({"batch_id": e["batch_id"], "chunk": e["chunk"], "requests": len(e["request_ids"]),
                         "status": e["status"], "collected": e.get("collected", False),
                         "counts": live or e.get("request_counts")})
        return rows

"""Where a run's Batch API jobs stand, asked without starting an annotation.

Status needs only the batches recorded in ``RUN/state/`` and the server: no
rubric, no journal, no annotation run id. So it uses the generic
:class:`vprefer.llm.BatchRunner` rather than the judge's runner.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vprefer.annotate.preset import AnnotatorPreset
from vprefer.llm import BatchRunner
from vprefer.store import Result, Run, as_run


@dataclass
class BatchStatus(Result):
    batch_id: str | None  # None until the batch was created on the server
    chunk: str
    requests: int
    status: str
    collected: bool
    counts: dict | None  # the server's request counts (completed, failed, total) when known


def batch_status(run: Run | str | Path, preset: AnnotatorPreset | str) -> list[BatchStatus]:
    """One row per submitted chunk of this annotator's batches; live counts for batches not yet collected."""
    run = as_run(run)
    if isinstance(preset, str):
        preset = AnnotatorPreset.load(preset)
    return [BatchStatus(**r) for r in BatchRunner(run, preset).status_rows()]


def recorded_batches(run: Run | str | Path) -> list[tuple[str, BatchStatus]]:
    """Every batch any job of the run submitted (annotation, captions, upsampling), as ``RUN/state`` last
    recorded it: (job, status) rows, no server asked (no key needed). The job is the state file's name:
    an annotator's slug, or ``caption-<preset>`` / ``upsample-<preset>``."""
    run = as_run(run)
    rows = []
    for path in sorted((run.path / "state").glob("batches-*.json")):
        job = path.stem.removeprefix("batches-")
        for e in json.loads(path.read_text()):
            rows.append((job, BatchStatus(e.get("batch_id"), e["chunk"], len(e.get("request_ids", [])),
                                          e.get("status", "?"), bool(e.get("collected")), e.get("request_counts"))))
    return rows


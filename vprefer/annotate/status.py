"""Where a run's Batch API jobs stand, asked without starting an annotation.

Status needs only the batches recorded in ``RUN/state/`` and the server: no
rubric, no journal, no annotation run id. So it uses the generic
:class:`vprefer.llm.BatchRunner` rather than the judge's runner.
"""

from __future__ import annotations

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

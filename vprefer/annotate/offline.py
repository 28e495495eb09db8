"""Offline annotation with vLLM: chunk files for ``vllm run-batch`` out, its output files folded back in.

For a local model on a GPU box with no server running (or no network between
the run directory and the GPU), ``annotate --mode offline`` writes
``RUN/offline/<annotator>/chunk-*.jsonl`` in the OpenAI Batch API format that
``vllm run-batch -i CHUNK -o OUT --model MODEL`` reads; ``annotate --results
OUT...`` folds the outputs back. Both reuse the Batch API path
(:class:`vprefer.annotate.batch.BatchRunner`): the same request bodies, the same
chunk limits, the same state file recording which requests are in which chunk
(so a rerun writes only requests in no chunk yet), and the same answer parsing
(rubric, re-asks of invalid answers at the next offline round, batch price).

A fold joins on ``custom_id``, skips requests already answered (a second fold
of the same files journals nothing) and then closes every chunk it saw lines
of: the chunk's missing or failed lines are pending again, and the next
``--mode offline`` writes them into a new chunk.
"""

from __future__ import annotations

from pathlib import Path

from vprefer.annotate.batch import BatchRunner
from vprefer.annotate.preset import AnnotatorPreset
from vprefer.annotate.records import fold
from vprefer.annotate.requests import JudgeRequest
from vprefer.annotate.rubric import Rubric
from vprefer.errors import InputError
from vprefer.llm import Ledger, Report
from vprefer.store import Run


def chunk_folder(run: Run, preset: AnnotatorPreset) -> Path:
    folder = run.subdir("offline") / preset.slug
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_offline(run: Run, preset: AnnotatorPreset, rubric: Rubric, ledger: Ledger, todo: list[JudgeRequest],
                  uris: dict[str, str], *, run_id: str, report: Report) -> tuple[list[Path], list[Path]]:
    """(new chunk files, chunk files still awaiting a fold): the second so a user who lost track sees them."""
    runner = BatchRunner(run, preset, rubric, ledger, run_id=run_id, report=report)
    runner.uris = uris
    new = runner.write_offline(todo, chunk_folder(run, preset))
    waiting = [Path(e["path"]) for e in runner.offline_chunks() if Path(e["path"]) not in new]
    return new, waiting


def fold_results(run: Run, preset: AnnotatorPreset, rubric: Rubric, ledger: Ledger, reqs: list[JudgeRequest],
                 paths: list[Path], *, run_id: str, report: Report) -> dict:
    """Fold ``vllm run-batch`` output files into the journal and ``annotations``; returns the line counts."""
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise InputError(f"results file(s) not found: {', '.join(missing)}")
    runner = BatchRunner(run, preset, rubric, ledger, run_id=run_id, report=report)
    done = set(ledger.done)
    # the results files stay on disk, so their answers are fsync'd once at the end, not per line
    with ledger.deferred_sync():
        n = runner.fold_files(list(paths), {r.request_id: r for r in reqs}, done)
    n["chunks_closed"] = runner.close_offline(n.pop("seen"))
    n["recorded"] = fold(run, ledger, list(rubric.aspects))
    return n

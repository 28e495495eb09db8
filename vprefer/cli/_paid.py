"""The one option group of every paid LLM command (annotate, caption, prompts upsample).

They run on the same engine (:func:`vprefer.llm.run_job`), so ``--mode``, ``--max-cost``,
``--limit``, ``--dry-run`` and ``--results`` mean the same thing everywhere and are
declared once here, shown under one heading in ``--help``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vprefer.cli._app import out

PANEL = "Paid requests (the same for annotate, caption, prompts upsample)"


def mode() -> Optional[str]:
    return typer.Option(None, "--mode", rich_help_panel=PANEL,
                        help="online | batch (OpenAI Batch API: half price, within a day) | offline (write chunk "
                             "files for `vllm run-batch`; fold its outputs with --results). Default: the preset's.")


def max_cost() -> Optional[float]:
    return typer.Option(None, "--max-cost", rich_help_panel=PANEL,
                        help="Cap (USD) on this job's total spend on this run (answers so far + in flight + next); "
                             "stops cleanly before passing it; the same command with the same cap never spends "
                             "more on a rerun.")


def limit(what: str) -> Optional[int]:
    return typer.Option(None, "--limit", rich_help_panel=PANEL, help=f"Only the first N {what}.")


def dry_run() -> bool:
    return typer.Option(False, "--dry-run", rich_help_panel=PANEL,
                        help="Show requests (how many), their estimated tokens and cost; send nothing.")


def results() -> Optional[list[Path]]:
    return typer.Option(None, "--results", rich_help_panel=PANEL,
                        help="Fold `vllm run-batch` output file(s) of offline chunks (repeat for several); sends "
                             "nothing.")


def print_chunks(res, model: str, rerun: str) -> None:
    """What to do with offline chunk files: run each through vLLM, then fold the outputs back with ``rerun``."""
    if not (res.chunk_files or res.waiting_files):
        return
    out.print(f"{len(res.chunk_files)} new chunk file(s) for `vllm run-batch`"
              + (f", {len(res.waiting_files)} written before and not folded yet" if res.waiting_files else "")
              + "; run each, then fold the outputs back:")
    for c in res.chunk_files + res.waiting_files:
        out.print(f"  vllm run-batch -i {c} -o {c.removesuffix('.jsonl')}.out.jsonl --model {model}")
    out.print(f"  {rerun} --results <out.jsonl> [--results ...]")

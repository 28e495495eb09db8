"""Annotation answers as journal records, and journal records as ``annotations`` rows.

The journal (``RUN/journal/annotate-<annotator>.jsonl``, written through
:class:`vprefer.llm.Ledger`) is the durable copy; the table is what every later
stage reads. :func:`fold` copies answers the table lacks into it, skipping
request ids already there, so folding twice never duplicates a row.
"""

from __future__ import annotations

import polars as pl

from vprefer.annotate.requests import JudgeRequest
from vprefer.annotate.rubric import Judgement
from vprefer.llm import Ledger
from vprefer.store import Run


def done_record(req: JudgeRequest, *, annotator: str, rubric: str, scale_max: int, run_id: str, status: str,
                judgement: Judgement | None, raw: str | None, usage: tuple[int, int], cost_usd: float,
                latency_s: float, attempts: int, error: str | None = None) -> dict:
    return {
        "event": "done", "request_id": req.request_id, "status": status, "run_id": run_id,
        "annotator": annotator, "rubric": rubric, "scale_max": scale_max, "prompt_id": req.prompt_id,
        "shown": list(req.shown), "permutation": req.permutation,
        "scores": None if judgement is None else {str(p): s for p, s in judgement.scores.items()},
        "rationales": None if judgement is None else {str(p): s for p, s in judgement.rationales.items()},
        "ranks": None if judgement is None else {a: {str(p): k for p, k in r.items()}
                                                 for a, r in judgement.ranks.items()},
        "raw": raw if status != "ok" else None, "input_tokens": usage[0], "output_tokens": usage[1],
        "cost_usd": cost_usd, "latency_s": latency_s, "attempts": attempts, "error": error,
    }


def rows_from_record(rec: dict, aspects: list[str]) -> list[dict]:
    """One annotations row per (shown image, aspect); request totals ride on the first row only,
    so summing tokens/cost over rows gives the true totals."""
    rows, first = [], True
    for pos, iid in enumerate(rec["shown"], 1):
        for a in aspects:
            ok = rec["status"] == "ok"
            rank = (rec.get("ranks") or {}).get(a, {}).get(str(pos)) if ok else None
            rows.append({
                "run_id": rec["run_id"], "request_id": rec["request_id"], "annotator": rec["annotator"],
                "rubric": rec["rubric"], "prompt_id": rec["prompt_id"], "image_id": iid, "shown_position": pos,
                "permutation": rec["permutation"], "aspect": a,
                "score": float(rec["scores"][str(pos)][a]) if ok else None, "scale_max": rec["scale_max"],
                "rationale": rec["rationales"][str(pos)][a] if ok else None, "rank": rank,
                "status": rec["status"], "latency_s": rec["latency_s"] if first else 0.0,
                "input_tokens": rec["input_tokens"] if first else 0,
                "output_tokens": rec["output_tokens"] if first else 0,
                "cost_usd": rec["cost_usd"] if first else 0.0,
                "raw": (rec.get("raw") or rec.get("error")) if not ok else None,
            })
            first = False
    return rows


def recorded(run: Run, annotator: str) -> tuple[list[str], float]:
    """The request ids ``annotations`` already holds for this annotator and what they cost (one scan of it)."""
    if not run.has("annotations"):
        return [], 0.0
    per_req = (run.scan("annotations").filter(pl.col("annotator") == annotator)
               .group_by("request_id").agg(pl.col("cost_usd").sum()).collect())
    return per_req["request_id"].to_list(), float(per_req["cost_usd"].sum() or 0.0)


def ledger_for(run: Run, slug: str, annotator: str) -> Ledger:
    """The annotator's ledger, told what the ``annotations`` table already holds."""
    ids, usd = recorded(run, annotator)
    return Ledger(run, slug, recorded=ids, recorded_usd=usd)


COMPACT_AFTER_PARTS = 32  # readers scan base + parts; merging 16M rows on every fold would cost more than it saves


def fold(run: Run, ledger: Ledger, aspects: list[str]) -> int:
    """Append journalled answers not yet in ``annotations``; returns the number of requests added.

    Streams the journal in chunks (:mod:`vprefer.annotate.fold`): each chunk is one appended part, marked
    recorded once it is durable, so a crash mid-fold leaves a table the next fold completes."""
    from vprefer.annotate.fold import unrecorded_rows  # it imports rows_from_record from here

    if not ledger.unrecorded_ids():
        return 0
    added = 0
    for rows, rids in unrecorded_rows(ledger.path, aspects, ledger.recorded_ids(), nmax=_largest_set(run)):
        run.append("annotations", rows)
        ledger.mark_recorded(rids)
        added += len(rids)
    if added and run.part_count("annotations") > COMPACT_AFTER_PARTS:
        run.compact("annotations", dedupe=False)  # a fold never appends a request twice: nothing to dedupe
    return added


def _largest_set(run: Run) -> int:
    """Images in the run's largest set: the positions an answer can have (more is caught and read slowly)."""
    if not run.has("images"):
        return 8
    return max(1, run.scan("images").group_by("prompt_id").len().select(pl.col("len").max()).collect().item() or 1)

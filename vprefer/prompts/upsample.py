"""LLM prompt upsampling (DALL-E 3 descriptive captions; TIPO-style tag expansion).

A job on the client layer (:class:`UpsampleJob`, run by ``vprefer.llm.run_job``): the
same preset files, ``openai`` client, retry policy, ``--max-cost`` rule, online / Batch
API / offline modes, and fsync'd journal (``RUN/journal/upsample-<annotator>-<style>.jsonl``:
``sent`` before a request leaves, so a kill never pays twice; folded on every start, so
a crash loses nothing and a rerun asks only for what is missing). Each variant becomes a
new prompt row (source ``upsample:<style>``) whose meta links to the original, which is
kept. A local rewriter (``local:DIR``) writes the same rows and journal with no server.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from vprefer import ids, schema
from vprefer.errors import InputError
from vprefer.llm import ChatJob, ClientSettings, Ledger, Report, cost, run_job
from vprefer.store import Run

STYLES = {
    "descriptive": ("You rewrite short text-to-image prompts into one detailed, descriptive caption (40-80 words) "
                    "that keeps every element of the original and adds concrete detail: subject appearance, setting, "
                    "composition, lighting, colours, style. Output only the caption."),
    "tags": ("You expand short text-to-image prompts into a comma-separated list of 15-30 descriptive tags "
             "(subject, attributes, setting, style, lighting, quality), keeping every element of the original. "
             "Output only the tags."),
}
OUTPUT_TOKENS = {"descriptive": 85, "tags": 75}  # what the instructions ask for (40-80 words; 15-30 tags)


@dataclass(frozen=True)
class Item:
    request_id: str
    parent: str  # the original prompt's id
    short: str  # the original prompt


def _clean(text: str | None) -> str:
    t = (text or "").strip().strip('"').strip()
    if not t:
        raise ValueError("empty rewrite")
    return t.splitlines()[0].strip() if len(t.splitlines()) > 3 else " ".join(t.split())


def _originals(run: Run, limit: int | None) -> pl.DataFrame:
    prompts = run.read("prompts").filter(~pl.col("source").str.starts_with("upsample:"))
    return prompts.head(limit) if limit else prompts


def _fold(run: Run, ledger: Ledger, style: str, annotator: str) -> int:
    """Add journalled rewrites the ``prompts`` table lacks (matched by the rewrite's own prompt id)."""
    have = set(run.read("prompts")["prompt_id"].to_list()) if run.has("prompts") else set()
    rows = []
    for rec in ledger.answers():
        if rec["status"] == "ok":
            pid = ids.prompt_id(rec["text"])
            if pid not in have:
                have.add(pid)
                rows.append({"prompt_id": pid, "prompt": rec["text"], "source": f"upsample:{style}",
                             "meta": json.dumps({"parent": rec["parent"], "style": style, "annotator": annotator,
                                                 "request_id": rec["request_id"], "cost_usd": rec["cost_usd"]})})
    if rows:
        run.append("prompts", schema.frame("prompts", rows))
        run.compact("prompts")
    return len(rows)


class UpsampleJob(ChatJob[Item]):
    kind, command = "upsample", "prompts upsample"
    bad_input = ()

    def __init__(self, preset: ClientSettings, style: str):
        self.settings, self.style = preset, style
        self.name = f"{preset.slug}-{style}"
        self.invalid_retries = getattr(preset, "invalid_retries", 2)

    def plan(self, run: Run, limit: int | None, *, dry_run: bool) -> list[Item]:
        return [Item(ids.short_hash(self.settings.annotator_id, self.style, pid, n=24), pid, short)
                for pid, short in _originals(run, limit).select("prompt_id", "prompt").iter_rows()]

    def body(self, it: Item) -> dict:
        p = self.settings
        body = {"model": p.model, "temperature": p.temperature, "max_completion_tokens": 300,
                "messages": [{"role": "system", "content": STYLES[self.style]}, {"role": "user", "content": it.short}]}
        if p.seed is not None:
            body["seed"] = p.seed
        return body

    def parse(self, it: Item, text: str | None, finish_reason: str | None) -> str:
        return _clean(text)

    def record(self, it: Item, result: Any, *, status: str, raw: str | None, usage: tuple[int, int], cost_usd: float,
               latency_s: float, attempts: int, error: str | None) -> dict:
        rec = {"event": "done", "status": status, "request_id": it.request_id, "parent": it.parent, "text": result,
               "cost_usd": cost_usd, "latency_s": latency_s, "input_tokens": usage[0], "output_tokens": usage[1]}
        if error:
            rec["error"] = error
        return rec

    def fold(self, run: Run, ledger: Ledger) -> int:
        return _fold(run, ledger, self.style, self.settings.annotator_id)

    def estimate(self, it: Item, ledger: Ledger, *, batch: bool, upper: bool = False) -> float:
        """Once three rewrites are answered, their billed mean (``upper``: their max); before that, the
        instruction + prompt at ~4 characters a token and the length the instruction asks for."""
        if (c := ledger.paid().calibrated(upper)) is not None:
            return c
        return cost(self.settings, (len(STYLES[self.style]) + len(it.short)) // 4 + 12, OUTPUT_TOKENS[self.style],
                    batch=batch)

    def manifest(self) -> dict:
        return {"annotator": self.settings.resolved(), "style": self.style}


def upsample(run_dir, preset: ClientSettings, *, style: str = "descriptive", max_cost: float | None = None,
             limit: int | None = None, dry_run: bool = False, mode: str | None = None, poll_s: float | None = None,
             results: list[Path] | None = None) -> Report:
    """Rewrite each original prompt in ``style``; resumable. ``mode``: online | batch | offline (default: the
    preset's)."""
    if style not in STYLES:
        raise InputError(f"--style must be one of {list(STYLES)}")
    run = Run(run_dir)
    if hasattr(preset, "rewrite"):  # a local rewriter (``local:DIR``): no server, no cost, same rows and journal
        return _local(run, preset, Ledger(run, f"{preset.slug}-{style}", kind="upsample"), style, limit)
    return run_job(run, UpsampleJob(preset, style), mode=mode or getattr(preset, "mode", "online"),
                   max_cost=max_cost, limit=limit, dry_run=dry_run, poll_s=poll_s, results=results)


def _local(run: Run, rewriter, ledger: Ledger, style: str, limit: int | None) -> Report:
    _fold(run, ledger, style, rewriter.annotator_id)
    prompts = _originals(run, limit)
    todo = [(short, pid, ids.short_hash(rewriter.annotator_id, style, pid, n=24))
            for pid, short in prompts.select("prompt_id", "prompt").iter_rows()]
    todo = [t for t in todo if t[2] not in ledger.done]
    res = Report(planned=prompts.height, already_done=prompts.height - len(todo), todo=len(todo))
    if not todo:
        return res
    with run.command("prompts upsample", {"annotator": rewriter.resolved(), "style": style}) as entry, ledger:
        for i in range(0, len(todo), 16):  # journalled per batch: an interrupted run keeps what it wrote
            batch = todo[i:i + 16]
            for (short, pid, rid), text in zip(batch, rewriter.rewrite([b[0] for b in batch], style)):
                if text:
                    ledger.write({"event": "done", "status": "ok", "request_id": rid, "parent": pid, "text": text,
                                  "cost_usd": 0.0, "latency_s": 0.0})
                    res.ok += 1
                else:
                    ledger.write({"event": "error", "request_id": rid, "error": "empty rewrite"})
                    res.error += 1
        entry.update(ok=res.ok, error=res.error)
    _fold(run, ledger, style, rewriter.annotator_id)
    return res

"""LLM prompt upsampling (DALL-E 3 descriptive captions; TIPO-style tag expansion).

It is one more job on the client layer (``vprefer.llm``): the same preset
files, the same ``openai`` client and retry policy, the same send loop and
``--max-cost`` rule, the same fsync'd journal
(``RUN/journal/upsample-<annotator>-<style>.jsonl``, folded on every start, so
a crash loses nothing and a rerun asks only for what is missing). Each variant
becomes a new prompt row (source ``upsample:<style>``) whose meta links to the
original, which is kept.
"""

from __future__ import annotations

import asyncio
import json
import time

import openai
import polars as pl

from vprefer import ids, schema
from vprefer.errors import InputError
from vprefer.llm import Client, ClientSettings, Ledger, Outcome, PermanentError, Report, cost, send_all, usage
from vprefer.store import Run

STYLES = {
    "descriptive": ("You rewrite short text-to-image prompts into one detailed, descriptive caption (40-80 words) "
                    "that keeps every element of the original and adds concrete detail: subject appearance, setting, "
                    "composition, lighting, colours, style. Output only the caption."),
    "tags": ("You expand short text-to-image prompts into a comma-separated list of 15-30 descriptive tags "
             "(subject, attributes, setting, style, lighting, quality), keeping every element of the original. "
             "Output only the tags."),
}


def _clean(text: str | None) -> str:
    t = (text or "").strip().strip('"').strip()
    if not t:
        raise ValueError("empty rewrite")
    return t.splitlines()[0].strip() if len(t.splitlines()) > 3 else " ".join(t.split())


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


OUTPUT_TOKENS = {"descriptive": 85, "tags": 75}  # what the instructions ask for (40-80 words; 15-30 tags)


def estimate_cost(preset: ClientSettings, ledger: Ledger, style: str, short: str, *, upper: bool = False) -> float:
    """One rewrite's cost: once three rewrites are answered, their billed mean (``upper``: their max); before
    that, the instruction + prompt at ~4 characters a token and the length the instruction asks for."""
    paid = [r["cost_usd"] for r in ledger.answers() if r.get("status") == "ok" and r.get("cost_usd")]
    if len(paid) >= 3:
        return max(paid) if upper else sum(paid) / len(paid)
    return cost(preset, (len(STYLES[style]) + len(short)) // 4 + 12, OUTPUT_TOKENS[style], batch=False)


def upsample(run_dir, preset: ClientSettings, *, style: str = "descriptive", max_cost: float | None = None,
             limit: int | None = None, dry_run: bool = False) -> Report:
    if style not in STYLES:
        raise InputError(f"--style must be one of {list(STYLES)}")
    run = Run(run_dir)
    ledger = Ledger(run, f"{preset.slug}-{style}", kind="upsample")
    if hasattr(preset, "rewrite"):  # a local rewriter (``local:DIR``): no server, no cost, same rows and journal
        return _local(run, preset, ledger, style, limit)
    _fold(run, ledger, style, preset.annotator_id)
    prompts = run.read("prompts").filter(~pl.col("source").str.starts_with("upsample:"))
    if limit:
        prompts = prompts.head(limit)
    done = ledger.done
    todo = [(short, pid, ids.short_hash(preset.annotator_id, style, pid, n=24)) for pid, short in
            prompts.select("prompt_id", "prompt").iter_rows()]
    todo = [t for t in todo if t[2] not in done]
    res = Report(planned=prompts.height, already_done=prompts.height - len(todo), todo=len(todo), dry_run=dry_run)
    res.est_cost_usd = sum(estimate_cost(preset, ledger, style, t[0]) for t in todo)
    if dry_run or not todo:
        return res
    preset.api_key()
    with run.command("prompts upsample", {"annotator": preset.resolved(), "style": style, "max_cost": max_cost}) as entry, \
            ledger:
        asyncio.run(_send(todo, preset, style, ledger, res, max_cost))
        entry.update(cost_usd=res.cost_usd, ok=res.ok, error=res.error)
    _fold(run, ledger, style, preset.annotator_id)
    return res


def _local(run: Run, rewriter, ledger: Ledger, style: str, limit: int | None) -> Report:
    _fold(run, ledger, style, rewriter.annotator_id)
    prompts = run.read("prompts").filter(~pl.col("source").str.starts_with("upsample:"))
    if limit:
        prompts = prompts.head(limit)
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


async def _send(todo, preset: ClientSettings, style: str, ledger: Ledger, res: Report,
                max_cost: float | None) -> Report:

    async def one(client: Client, item: tuple[str, str, str]) -> Outcome:
        short, pid, rid = item
        body = {"model": preset.model, "temperature": preset.temperature, "max_completion_tokens": 300,
                "messages": [{"role": "system", "content": STYLES[style]}, {"role": "user", "content": short}]}
        if preset.seed is not None:
            body["seed"] = preset.seed
        t0 = time.monotonic()
        try:
            r = await client.chat(body, rid)
            text = _clean(r.choices[0].message.content if r.choices else None)
        except (PermanentError, ValueError) as e:
            await ledger.awrite({"event": "error", "request_id": rid, "error": str(e)[:300]})
            return Outcome("error")
        except openai.APIError:
            return Outcome("pending")  # retries exhausted: stays pending for the next run
        tin, tout = usage(r)
        c = cost(preset, tin, tout, batch=False)
        await ledger.awrite({"event": "done", "status": "ok", "request_id": rid, "parent": pid,
                             "text": text, "cost_usd": c, "latency_s": time.monotonic() - t0})
        return Outcome("ok", tin, tout, c)

    async with Client(preset, res) as client:
        return await send_all(todo, lambda item: one(client, item), ledger=ledger, report=res,
                              concurrency=preset.concurrency, budget=max_cost,
                              estimate=lambda item: estimate_cost(preset, ledger, style, item[0], upper=True))

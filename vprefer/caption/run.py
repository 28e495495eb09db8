"""``caption()``: one caption per image and style, through the client layer (online or Batch API).

It is one more job on ``vprefer.llm``, like prompt upsampling: the same
annotator presets, ``openai`` client, retry policy, send loop and ``--max-cost``
rule, the same fsync'd journal (``RUN/journal/caption-<annotator>-<style>.jsonl``,
folded into the ``captions`` table on every start, so a crash loses nothing and
a rerun asks only for what is missing), the same stored-completion recovery of
requests in flight at a crash, and the same Batch API runner. A request id is a
content hash of (annotator, instruction hash, image id): the same image under
the same instruction is never paid for twice, whichever process asks.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import openai
import polars as pl

from vprefer import ids, schema
from vprefer.caption.style import CaptionStyle, chat_body, clean, estimate_cost, estimate_tokens
from vprefer.errors import InputError, MissingError
from vprefer.llm import (BatchRunner, Client, ClientSettings, Ledger, Outcome, PermanentError, Report, cost,
                         ended, send_all, usage)
from vprefer.store import Run, as_run


@dataclass(frozen=True)
class Item:
    request_id: str
    image_id: str
    source: str | Path  # the image file, or its URL


def _done(item: Item, style: CaptionStyle, annotator: str, text: str, tin: int, tout: int, c: float,
          latency: float) -> dict:
    return {"event": "done", "status": "ok", "request_id": item.request_id, "image_id": item.image_id,
            "style": style.name, "instruction": style.hash, "annotator": annotator, "caption": text,
            "input_tokens": tin, "output_tokens": tout, "cost_usd": c, "latency_s": latency}


def fold(run: Run, ledger: Ledger) -> int:
    """Add journalled captions the ``captions`` table lacks (a crash between journal and table loses nothing)."""
    recs = [r for r in ledger.unrecorded() if r.get("status") == "ok"]
    if recs:
        run.append("captions", schema.frame("captions", recs))
        run.compact("captions")
    ledger.mark_recorded(recs)
    return len(recs)


def plan(run: Run, style: CaptionStyle, annotator: str, limit: int | None = None) -> list[Item]:
    """One request per distinct image (in the ``images`` table's order)."""
    if not run.has("images"):
        raise MissingError(f"{run.path}: no images to caption (ingest or generate some first)")
    imgs = run.image_paths().unique("image_id", keep="first", maintain_order=True)
    if limit:
        imgs = imgs.head(limit)
    return [Item(ids.short_hash(annotator, style.hash, iid, n=24), iid,
                 uri if uri.startswith(("http://", "https://")) else Path(path))
            for iid, uri, path in imgs.select("image_id", "uri", "path").iter_rows()]


def caption(run_dir: str | Path | Run, preset: ClientSettings, *, style: str | CaptionStyle = "detailed",
            max_cost: float | None = None, limit: int | None = None, dry_run: bool = False,
            mode: str | None = None, poll_s: float | None = None,
            on_update: Callable[[Report], None] | None = None) -> Report:
    """Caption every image of the run in ``style``; resumable. ``mode``: online (default: the preset's) | batch."""
    st = style if isinstance(style, CaptionStyle) else CaptionStyle.load(style)
    mode = mode or getattr(preset, "mode", "online")
    if mode not in ("online", "batch"):
        raise InputError(f"mode must be online or batch, not {mode!r}")
    run = as_run(run_dir)
    done_before = run.read_or_empty("captions").filter(
        (pl.col("annotator") == preset.annotator_id) & (pl.col("instruction") == st.hash))
    ledger = Ledger(run, f"{preset.slug}-{st.name}", kind="caption", recorded=done_before["request_id"].to_list(),
                    recorded_usd=float(done_before["cost_usd"].sum() or 0.0))
    fold(run, ledger)
    items = plan(run, st, preset.annotator_id, limit)
    todo = [i for i in items if i.request_id not in ledger.done]
    res = Report(planned=len(items), already_done=len(items) - len(todo), todo=len(todo), dry_run=dry_run)
    batch = mode == "batch"
    paid = [r["cost_usd"] for r in ledger.answers() if r.get("status") == "ok" and r.get("cost_usd")]
    res.est_cost_usd = len(todo) * estimate_cost(st, preset, paid, batch=batch)
    tin, tout = estimate_tokens(st, preset)
    res.est_input_tokens, res.est_output_tokens = tin * len(todo), tout * len(todo)
    res.est_basis = f"mean of {len(paid)} answered captions" if len(paid) >= 3 else \
        f"instruction length and the {st.expected_words} words it asks for"
    if batch and max_cost is not None:  # a batch is paid whole: submit only what fits
        room = max_cost - ledger.spent_usd
        n = max(0, int(room // max(1e-12, estimate_cost(st, preset, paid, batch=True, upper=True))))
        if n < len(todo):
            todo, res.stopped_for_budget = todo[:n], True
    if dry_run or not todo:
        res.spent_total_usd = ledger.spent_usd
        return res
    preset.api_key()  # fail fast, before anything is written, if the key is missing
    recipe = {"annotator": preset.resolved(), "style": st.resolved(), "instruction": st.hash, "mode": mode,
              "max_cost": max_cost, "limit": limit}
    with run.command("caption", recipe) as entry, ledger:
        try:
            if batch:
                _batch(run, st, preset, ledger, res, todo, poll_s, on_update)
            else:
                asyncio.run(_online(st, preset, ledger, res, todo, max_cost, on_update))
        finally:
            fold(run, ledger)
        entry.update(cost_usd=res.cost_usd, ok=res.ok, error=res.error, stopped_for_budget=res.stopped_for_budget)
    res.spent_total_usd = ledger.spent_usd
    return res


async def _online(st: CaptionStyle, preset: ClientSettings, ledger: Ledger, res: Report, todo: list[Item],
                  max_cost: float | None, on_update) -> None:
    in_flight_before = ledger.in_flight()  # what the last crash left: fetched back, not paid again

    async def one(client: Client, it: Item) -> Outcome:
        t0 = time.monotonic()
        try:
            r = None
            if it.request_id in in_flight_before and preset.store_completions:
                r = await client.recover(it.request_id, ledger.sent_at(it.request_id))
            body, tin, tout, text, why = None, 0, 0, None, None
            for _ in range(getattr(preset, "invalid_retries", 2) + 1):  # a refused caption is asked again
                if r is None:
                    body = body or await asyncio.to_thread(chat_body, st, preset, it.source, it.request_id)
                    await ledger.awrite({"event": "sent", "request_id": it.request_id})
                    r = await client.chat(body, it.request_id)
                i, o = usage(r)
                tin, tout = tin + i, tout + o
                try:
                    text = clean(r.choices[0].message.content if r.choices else None,
                                 r.choices[0].finish_reason if r.choices else None)
                    break
                except ValueError as e:
                    why, r = str(e), None
        except (PermanentError, ValueError, OSError, openai.APIError) as e:  # APIError: stays pending for a rerun
            await ledger.awrite(ended(it.request_id, e))
            return Outcome("pending" if isinstance(e, openai.APIError) else "error")
        c = cost(preset, tin, tout, batch=False)
        rec = _done(it, st, preset.annotator_id, text, tin, tout, c, time.monotonic() - t0)
        if text is None:  # every answer refused: marked (paid, counted, never a caption), not asked again
            rec.update(status="invalid", error=why)
        await ledger.awrite(rec)
        return Outcome("ok" if text is not None else "invalid", tin, tout, c)

    def estimate(_: Item) -> float:
        paid = [r["cost_usd"] for r in ledger.answers() if r.get("status") == "ok" and r.get("cost_usd")]
        return estimate_cost(st, preset, paid, batch=False, upper=True)

    async with Client(preset, res) as client:
        await send_all(todo, lambda it: one(client, it), ledger=ledger, report=res, concurrency=preset.concurrency,
                       estimate=estimate, budget=max_cost, on_update=on_update)


class CaptionBatches(BatchRunner[Item]):
    """Batch API captions: a line's body is the online body; an answer is journalled at the batch price."""

    def __init__(self, run: Run, st: CaptionStyle, preset: ClientSettings, ledger: Ledger, **kw):
        super().__init__(run, preset, **kw)
        self.st, self.preset, self.ledger = st, preset, ledger

    def body(self, it: Item) -> dict:
        return chat_body(self.st, self.preset, it.source, it.request_id)

    def answer(self, it: Item, body: dict) -> Outcome:
        u = body.get("usage") or {}
        tin, tout = u.get("prompt_tokens", 0) or 0, u.get("completion_tokens", 0) or 0
        if it.request_id in self.ledger.done:  # the same output file collected again after a crash
            return Outcome("retries")
        try:
            choice = (body.get("choices") or [{}])[0]
            text = clean(choice.get("message", {}).get("content"), choice.get("finish_reason"))
        except ValueError as e:
            self.ledger.write({"event": "error", "request_id": it.request_id, "error": str(e)})
            return Outcome("error")
        c = cost(self.preset, tin, tout, batch=True)
        self.ledger.write(_done(it, self.st, self.preset.annotator_id, text, tin, tout, c, 0.0))
        return Outcome("ok", tin, tout, c)


def _batch(run: Run, st: CaptionStyle, preset: ClientSettings, ledger: Ledger, res: Report, todo: list[Item],
           poll_s: float | None, on_update) -> None:
    runner = CaptionBatches(run, st, preset, ledger, report=res, on_update=on_update)
    by_id = {i.request_id: i for i in todo}
    runner.submit(todo)
    for _ in range(preset.max_retries + 1):
        runner.wait(by_id, poll_s=poll_s)
        left = [i for i in todo if i.request_id not in ledger.done]
        if not left:
            break
        runner.submit(left)  # error-file lines (not billed) go out again

"""``caption()``: one caption per image and style, a job on the client layer (online, Batch API or offline).

The job declares what a caption request is (:class:`CaptionJob`); ``vprefer.llm.run_job``
runs it with annotation's guarantees: the same presets, ``openai`` client, retry policy,
``--max-cost`` rule, fsync'd journal (``RUN/journal/caption-<annotator>-<style>.jsonl``,
folded into the ``captions`` table on every start, so a crash loses nothing and a rerun
asks only for what is missing), stored-completion recovery of requests in flight at a
crash, Batch API and ``vllm run-batch`` chunks. A request id is a content hash of
(annotator, instruction hash, image id): the same image under the same instruction is
never paid for twice, whichever process asks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import polars as pl

from vprefer import ids, schema
from vprefer.caption.style import CaptionStyle, chat_body, clean, estimate_cost, estimate_tokens
from vprefer.errors import MissingError
from vprefer.llm import ChatJob, ClientSettings, Ledger, Report, run_job
from vprefer.store import Run, as_run


@dataclass(frozen=True)
class Item:
    request_id: str
    image_id: str
    source: str | Path  # the image file, or its URL


class CaptionJob(ChatJob[Item]):
    kind = command = "caption"
    bad_input = (OSError, ValueError)  # an unreadable image: ended, asked again by a rerun once it is fixed

    def __init__(self, preset: ClientSettings, style: CaptionStyle):
        self.settings, self.st = preset, style
        self.name = f"{preset.slug}-{style.name}"
        self.invalid_retries = getattr(preset, "invalid_retries", 2)  # a refused caption is asked again

    def recorded(self, run: Run) -> tuple[list[str], float]:
        done = run.read_or_empty("captions").filter(
            (pl.col("annotator") == self.settings.annotator_id) & (pl.col("instruction") == self.st.hash))
        return done["request_id"].to_list(), float(done["cost_usd"].sum() or 0.0)

    def plan(self, run: Run, limit: int | None, *, dry_run: bool) -> list[Item]:
        """One request per distinct image (in the ``images`` table's order)."""
        if not run.has("images"):
            raise MissingError(f"{run.path}: no images to caption (ingest or generate some first)")
        imgs = run.image_paths().unique("image_id", keep="first", maintain_order=True)
        if limit:
            imgs = imgs.head(limit)
        return [Item(ids.short_hash(self.settings.annotator_id, self.st.hash, iid, n=24), iid,
                     uri if uri.startswith(("http://", "https://")) else Path(path))
                for iid, uri, path in imgs.select("image_id", "uri", "path").iter_rows()]

    def body(self, it: Item) -> dict:
        return chat_body(self.st, self.settings, it.source)

    def parse(self, it: Item, text: str | None, finish_reason: str | None) -> str:
        return clean(text, finish_reason)

    def record(self, it: Item, result: Any, *, status: str, raw: str | None, usage: tuple[int, int], cost_usd: float,
               latency_s: float, attempts: int, error: str | None) -> dict:
        rec = {"event": "done", "status": "ok", "request_id": it.request_id, "image_id": it.image_id,
               "style": self.st.name, "instruction": self.st.hash, "annotator": self.settings.annotator_id,
               "caption": result, "input_tokens": usage[0], "output_tokens": usage[1], "cost_usd": cost_usd,
               "latency_s": latency_s}
        if status != "ok":  # every answer refused: marked (paid, counted, never a caption), not asked again
            rec.update(status=status, error=error)
        return rec

    def fold(self, run: Run, ledger: Ledger) -> int:
        """Add journalled captions the ``captions`` table lacks (a crash between journal and table loses nothing)."""
        recs = [r for r in ledger.unrecorded() if r.get("status") == "ok"]
        if recs:
            run.append("captions", schema.frame("captions", recs))
            run.compact("captions")
        ledger.mark_recorded(recs)
        return len(recs)

    def estimate(self, it: Item, ledger: Ledger, *, batch: bool, upper: bool = False) -> float:
        return estimate_cost(self.st, self.settings, ledger.paid(), batch=batch, upper=upper)

    def forecast(self, todo: list[Item], ledger: Ledger, *, batch: bool) -> tuple[int, int, float, str]:
        paid = ledger.paid()
        tin, tout = estimate_tokens(self.st, self.settings)
        basis = f"mean of {paid.n} answered captions" if paid.n >= 3 else \
            f"instruction length and the {self.st.expected_words} words it asks for"
        return tin * len(todo), tout * len(todo), len(todo) * estimate_cost(self.st, self.settings, paid,
                                                                             batch=batch), basis

    def manifest(self) -> dict:
        return {"annotator": self.settings.resolved(), "style": self.st.resolved(), "instruction": self.st.hash}


def caption(run_dir: str | Path | Run, preset: ClientSettings, *, style: str | CaptionStyle = "detailed",
            max_cost: float | None = None, limit: int | None = None, dry_run: bool = False,
            mode: str | None = None, poll_s: float | None = None, results: list[Path] | None = None,
            on_update: Callable[[Report], None] | None = None) -> Report:
    """Caption every image of the run in ``style``; resumable. ``mode``: online | batch | offline (default: the
    preset's); ``results``: fold ``vllm run-batch`` outputs of offline chunks."""
    st = style if isinstance(style, CaptionStyle) else CaptionStyle.load(style)
    return run_job(as_run(run_dir), CaptionJob(preset, st), mode=mode or getattr(preset, "mode", "online"),
                   max_cost=max_cost, limit=limit, dry_run=dry_run, poll_s=poll_s, results=results,
                   on_update=on_update)

"""Planning judge requests: image sets x permutations, request bodies, token and cost estimates.

A request's id is a content hash of (annotator, rubric, prompt, image set,
permutation index), so the same command on the same run plans the same ids:
that is what lets a rerun skip everything already answered. The order behind
each index comes from the run's pinned order design (:func:`order_design`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from vprefer.annotate.orders import shown_orders
from vprefer.annotate.preset import AnnotatorPreset
from vprefer.annotate.rubric import Rubric
from vprefer.errors import InputError
from vprefer.ids import short_hash
from vprefer.images import cached_jpeg_data_url
from vprefer.llm import Journal
from vprefer.store import Run, atomic_write_json


@dataclass(frozen=True, slots=True)
class JudgeRequest:
    request_id: str
    prompt_id: str
    prompt: str
    image_ids: tuple[str, ...]  # canonical (sorted) order
    shown: tuple[str, ...]  # the order the judge sees
    permutation: int
    sizes: tuple[tuple[int, int], ...]  # (w, h) of the shown images, for token estimates

    @property
    def n(self) -> int:
        return len(self.shown)


def _design_file(run: Run, preset: AnnotatorPreset) -> Path:
    return run.path / "state" / f"orders-{preset.slug}.json"


def _has_history(run: Run, preset: AnnotatorPreset) -> bool:
    """Did this annotator ask anything on this run before order designs were pinned?"""
    if Journal.path_for(run, preset.slug).exists() or (run.path / "state" / f"batches-{preset.slug}.json").exists():
        return True
    return run.has("annotations") and bool(
        run.scan("annotations").filter(pl.col("annotator") == preset.annotator_id).select(pl.len()).collect().item())


def order_design(run: Run, preset: AnnotatorPreset) -> str:
    """The design this annotator's requests on this run are planned with.

    Request ids hash the permutation *index*, not the order, so the order behind an index must never change
    once a request may have been sent: the design is pinned per run and annotator (``RUN/state/orders-*.json``,
    written by :func:`pin_order_design` when requests first go out). A run this annotator asked before designs
    were pinned keeps the random design, so its requests keep their ids and orders; a new run takes the
    preset's design (balanced unless it says ``random``). Asking another design on a pinned run is an error:
    the same permutation index would mean two different orders.
    """
    path = _design_file(run, preset)
    if path.exists():
        pinned, why = json.loads(path.read_text())["design"], "planned"
    elif _has_history(run, preset):
        pinned, why = "random", "planned before order designs existed, so"
    else:
        return preset.order_design or "balanced"
    if preset.order_design and preset.order_design != pinned:
        raise InputError(f"{run.path}: {preset.annotator_id}'s requests here were {why} with {pinned} orders; "
                         f"order_design={preset.order_design} would give the same requests other orders. "
                         "Use a preset with another name (a new annotator) to ask again with them")
    return pinned


def pin_order_design(run: Run, preset: AnnotatorPreset, design: str) -> None:
    """Record the design before the first request goes out (a no-op once recorded)."""
    path = _design_file(run, preset)
    if not path.exists():
        run.subdir("state")
        atomic_write_json(path, {"design": design, "annotator": preset.annotator_id})


def plan(run: Run, preset: AnnotatorPreset, rubric: Rubric, *, limit: int | None = None,
         pin: bool = True) -> list[JudgeRequest]:
    """Every request this annotator would make on this run (done or not), in a stable order, with orders
    from :func:`order_design`; ``pin`` records that design (everything but a dry run: whatever is planned
    may be sent)."""
    design = order_design(run, preset)
    if pin:
        pin_order_design(run, preset, design)
    sets = (run.read("images").sort("prompt_id", "image_id")
            .group_by("prompt_id", maintain_order=True)
            .agg("image_id", pl.col("width").fill_null(512), pl.col("height").fill_null(512)))
    if limit is not None:
        sets = sets.head(limit)
    prompts = dict(run.read("prompts").select("prompt_id", "prompt").iter_rows())
    rubric_hash, who, k = rubric.hash, preset.annotator_id, preset.permutations  # once, not per request
    out: list[JudgeRequest] = []
    for pid, ids, ws, hs in sets.iter_rows():
        ids, sizes, text = tuple(ids), tuple(zip(ws, hs)), prompts.get(pid, "")
        for j, order in enumerate(shown_orders(pid, len(ids), k, design)):
            rid = short_hash(who, rubric_hash, pid, ids, j, n=24)
            out.append(JudgeRequest(rid, pid, text, ids, tuple(ids[i] for i in order), j,
                                    tuple(sizes[i] for i in order)))
    return out


def image_tokens(w: int, h: int, detail: str) -> int:
    """GPT-4o-class vision token rule (docs/REFERENCES.md): low = 85; high = 85 + 170 per 512-px tile
    after fitting into 2048x2048 and scaling the short side down to 768. 'auto' is costed as high."""
    if detail == "low":
        return 85
    s = min(1.0, 2048 / max(w, h))
    w, h = w * s, h * s
    s = min(1.0, 768 / min(w, h))
    w, h = w * s, h * s
    return 85 + 170 * math.ceil(w / 512) * math.ceil(h / 512)


def text_chars(prompt: str, n: int, preset: AnnotatorPreset, rubric: Rubric) -> int:
    """Characters of a request's text: system (with the inline schema when the server has no structured
    outputs), the user text, the per-image labels, and the response schema."""
    text = len(rubric.system_text(inline_schema=None if preset.structured_output else rubric.json_schema()))
    text += len(rubric.user_text(prompt, n)) + 12 * n
    if preset.structured_output:
        text += len(str(rubric.json_schema()))
    return text


def shown_image_tokens(w: int, h: int, preset: AnnotatorPreset) -> int:
    """One image's tokens at the size it is re-encoded to (``max_side``)."""
    s = min(1.0, preset.max_side / max(w, h))
    return image_tokens(max(1, round(w * s)), max(1, round(h * s)), preset.image_detail)


def input_tokens(req: JudgeRequest, preset: AnnotatorPreset, rubric: Rubric) -> int:
    """Input token estimate. Text at ~4 characters a token (a documented heuristic: no tokenizer download is
    possible offline); images by the detail rule at the re-encoded size. Output: ``annotate.estimate``;
    :class:`~vprefer.annotate.estimate.Estimator` gives the same figure from memoised parts."""
    img = sum(shown_image_tokens(w, h, preset) for w, h in req.sizes)
    return text_chars(req.prompt, req.n, preset, rubric) // 4 + img + 10


def chat_body(req: JudgeRequest, preset: AnnotatorPreset, rubric: Rubric, run: Run, uris: dict[str, str]) -> dict:
    """The /v1/chat/completions body for one request (images re-encoded as JPEG data URLs, once per
    image and detail level: :func:`vprefer.images.cached_jpeg_data_url`)."""
    content: list[dict] = [{"type": "text", "text": rubric.user_text(req.prompt, req.n)}]
    for pos, iid in enumerate(req.shown, 1):
        src = run.resolve_uri(uris[iid])
        url = src if isinstance(src, str) else cached_jpeg_data_url(Path(src), preset.max_side)
        content += [{"type": "text", "text": f"Image {pos}:"},
                    {"type": "image_url", "image_url": {"url": url, "detail": preset.image_detail}}]
    inline = None if preset.structured_output else rubric.json_schema()
    body = {
        "model": preset.model,
        "messages": [{"role": "system", "content": rubric.system_text(inline_schema=inline)},
                     {"role": "user", "content": content}],
        "temperature": preset.temperature,
        "max_completion_tokens": preset.max_tokens,
    }
    if preset.seed is not None:
        body["seed"] = preset.seed
    if preset.structured_output:
        body["response_format"] = rubric.response_format()
    return body


def image_uris(run: Run) -> dict[str, str]:
    return dict(run.read("images").select("image_id", "uri").unique("image_id").iter_rows())


def pending(reqs: list[JudgeRequest], done: set[str]) -> list[JudgeRequest]:
    return [r for r in reqs if r.request_id not in done]

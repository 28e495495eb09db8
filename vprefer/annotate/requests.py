"""Planning judge requests: image sets x permutations, request bodies, token and cost estimates.

A request's id is a content hash of (annotator, rubric, prompt, image set,
permutation index), so the same command on the same run plans the same ids:
that is what lets a rerun skip everything already answered.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from itertools import permutations as all_perms
from pathlib import Path

import polars as pl

from vprefer.annotate.preset import AnnotatorPreset
from vprefer.annotate.rubric import Rubric
from vprefer.ids import short_hash
from vprefer.images import jpeg_data_url
from vprefer.store import Run


@dataclass(frozen=True)
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


def shown_orders(prompt_id: str, n: int, k: int) -> list[list[int]]:
    """``k`` distinct shuffled orders of ``range(n)`` (as many as exist if n! < k), seeded by the prompt."""
    rng = random.Random(int(short_hash("perm", prompt_id), 16))
    if math.factorial(n) <= k:
        orders = [list(p) for p in all_perms(range(n))]
        rng.shuffle(orders)
        return orders
    seen, out = set(), []
    while len(out) < k:
        o = list(range(n))
        rng.shuffle(o)
        if tuple(o) not in seen:
            seen.add(tuple(o))
            out.append(o)
    return out


def plan(run: Run, preset: AnnotatorPreset, rubric: Rubric, *, limit: int | None = None) -> list[JudgeRequest]:
    """Every request this annotator would make on this run (done or not), in a stable order."""
    sets = (run.read("images").sort("prompt_id", "image_id")
            .group_by("prompt_id", maintain_order=True)
            .agg("image_id", pl.col("width").fill_null(512), pl.col("height").fill_null(512)))
    if limit is not None:
        sets = sets.head(limit)
    prompts = dict(run.read("prompts").select("prompt_id", "prompt").iter_rows())
    out: list[JudgeRequest] = []
    for pid, ids, ws, hs in sets.iter_rows():
        ids = tuple(ids)
        size = dict(zip(ids, zip(ws, hs)))
        for k, order in enumerate(shown_orders(pid, len(ids), preset.permutations)):
            shown = tuple(ids[i] for i in order)
            rid = short_hash(preset.annotator_id, rubric.hash, pid, ids, k, n=24)
            out.append(JudgeRequest(rid, pid, prompts.get(pid, ""), ids, shown, k, tuple(size[i] for i in shown)))
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


def input_tokens(req: JudgeRequest, preset: AnnotatorPreset, rubric: Rubric) -> int:
    """Input token estimate. Text at ~4 characters a token (a documented heuristic: no tokenizer download is
    possible offline); images by the detail rule at the re-encoded size. Output: ``annotate.estimate``."""
    text = len(rubric.system_text(inline_schema=None if preset.structured_output else rubric.json_schema()))
    text += len(rubric.user_text(req.prompt, req.n)) + 12 * req.n
    if preset.structured_output:
        text += len(str(rubric.json_schema()))
    img = 0
    for w, h in req.sizes:
        s = min(1.0, preset.max_side / max(w, h))
        img += image_tokens(max(1, round(w * s)), max(1, round(h * s)), preset.image_detail)
    return text // 4 + img + 10


def chat_body(req: JudgeRequest, preset: AnnotatorPreset, rubric: Rubric, run: Run, uris: dict[str, str]) -> dict:
    """The /v1/chat/completions body for one request (images re-encoded as JPEG data URLs)."""
    content: list[dict] = [{"type": "text", "text": rubric.user_text(req.prompt, req.n)}]
    for pos, iid in enumerate(req.shown, 1):
        src = run.resolve_uri(uris[iid])
        url = src if isinstance(src, str) else jpeg_data_url(Path(src), preset.max_side)
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
    if preset.store_completions:
        body["store"] = True
        body["metadata"] = {"vprefer_request_id": req.request_id}
    return body


def image_uris(run: Run) -> dict[str, str]:
    return dict(run.read("images").select("image_id", "uri").unique("image_id").iter_rows())


def pending(reqs: list[JudgeRequest], done: set[str]) -> list[JudgeRequest]:
    return [r for r in reqs if r.request_id not in done]

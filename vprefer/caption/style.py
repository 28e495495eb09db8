"""Caption instructions as data (``annotators/captions/<style>.yaml``), and what one caption request is.

The instruction text lives in YAML so a user changes how captions are written
without touching Python; its hash is recorded on every caption row (like a
rubric's), so captions written under different instructions never mix silently.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from pydantic import Field

from vprefer.images import jpeg_data_url
from vprefer.llm import ClientSettings, Paid, cost
from vprefer.recipes import Recipe, find_asset


class CaptionStyle(Recipe):
    name: str
    system: str
    user: str = "Caption this image."
    max_tokens: int = Field(300, ge=8)
    expected_words: int = Field(40, ge=1, description="the length the instruction asks for (cost estimates only)")

    @classmethod
    def load(cls, name_or_path: str | Path) -> "CaptionStyle":
        return cls.from_yaml(find_asset(name_or_path, "annotators/captions", what="caption style"))

    @property
    def hash(self) -> str:
        """``<name>@<12 hex>``: recorded on every caption row; the estimate field does not change answers."""
        what = {k: v for k, v in self.resolved().items() if k != "expected_words"}
        return f"{self.name}@{hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]}"


def _detail(preset: ClientSettings) -> tuple[str, int]:
    """Image detail and longest side: an annotator preset's, else OpenAI's cheapest (low, 512 px)."""
    detail = getattr(preset, "image_detail", "low")
    return detail, getattr(preset, "max_side", 512 if detail == "low" else 768)


def chat_body(style: CaptionStyle, preset: ClientSettings, image: Path | str) -> dict:
    """The ``/v1/chat/completions`` body: the instruction, then the image (a JPEG data URL, or its URL)."""
    detail, side = _detail(preset)
    url = image if isinstance(image, str) else jpeg_data_url(Path(image), side)
    body = {"model": preset.model, "temperature": preset.temperature, "max_completion_tokens": style.max_tokens,
            "messages": [{"role": "system", "content": style.system},
                         {"role": "user", "content": [{"type": "text", "text": style.user},
                                                      {"type": "image_url",
                                                       "image_url": {"url": url, "detail": detail}}]}]}
    if preset.seed is not None:
        body["seed"] = preset.seed
    return body


# an answer that apologises, refuses or says it lost its way is not a caption (a judge answer that fails its
# schema is not a score either): it is asked again, then recorded as an error, never stored as training text
_NOT_A_CAPTION = re.compile(r"(?i)\b(sorry|i can(?:not|'t|’t)|i am unable|i'm unable|as an ai|lost track)\b")


def clean(text: str | None, finish_reason: str | None = None) -> str:
    """One caption on one line; an empty, cut-off (``finish_reason: length``) or refused answer is an error,
    never a caption."""
    t = " ".join((text or "").split()).strip().strip('"').strip()
    if not t:
        raise ValueError("empty caption")
    if finish_reason == "length":
        raise ValueError(f"caption cut off at max_tokens: {t[:80]!r}")
    if m := _NOT_A_CAPTION.search(t):
        raise ValueError(f"not a caption ({m.group(0)!r}): {t[:80]!r}")
    return t


def estimate_tokens(style: CaptionStyle, preset: ClientSettings) -> tuple[int, int]:
    """(input, output) for one caption before any is answered: text at ~4 characters a token plus the image
    (85 tokens at low detail, 85 + 170 per 512-px tile otherwise: at most 4 tiles at 768 px), and the
    length the instruction asks for at ~1.35 tokens a word."""
    detail, _ = _detail(preset)
    img = 85 if detail == "low" else 85 + 170 * 4
    return (len(style.system) + len(style.user)) // 4 + 12 + img, round(style.expected_words * 1.35) + 2


def estimate_cost(style: CaptionStyle, preset: ClientSettings, paid: Paid, *, batch: bool,
                  upper: bool = False) -> float:
    """One caption's cost: once three are answered, their billed mean (``upper``: their max); else the
    token estimate at the preset's prices."""
    if (c := paid.calibrated(upper)) is not None:
        return c
    tin, tout = estimate_tokens(style, preset)
    return cost(preset, tin, tout, batch=batch)

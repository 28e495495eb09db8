"""The judge's instructions, the v1 answer schema, and the parser that checks every answer.

An answer that does not parse or does not satisfy the schema raises
:class:`InvalidAnswer`; the runner retries it and finally stores it with
status ``invalid`` and the raw text. It never becomes a default score.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from vprefer.recipes import Recipe, find_asset


class Scale(BaseModel):
    min: int = 1
    max: int = 5


class InvalidAnswer(ValueError):
    pass


@dataclass(frozen=True)
class Judgement:
    """One parsed answer: scores[position][aspect], rationales likewise, ranks[aspect][position] (1 = best)."""

    scores: dict[int, dict[str, int]]
    rationales: dict[int, dict[str, str]]
    ranks: dict[str, dict[int, int]]


class Rubric(Recipe):
    name: str
    scale: Scale = Scale()
    rankings: bool = True
    system: str
    aspects: dict[str, str]
    user: str = 'Prompt: "{prompt}"\nThere are {n} images, shown below as Image 1 to Image {n}.'
    rationale_tokens: int = 45  # expected length of one rationale (2-3 sentences), for cost estimates only

    @classmethod
    def load(cls, name_or_path: str | Path) -> "Rubric":
        return cls.from_yaml(find_asset(name_or_path, "annotators/rubrics", what="rubric"))

    @property
    def hash(self) -> str:
        """Content hash recorded on every annotation row (12 hex chars)."""
        what = {k: v for k, v in self.resolved().items() if k != "rationale_tokens"}  # estimates do not change answers
        blob = json.dumps(what, sort_keys=True).encode()
        return f"{self.name}@{hashlib.sha256(blob).hexdigest()[:12]}"

    def _fmt(self, text: str) -> str:
        return text.replace("{min}", str(self.scale.min)).replace("{max}", str(self.scale.max))

    def system_text(self, *, inline_schema: dict | None = None) -> str:
        parts = [self._fmt(self.system).strip(), "", "Aspects:"]
        parts += [f"- {a}: {self._fmt(t).strip()}" for a, t in self.aspects.items()]
        if inline_schema is not None:  # servers without structured outputs
            parts += ["", "Reply with a single JSON object (no prose, no code fences) matching this JSON schema:",
                      json.dumps(inline_schema)]
        return "\n".join(parts)

    def user_text(self, prompt: str, n: int) -> str:
        return self.user.replace("{prompt}", prompt).replace("{n}", str(n))

    def json_schema(self) -> dict:
        """The v1 answer schema, valid for OpenAI strict structured outputs (all keys required)."""
        aspect_obj = {"type": "object", "additionalProperties": False, "required": ["score", "rationale"],
                      "properties": {"score": {"type": "integer"}, "rationale": {"type": "string"}}}
        image = {"type": "object", "additionalProperties": False, "required": ["image", *self.aspects],
                 "properties": {"image": {"type": "integer"}, **{a: aspect_obj for a in self.aspects}}}
        props: dict = {"images": {"type": "array", "items": image}}
        if self.rankings:
            keys = [*self.aspects, "overall"]
            props["ranking"] = {"type": "object", "additionalProperties": False, "required": keys,
                                "properties": {k: {"type": "array", "items": {"type": "integer"}} for k in keys}}
        return {"type": "object", "additionalProperties": False, "required": list(props), "properties": props}

    def response_format(self) -> dict:
        return {"type": "json_schema",
                "json_schema": {"name": "image_judgement", "schema": self.json_schema(), "strict": True}}

    # ------------------------------------------------------------- parsing
    def parse(self, text: str | None, n: int) -> Judgement:
        """Parse and check an answer for ``n`` images; raises InvalidAnswer with the reason."""
        data = _loads_tolerant(text)
        imgs = data.get("images")
        if not isinstance(imgs, list) or len(imgs) != n:
            raise InvalidAnswer(f"expected 'images' with {n} entries, got {len(imgs) if isinstance(imgs, list) else type(imgs).__name__}")
        scores: dict[int, dict[str, int]] = {}
        rats: dict[int, dict[str, str]] = {}
        for item in imgs:
            if not isinstance(item, dict):
                raise InvalidAnswer("an 'images' entry is not an object")
            pos = _as_int(item.get("image"), "image")
            if not 1 <= pos <= n or pos in scores:
                raise InvalidAnswer(f"image number {pos} is out of range 1..{n} or repeated")
            scores[pos], rats[pos] = {}, {}
            for a in self.aspects:
                v = item.get(a)
                if not isinstance(v, dict):
                    raise InvalidAnswer(f"image {pos}: aspect {a!r} missing")
                s = _as_int(v.get("score"), f"image {pos} {a} score")
                if not self.scale.min <= s <= self.scale.max:
                    raise InvalidAnswer(f"image {pos} {a}: score {s} outside {self.scale.min}..{self.scale.max}")
                r = v.get("rationale")
                if not isinstance(r, str) or not r.strip():
                    raise InvalidAnswer(f"image {pos} {a}: empty rationale")
                scores[pos][a], rats[pos][a] = s, r.strip()
        ranks: dict[str, dict[int, int]] = {}
        ranking = data.get("ranking")
        if ranking is not None:
            if not isinstance(ranking, dict):
                raise InvalidAnswer("'ranking' is not an object")
            for key, order in ranking.items():
                if key not in self.aspects and key != "overall":
                    continue
                if not isinstance(order, list) or sorted(_as_int(x, "ranking") for x in order) != list(range(1, n + 1)):
                    raise InvalidAnswer(f"ranking[{key!r}] is not a permutation of 1..{n}")
                ranks[key] = {int(p): k for k, p in enumerate(order, 1)}
        return Judgement(scores, rats, ranks)


def _as_int(v, what: str) -> int:
    if isinstance(v, bool):
        raise InvalidAnswer(f"{what}: boolean is not a number")
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        return int(v.strip())
    raise InvalidAnswer(f"{what}: {v!r} is not an integer")


_FENCE = re.compile(r"```(?:json)?\s*(\{.*?\})\s*```", re.S)


def _loads_tolerant(text: str | None) -> dict:
    """JSON object from a reply that may wrap it in prose or code fences."""
    if not text or not text.strip():
        raise InvalidAnswer("empty answer")
    candidates = [text.strip()]
    candidates += _FENCE.findall(text)
    if "{" in text and "}" in text:
        candidates.append(text[text.index("{"): text.rindex("}") + 1])
    for c in candidates:
        try:
            obj = json.loads(c)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return obj
    raise InvalidAnswer("answer is not a JSON object")

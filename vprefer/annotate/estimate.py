"""Token and cost estimates that match the bill, so ``--dry-run`` and ``--max-cost`` mean what they say.

Output tokens, in order of preference:

1. ``preset.output_tokens_per_image`` when the user set it (an explicit override);
2. **measured**: this run's own answers from the same annotator and rubric — output tokens per image shown,
   from the ``annotations`` table when the run starts, then from every answer as it lands;
3. **from the rubric**: the length of an answer of the rubric's exact JSON shape (every image, every aspect,
   a score, a rationale of ``rubric.rationale_tokens``, the rankings) at the ~4 characters a token that the
   input estimate uses. The old fixed 320 tokens an image over-estimated a 2-3 sentence rationale by ~1.9x.

Input tokens are the request's own text at ~4 characters a token plus each image by the detail rule
(``image_tokens``), which is what the bill counts for images.

Budgets reserve the *upper* figure (the largest measured output per image so far, or the rubric's) for each
request in flight, so a cap is not overrun while answers are longer than average.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import polars as pl

from vprefer.annotate.preset import AnnotatorPreset
from vprefer.annotate.requests import JudgeRequest, input_tokens, shown_image_tokens, text_chars
from vprefer.annotate.rubric import Rubric
from vprefer.llm import cost
from vprefer.store import Run

MIN_MEASURED = 3  # answers before the run's own figure replaces the rubric's


def rubric_output_tokens(rubric: Rubric, n: int) -> int:
    """Tokens of an answer of the rubric's JSON shape for ``n`` images, rationales at their expected length."""
    why = "x" * (4 * rubric.rationale_tokens)
    answer: dict = {"images": [{"image": i, **{a: {"score": rubric.scale.max, "rationale": why} for a in rubric.aspects}}
                               for i in range(1, n + 1)]}
    if rubric.rankings:
        answer["ranking"] = {a: list(range(1, n + 1)) for a in [*rubric.aspects, "overall"]}
    return len(json.dumps(answer)) // 4 + 8


@dataclass
class Estimator:
    preset: AnnotatorPreset
    rubric: Rubric
    measured_tokens: int = 0
    measured_images: int = 0
    measured_requests: int = 0
    max_per_image: float = 0.0
    _cache: dict = field(default_factory=dict, repr=False)
    _text: dict = field(default_factory=dict, repr=False)
    _image: dict = field(default_factory=dict, repr=False)

    @classmethod
    def for_run(cls, run: Run, preset: AnnotatorPreset, rubric: Rubric) -> "Estimator":
        est = cls(preset, rubric)
        if run.has("annotations"):
            a = run.read("annotations").filter(pl.col("annotator") == preset.annotator_id,
                                               pl.col("rubric") == rubric.hash, pl.col("status") == "ok")
            per = (a.group_by("request_id").agg(pl.col("output_tokens").sum(), pl.col("image_id").n_unique().alias("n"))
                   .filter(pl.col("output_tokens") > 0))
            for tokens, n in per.select("output_tokens", "n").iter_rows():
                est.observe(n, tokens)
        return est

    def observe(self, n_images: int, output_tokens: int) -> None:
        """One answered request's billed output tokens."""
        if n_images <= 0 or output_tokens <= 0:
            return
        self.measured_tokens += output_tokens
        self.measured_images += n_images
        self.measured_requests += 1
        self.max_per_image = max(self.max_per_image, output_tokens / n_images)

    @property
    def basis(self) -> str:
        if self.preset.output_tokens_per_image:
            return f"output: preset override, {self.preset.output_tokens_per_image} tokens/image"
        if self.measured_requests >= MIN_MEASURED:
            return (f"output: measured on {self.measured_requests:,} answered requests of this run, "
                    f"{self.measured_tokens / self.measured_images:.0f} tokens/image")
        return (f"output: from the rubric's answer shape, {self.rubric.rationale_tokens}-token rationales, "
                f"{rubric_output_tokens(self.rubric, 1)} tokens for one image")

    def output_tokens(self, n: int, *, upper: bool = False) -> int:
        if self.preset.output_tokens_per_image:
            return self.preset.output_tokens_per_image * n
        if self.measured_requests >= MIN_MEASURED:
            per = self.max_per_image if upper else self.measured_tokens / self.measured_images
            return round(per * n)
        if n not in self._cache:
            self._cache[n] = rubric_output_tokens(self.rubric, n)
        return self._cache[n]

    def input_tokens(self, req: JudgeRequest) -> int:
        """:func:`~vprefer.annotate.requests.input_tokens`, from parts memoised by set size and image size:
        the prompt only adds its length (a dry run over 1M sets must not rebuild the system text 1M times)."""
        if "{" in req.prompt or "}" in req.prompt:  # it could form a placeholder: the exact path
            return input_tokens(req, self.preset, self.rubric)
        base = self._text.get(req.n)
        if base is None:
            base = self._text[req.n] = text_chars("", req.n, self.preset, self.rubric)
        chars = base + self.rubric.user.count("{prompt}") * len(req.prompt)
        img = 0
        for wh in req.sizes:
            t = self._image.get(wh)
            if t is None:
                t = self._image[wh] = shown_image_tokens(*wh, self.preset)
            img += t
        return chars // 4 + img + 10

    def tokens(self, req: JudgeRequest, *, upper: bool = False) -> tuple[int, int]:
        return self.input_tokens(req), self.output_tokens(req.n, upper=upper)

    def cost(self, req: JudgeRequest, *, batch: bool, upper: bool = False) -> float:
        return cost(self.preset, *self.tokens(req, upper=upper), batch=batch)

    def total(self, reqs: list[JudgeRequest]) -> tuple[int, int, float]:
        tin = tout = 0
        for r in reqs:
            i, o = self.tokens(r)
            tin, tout = tin + i, tout + o
        return tin, tout, cost(self.preset, tin, tout, batch=self.preset.mode == "batch")

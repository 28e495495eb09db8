"""Before/after on the world's truth: what a fine-tuned generator does on prompts and seeds it never trained on.

A loop's own reward always goes up; the question an engineer asks is whether the images now do what the
prompt says. Each image is read by :func:`vprefer.world.truth` against the prompt the *user* asked (for a
prompt rewriter: the original prompt, not the rewrite), and before and after are compared on the same
(prompt, seed), so the comparison is paired:

* per attribute and "all right": the share before, after, and the change with a 95% bootstrap CI that
  resamples *prompts* (images of one prompt are correlated, REFERENCES.md);
* the truth win rate: over (prompt, seed), after beats before on the share of named attributes right
  (a tie counts half);
* the reward (a VP-Score) before -> after, and the gap between the reward's gain and the truth's gain, each
  in units of its own spread before: a loop whose reward rises while the truth does not is hacking it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from vprefer.world.reader import read_image, truth_of_reading

KEYS = ("colour_right", "shape_right", "background_right", "all_right")


@dataclass
class Reading:
    """One image per (prompt, seed): its truth and, when a reward was given, its score."""

    prompts: list[str]
    seeds: list[int]
    truth: list[dict]
    reward: list[float] | None = None
    images: list = field(default_factory=list, repr=False)
    sizes: list = field(default_factory=list)  # the size the truth reader sees in each image: "large", "small", None

    def large_share(self) -> float:
        """Share of images drawn large: on plain prompts (which name no size) the world's generator gets held-out
        shapes right far more often when it draws them large, so this is where a loop's gain often comes from."""
        return float(np.mean([z == "large" for z in self.sizes])) if self.sizes else float("nan")

    def share(self, key: str) -> float:
        return float(np.mean([t[key] for t in self.truth]))


@torch.no_grad()
def images_for(pipe, prompts: Sequence[str], seeds: Sequence[int], *, steps: int = 20, guidance: float = 3.0,
               batch: int = 64) -> list:
    """PIL images, the i-th made from ``prompts[i]`` with seed ``seeds[i]`` (its own generator: a batch size
    never changes an image, and before and after share each one's starting noise)."""
    out = []
    for i in range(0, len(prompts), batch):
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds[i:i + batch]]
        out += pipe(list(prompts[i:i + batch]), num_inference_steps=steps, guidance_scale=guidance,
                    generator=gens).images
    return out


def read(pipe, asked: Sequence[str], seeds: Sequence[int], *, made_from: Sequence[str] | None = None,
         reward=None, reward_aspects: dict[str, float] | None = None, steps: int = 20,
         guidance: float = 3.0) -> Reading:
    """Make one image per (prompt, seed) and read it against ``asked``. ``made_from``: the prompts the
    images are generated from, when they differ from what was asked (a rewriter's rewrites)."""
    ims = images_for(pipe, list(made_from or asked), seeds, steps=steps, guidance=guidance)
    seen = [read_image(im) for im in ims]
    r = Reading(list(asked), [int(s) for s in seeds], [truth_of_reading(p, x) for p, x in zip(asked, seen)],
                images=ims, sizes=[x["size"] for x in seen])
    if reward is not None:
        r.reward = score(reward, list(asked), ims, reward_aspects or {"overall": 1.0})
    return r


def score(reward, prompts: Sequence[str], images: Sequence, aspects: dict[str, float]) -> list[float]:
    """The recipe-weighted VP-Score of each image against its prompt (as the loops weigh it)."""
    s = reward.score(list(prompts), list(images))
    w = sum(abs(v) for v in aspects.values())
    return [sum(aspects[a] * s[a][i] for a in aspects) / w for i in range(len(images))]


def _boot(per_prompt: dict[str, list[float]], n_boot: int, seed: int) -> tuple[float, float, float]:
    """Mean over all items and its 95% CI resampling prompts (each prompt brings all its items)."""
    groups = [np.asarray(v, dtype=float) for v in per_prompt.values()]
    mean = float(np.concatenate(groups).mean())
    rng = np.random.default_rng(seed)
    sums, counts = np.array([g.sum() for g in groups]), np.array([len(g) for g in groups])
    idx = rng.integers(0, len(groups), size=(n_boot, len(groups)))
    boots = sums[idx].sum(1) / counts[idx].sum(1)
    return mean, float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def _by_prompt(r: Reading, value: Callable[[int], float]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for i, p in enumerate(r.prompts):
        out.setdefault(p, []).append(value(i))
    return out


def compare(before: Reading, after: Reading, *, n_boot: int = 2000, seed: int = 0) -> dict:
    """Paired before/after figures (see the module docstring); both readings must hold the same (prompt, seed)
    items in the same order."""
    if list(zip(before.prompts, before.seeds)) != list(zip(after.prompts, after.seeds)):
        raise ValueError("before and after must be read on the same (prompt, seed) items, in the same order")
    out: dict = {"images": len(before.prompts), "prompts": len(set(before.prompts))}
    for k in KEYS:
        d, lo, hi = _boot(_by_prompt(before, lambda i: float(after.truth[i][k]) - float(before.truth[i][k])),
                          n_boot, seed)
        out[k] = {"before": before.share(k), "after": after.share(k), "delta": d, "ci": [lo, hi]}

    if before.sizes and after.sizes:  # readings made by read() always have them; NaN is not JSON
        out["large_share"] = {"before": before.large_share(), "after": after.large_share()}

    def win(i: int) -> float:
        a, b = after.truth[i]["prompt_following"], before.truth[i]["prompt_following"]
        return 1.0 if a > b else 0.5 if a == b else 0.0

    w, lo, hi = _boot(_by_prompt(before, win), n_boot, seed)
    decided = [win(i) for i in range(len(before.prompts)) if win(i) != 0.5]
    out["win_rate"] = {"rate": w, "ci": [lo, hi], "decided": len(decided),
                       "rate_of_decided": float(np.mean(decided)) if decided else 0.5}
    pf_b = np.array([t["prompt_following"] for t in before.truth])
    pf_a = np.array([t["prompt_following"] for t in after.truth])
    truth_gain = float((pf_a.mean() - pf_b.mean()) / max(pf_b.std(), 1e-6))
    if before.reward is not None and after.reward is not None:
        rb, ra = np.array(before.reward), np.array(after.reward)
        d, lo, hi = _boot(_by_prompt(before, lambda i: ra[i] - rb[i]), n_boot, seed)
        reward_gain = float((ra.mean() - rb.mean()) / max(rb.std(), 1e-6))
        out["reward"] = {"before": float(rb.mean()), "after": float(ra.mean()), "delta": d, "ci": [lo, hi]}
        out["hacking"] = {"reward_gain_sd": reward_gain, "truth_gain_sd": truth_gain, "gap_sd": reward_gain - truth_gain}
    return out


def reward_accuracy(r: Reading, key: str = "prompt_following") -> dict:
    """How often the reward orders two images of one prompt as the truth does (truth ties skipped, a reward
    tie wrong): the reward model's accuracy on the images a loop actually produces."""
    if r.reward is None:
        raise ValueError("this reading was made without a reward")
    hits = []
    for i in range(len(r.prompts)):
        for j in range(i + 1, len(r.prompts)):
            if r.prompts[i] != r.prompts[j]:
                continue
            d = r.truth[i][key] - r.truth[j][key]
            if d:
                hits.append(float((r.reward[i] - r.reward[j]) * d > 0))
    return {"pairs": len(hits), "accuracy": float(np.mean(hits)) if hits else float("nan")}


def line(name: str, c: dict) -> str:
    """One printable line of :func:`compare`'s figures."""
    parts = [f"{name}:"]
    for k in KEYS:
        x = c[k]
        parts.append(f"{k.replace('_right', '')} {x['before']:.2f}->{x['after']:.2f} "
                     f"({x['delta']:+.2f} [{x['ci'][0]:+.2f}, {x['ci'][1]:+.2f}])")
    if "large_share" in c:
        parts.append(f"drawn large {c['large_share']['before']:.2f}->{c['large_share']['after']:.2f}")
    w = c["win_rate"]
    parts.append(f"truth win rate {w['rate']:.2f} [{w['ci'][0]:.2f}, {w['ci'][1]:.2f}]")
    if "reward" in c:
        r, h = c["reward"], c["hacking"]
        parts.append(f"VP-Score {r['before']:+.2f}->{r['after']:+.2f}; gain in sd: reward {h['reward_gain_sd']:+.2f}, "
                     f"truth {h['truth_gain_sd']:+.2f} (gap {h['gap_sd']:+.2f})")
    return "  ".join(parts)


def grid(before: Reading, after: Reading, path, *, per_prompt: int = 1, side: int = 96, title: str = ""):
    """Before (top row) and after (bottom row) of the same (prompt, seed), the first ``per_prompt`` seeds of
    every prompt in reading order (none picked for looking good), upscaled so a person can see 32-px images.
    A green frame: every attribute the prompt names is right; red: at least one is wrong. Under each column,
    the prompt's attributes."""
    from PIL import Image, ImageDraw

    keep, seen = [], {}
    for i, p in enumerate(before.prompts):
        if seen.get(p, 0) < per_prompt:
            seen[p] = seen.get(p, 0) + 1
            keep.append(i)
    pad, label, head = 4, 28, 18 if title else 0
    w, h = len(keep) * (side + pad) + pad, head + 2 * (side + pad) + label + pad
    canvas = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(canvas)
    if title:
        d.text((pad, 3), title, fill="black")
    for col, i in enumerate(keep):
        x = pad + col * (side + pad)
        for row, r in enumerate((before, after)):
            y = head + pad + row * (side + pad)
            ok = bool(r.truth[i]["all_right"])
            d.rectangle([x - 2, y - 2, x + side + 1, y + side + 1], fill="#1a9850" if ok else "#d73027")
            canvas.paste(r.images[i].convert("RGB").resize((side - 4, side - 4), Image.Resampling.NEAREST),
                         (x + 2, y + 2))
        words = before.prompts[i].removeprefix("a ").replace(" background", "").split(" on a ")
        for k, text in enumerate(words[:2]):
            d.text((x, head + 2 * (side + pad) + pad + k * 12), text[:16], fill="black")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return Path(path)

"""The world's prompts: the plain template, captions in other styles, parsing, and the train/held-out split.

Three styles, because issue 28 pretrains the generator the way seed 002
describes DALL-E 3's captions: mostly descriptive, some short. A short caption
omits attributes, so a generator that learned from it guesses them; a prompt
rewriter then has something real to learn (say what the short prompt left out).

The split holds out ~20% of the 54 (colour, shape, background) combinations,
spread over the colours, shapes and backgrounds.
Every held-out triple is new, but each of its pairs — colour with shape, colour
with background, shape with background — occurs in training. So "better on
held-out prompts" means the generator composes attributes it has seen, not that
it memorised the training prompts; and no held-out prompt is ever a training one.
"""

from __future__ import annotations

import itertools
import random
import re
from typing import Any

from vprefer.world.scenes import BACKGROUNDS, COLOURS, SHAPES, Scene, WorldError

ATTRS = ("colour", "shape", "background", "size")
HELD_OUT_SHARE = 0.2
_SPLIT_SEED = 28  # fixed for good: changing it would move prompts between training and held-out

_DESCRIPTIVE = (
    "a {sc} {shape} in the middle of a plain {background} background",
    "a {sc} {shape} drawn on a {background} background",
    "a simple picture of a {sc} {shape}, centred on a {background} background",
    "one {sc} {shape} on a flat {background} background, clean and sharp",
    "an icon of a {sc} {shape} on a {background} background",
    "a {sc} {shape} set flat against a {background} background",
)
_SHORT = (  # each names only some attributes: that is the point
    "{colour} {shape}",
    "a {shape}",
    "{colour} {shape}, {background} background",
    "a {shape} on a {background} background",
    "{size} {shape}",
    "a {colour} shape",
    "{size} {colour} {shape}",
)
_SIZE_WORDS = {"small": "small", "large": "large", "big": "large", "tiny": "small", "little": "small"}
_SHAPE_WORDS = {s: s for s in SHAPES} | {s + "s": s for s in SHAPES}
_BG_WORDS = {"white": "white", "black": "black", "grey": "grey", "gray": "grey"}


def _attrs(scene_or_attrs: Scene | dict) -> dict[str, Any]:
    if isinstance(scene_or_attrs, Scene):
        return {k: getattr(scene_or_attrs, k) for k in ATTRS}
    if not isinstance(scene_or_attrs, dict):
        raise WorldError(f"prompt_of needs a Scene or a dict of attributes, not {type(scene_or_attrs).__name__}")
    return {k: scene_or_attrs.get(k) for k in ATTRS}


def prompt_of(scene_or_attrs: Scene | dict, style: str = "plain", *, seed: int = 0) -> str:
    """A prompt for the scene. ``plain`` is the issue's template exactly (``"a red circle on a white
    background"``, the article kept as "a" so every plain prompt has one form); ``descriptive`` also names
    the size, in one of several phrasings; ``short`` names some attributes only. ``seed`` picks the
    template, deterministically. A dict may leave attributes out (``None``): templates needing them are
    skipped, and ``plain`` needs colour, shape and background."""
    a = _attrs(scene_or_attrs)
    if style == "plain":
        if None in (a["colour"], a["shape"], a["background"]):
            raise WorldError("a plain prompt needs colour, shape and background")
        return f"a {a['colour']} {a['shape']} on a {a['background']} background"
    if style == "descriptive":
        templates = _DESCRIPTIVE
        sc = " ".join(v for v in (a["size"], a["colour"]) if v)
        fill = {**a, "sc": sc}
        if a["shape"] is None or a["background"] is None or not sc:
            raise WorldError("a descriptive prompt needs shape, background and a colour or size")
    elif style == "short":
        fill = a
        templates = tuple(t for t in _SHORT if all(fill[k] for k in re.findall(r"{(\w+)}", t)))
        if not templates:
            raise WorldError("a short prompt needs at least a shape")
    else:
        raise WorldError(f"prompt style must be plain, descriptive or short, not {style!r}")
    return templates[seed % len(templates)].format(**fill)


def parse_prompt(prompt: str) -> dict[str, str | None]:
    """The attributes a prompt names (``None`` where it names none). A background counts only as
    "<white|black|grey> background": "on white paper" names no background, so the old synthetic world's
    prompts never parse as world prompts. The first word of each kind wins."""
    words = re.findall(r"[a-z]+", str(prompt).lower())
    out: dict[str, str | None] = dict.fromkeys(ATTRS)
    for i, w in enumerate(words):
        if out["colour"] is None and w in COLOURS:
            out["colour"] = w
        elif out["shape"] is None and w in _SHAPE_WORDS:
            out["shape"] = _SHAPE_WORDS[w]
        elif out["size"] is None and w in _SIZE_WORDS:
            out["size"] = _SIZE_WORDS[w]
        elif (out["background"] is None and w in _BG_WORDS and i + 1 < len(words)
              and words[i + 1] in ("background", "backdrop")):
            out["background"] = _BG_WORDS[w]
    return out


def is_world_prompt(prompt: str) -> bool:
    """Whether a prompt asks for a world scene: it names a background ("... on a white background") and a
    colour or shape. The stand-in judge scores such prompts by the truth reader and every other prompt by
    its old pixel statistics: "a red square" (the judge tests' prompt) and the old world's "a red circle as
    a sticker" keep their old scores. Short captions without a background are not world prompts here;
    :func:`truth` still reads them."""
    p = parse_prompt(prompt)
    return p["background"] is not None and (p["shape"] is not None or p["colour"] is not None)


def _pairs(combo: tuple[str, str, str]) -> list[tuple]:
    c, s, b = combo
    return [("cs", c, s), ("cb", c, b), ("sb", s, b)]


def _split() -> tuple[list[tuple], list[tuple]]:
    combos = list(itertools.product(COLOURS, SHAPES, BACKGROUNDS))
    order = combos[:]
    random.Random(_SPLIT_SEED).shuffle(order)
    want = round(HELD_OUT_SHARE * len(combos))
    held: set[tuple] = set()
    for combo in order:
        if len(held) == want:
            break
        if any(sum(x[i] == combo[i] for x in held) >= cap for i, cap in enumerate((2, 4, 4))):
            continue  # spread the held-out set: at most 2 per colour, 4 per shape and per background
        rest = [x for x in combos if x not in held and x != combo]
        seen = {p for x in rest for p in _pairs(x)}
        if all(p in seen for p in _pairs(combo)):
            held.add(combo)
    return [x for x in combos if x not in held], [x for x in combos if x in held]


TRAIN_COMBOS, HELD_OUT_COMBOS = _split()


def world_prompts(n: int, seed: int, *, held_out: bool = False) -> list[str]:
    """``n`` plain prompts from the training (or held-out) combinations, shuffled by ``seed``. All distinct
    while ``n`` is at most the pool's size (43 training, 11 held-out combinations); beyond that the list
    cycles through the pool again, in the same order."""
    if n < 0:
        raise WorldError(f"the number of prompts must be non-negative, not {n}")
    pool = list(HELD_OUT_COMBOS if held_out else TRAIN_COMBOS)
    random.Random(seed).shuffle(pool)
    return [prompt_of(dict(zip(("colour", "shape", "background"), pool[i % len(pool)]))) for i in range(n)]

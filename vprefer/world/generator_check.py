"""How right a world generator's samples read, by attribute and by prompt style (issue 28).

Each sample is scored against the *plain* prompt of the scene it was asked for, whatever the style of the
prompt it was given: a short prompt ("red circle") leaves the background to chance, and a prompt rewriter
is judged on what the user asked, not on what its rewrite asked. Prompts are the held-out combinations by
default, with sampling seeds no training step saw.
"""

from __future__ import annotations

import random
from typing import Sequence

import numpy as np
import torch

from vprefer.world.prompts import parse_prompt, prompt_of, world_prompts
from vprefer.world.reader import truth
from vprefer.world.scenes import SIZES

KEYS = ("colour_right", "shape_right", "background_right", "all_right")
STYLES = ("plain", "descriptive", "short")


def sample(pipe, prompts: Sequence[str], seed: int, *, steps: int = 20, guidance: float = 3.0, batch: int = 64):
    """PIL images, one per prompt, the i-th from seed ``seed + i`` (so a batch size never changes a sample)."""
    from diffusers import DDIMScheduler

    if "FlowMatch" not in type(pipe.scheduler).__name__:  # a flow-matching generator keeps its Euler sampler
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    images = []
    for i in range(0, len(prompts), batch):
        chunk = list(prompts[i:i + batch])
        gens = [torch.Generator().manual_seed(seed + i + j) for j in range(len(chunk))]
        images += pipe(chunk, num_inference_steps=steps, guidance_scale=guidance, generator=gens).images
    return images


def styled(plains: Sequence[str], style: str, seed: int) -> list[str]:
    """The same scenes asked in ``style``; a descriptive prompt names a size too, as the training captions do."""
    rng = random.Random(seed)
    out = []
    for p in plains:
        a = parse_prompt(p)
        a["size"] = rng.choice(SIZES) if style == "descriptive" else None
        out.append(prompt_of(a, style=style, seed=rng.randrange(1 << 30)))
    return out


def measure(pipe, *, n: int = 66, seed: int = 1, held_out: bool = True, styles: Sequence[str] = STYLES,
            steps: int = 20, guidance: float = 3.0) -> dict:
    """``{style: {colour_right, shape_right, background_right, all_right}}`` shares over ``n`` prompts (the
    held-out pool has 11 combinations, so n = 66 asks each six times, each time with a new seed)."""
    plains = world_prompts(n, seed=seed, held_out=held_out)
    result, images = {}, {}
    for style in styles:
        ims = sample(pipe, styled(plains, style, seed), 10_000 * seed, steps=steps, guidance=guidance)
        reads = [truth(p, im) for p, im in zip(plains, ims)]
        result[style] = {k: float(np.mean([r[k] for r in reads])) for k in KEYS}
        images[style] = ims
    return {"n": n, "held_out": held_out, "steps": steps, "guidance": guidance, "by_style": result,
            "images": images}

"""The learnable world (issue 28): one coloured shape on a plain background, prompts that name what a
generator can get wrong, and a truth reader that checks an image from its pixels.

A stage-9 stand-in like :mod:`vprefer.testing`: the demo, the CLI's stand-ins, tests and benchmarks use
it; the library never imports it (tests/test_architecture.py checks both). It exists so that the whole
loop — judge -> pairs -> VP-Score -> ReFL / DPO / GRPO — can be shown to make a generator better at what
a prompt asks, measured on a truth rather than on the reward it optimised.
"""

from vprefer.world.prompts import (HELD_OUT_COMBOS, TRAIN_COMBOS, is_world_prompt, parse_prompt, prompt_of,
                                   world_prompts)
from vprefer.world.reader import read_image, truth, truth_of_reading
from vprefer.world.scenes import BACKGROUNDS, COLOURS, SHAPES, SIZES, Scene, WorldError, draw, random_scene

__all__ = ["BACKGROUNDS", "COLOURS", "HELD_OUT_COMBOS", "SHAPES", "SIZES", "TRAIN_COMBOS", "Scene", "WorldError",
           "draw", "is_world_prompt", "parse_prompt", "prompt_of", "random_scene", "read_image", "truth",
           "truth_of_reading", "world_prompts"]

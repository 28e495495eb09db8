"""Does online GRPO move the world's generator at all? One GRPO run on the world's SD-architecture generator
against a chosen reward, then the truth on held-out prompts and seeds before -> after (issue 31's diagnosis).

Rewards: ``large`` (1 when the truth reader sees the shape drawn large: a direct, dense signal whose optimum is
known, to tell "the knobs cannot learn" from "the reward has no signal"), ``truth`` (the truth reader's prompt
following, the ceiling no user has) or a VP-Score folder. Prompts: the training combinations' plain prompts
(``--prompts plain``) or every closed-loop training prompt (``all``). Knobs: ``key=value`` recipe overrides
on ``rl/grpo-world.yaml``, e.g. ``inner_epochs=1 clip_range=1e-4 timestep_fraction=0.6 beta=0`` (the recipe
before issue 31's second measurement; ``beta=0`` alone gives the new knobs without the KL), typed and checked as
``vprefer rl grpo``'s. Prints, before and after: held-out "all right", colour, shape, the share drawn large and
"all right" among large and among small shapes (11 held-out combinations x 12 seeds, the closed
loop's evaluation sampler: DDIM, 20 steps, CFG 3).

    python benchmarks/grpo_world_knobs.py --reward large --steps 50 [key=value ...]
    python benchmarks/grpo_world_knobs.py --reward RUN/vp-score --steps 160
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def measure(pipe) -> dict:
    from vprefer.world import truth_eval
    from vprefer.world.loop import GUIDANCE, SAMPLE_STEPS, LoopConfig, held_out_items

    prompts, seeds = held_out_items(LoopConfig())
    r = truth_eval.read(pipe, prompts, seeds, steps=SAMPLE_STEPS, guidance=GUIDANCE)
    by = {z: [t["all_right"] for t, s in zip(r.truth, r.sizes) if s == z] for z in ("large", "small")}
    out = {k: r.share(k) for k in ("all_right", "colour_right", "shape_right")}
    out.update(large=r.large_share(), **{f"all_right_if_{z}": float(np.mean(v)) if v else float("nan")
                                         for z, v in by.items()})
    return out


def main() -> None:
    from vprefer.world.loop import GRPO_GEN_PROMPTS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reward", default="large", help="large | truth | a VP-Score folder")
    ap.add_argument("--prompts", choices=GRPO_GEN_PROMPTS, default="plain")
    ap.add_argument("--steps", type=int, default=50, help="GRPO updates")
    ap.add_argument("--out", help="keep the run here (default: a temporary folder)")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="recipe fields, e.g. learning_rate=3e-3")
    args = ap.parse_args()
    from vprefer.diffusion import load_pipeline
    from vprefer.rl import GRPOConfig, GRPOTrainer
    from vprefer.rl.common import config_from_yaml
    from vprefer.world.judge_check import LargeShapeReward, TruthReward
    from vprefer.world.loop import LoopConfig, grpo_gen_prompts
    from vprefer.world.models import copy_shipped

    over = {}  # the recipe's keys this script sets; the trailing key=value arguments (typed, checked) win
    if args.reward == "large":
        reward, over = LargeShapeReward(), {"reward_aspects": {"large": 1.0}}
    elif args.reward == "truth":
        reward = TruthReward()
    else:
        reward = args.reward
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        base = out / "world-sd" if (out / "world-sd").exists() else copy_shipped("sd", out / "world-sd")
        cfg = config_from_yaml(GRPOConfig, "grpo-world", output_dir=str(out / "grpo"), pretrained=str(base),
                               max_steps=args.steps, seed=0, report_to=[], disable_tqdm=True, cli_args=args.overrides,
                               **over)
        pipe = load_pipeline(str(base))
        before = measure(pipe)
        t = time.monotonic()
        GRPOTrainer(cfg, prompts=grpo_gen_prompts(LoopConfig(grpo_gen_prompts=args.prompts)), reward=reward).train()
        seconds = time.monotonic() - t
        pipe.load_lora_weights(str(out / "grpo"))
        after = measure(pipe)
    print(f"GRPO on the world generator, reward {args.reward}, {args.prompts} prompts, {args.steps} updates of "
          f"{cfg.groups_per_step} x {cfg.group_size} images, inner_epochs {cfg.inner_epochs}, clip {cfg.clip_range}, "
          f"minibatches {cfg.minibatches}, timestep_fraction {cfg.timestep_fraction}, lr {cfg.learning_rate}, beta {cfg.beta}, "
          f"scale_rewards {cfg.scale_rewards} ({seconds:.0f} s)")
    for k in before:
        print(f"  held-out {k}: {before[k]:.3f} -> {after[k]:.3f}")


if __name__ == "__main__":
    from vprefer.errors import VpreferError

    try:
        main()
    except VpreferError as e:  # a bad key=value or reward folder: one line, exit 1
        raise SystemExit(f"error: {e}") from None

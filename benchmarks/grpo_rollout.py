"""GRPO rollouts: images/s with every transition's log-probability kept ÷ the same pipeline's plain sampling
(issue 31; goal >= 0.8), measured in one run (rollout and plain sampling interleaved, the median of the
pairs' ratios) on the world's generators (SD-architecture: DDIM with eta 1;
SD3-architecture: the flow SDE), same prompts, steps, guidance and batch. Then, on the SD one, the share of
a whole GRPO update spent waiting on the reward (the trainer's ``time/reward_share``): a cheap local reward,
the stand-in judge in process, and the same judge behind ``RewardServer`` over HTTP.

    python benchmarks/grpo_rollout.py [--images 16] [--steps 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from vprefer.rl import GRPOConfig, GRPOTrainer
    from vprefer.rl.common import config_from_yaml
    from vprefer.testing.toy_rewards import RednessReward
    from vprefer.world.models import copy_shipped

    with tempfile.TemporaryDirectory() as tmp:
        for kind, recipe in (("sd", "grpo-world"), ("sd3", "grpo-world-flow")):
            base = copy_shipped(kind, Path(tmp) / f"world-{kind}")
            groups = max(1, args.images // 8)
            cfg = config_from_yaml(GRPOConfig, recipe, output_dir=str(Path(tmp) / kind), pretrained=str(base),
                                   num_steps=args.steps, group_size=8, groups_per_step=groups, report_to=[],
                                   reward_aspects={"redness": 1.0}, create_tiny_if_missing=False)
            tr = GRPOTrainer(cfg, prompts=["a red circle on a blue background"], reward=RednessReward())
            n = 8 * groups
            prompts = ["a red circle on a blue background"] * n
            def plain() -> None:
                with torch.no_grad():
                    tr.pipe(prompts, num_inference_steps=args.steps, guidance_scale=cfg.train_guidance_scale,
                            height=cfg.resolution, width=cfg.resolution, output_type="pt")

            tr.rollout(), plain()  # warm-up
            rolls, plains = [], []
            for _ in range(args.repeats):  # interleaved, so a load change on a shared machine hits both alike
                t = time.perf_counter()
                tr.rollout()
                rolls.append(time.perf_counter() - t)
                t = time.perf_counter()
                plain()
                plains.append(time.perf_counter() - t)
            roll, plain_s = statistics.median(rolls), statistics.median(plains)
            ratio = statistics.median(p / r for p, r in zip(plains, rolls))
            print(f"{kind}: {n} images x {args.steps} steps: rollout with log-probs {n / roll:.1f} images/s, plain "
                  f"sampling {n / plain_s:.1f} images/s, ratio {ratio:.2f} (median of {args.repeats} interleaved "
                  f"pairs; goal >= 0.8)", flush=True)
            if kind == "sd":
                reward_share(tr, args.repeats)


def reward_share(tr, updates: int) -> None:
    """The share of a whole GRPO update (rollout, rewards, optimizer steps) spent scoring, for a cheap local
    reward, the stand-in judge in process (reads every image), and the same judge behind a reward server on
    127.0.0.1 (PNG + HTTP + JSON each way): the trainer's own ``time/reward_share`` metric, mean of the updates."""
    from vprefer.rl.reward_server import RewardServer
    from vprefer.rl.rewards import load_rewards, reward_weights
    from vprefer.world.judge_check import JudgeReward

    def share(rewards) -> float:
        tr.rewards, tr.weights = rewards, reward_weights(rewards)
        tr.update()  # warm-up
        ms = [tr.update() for _ in range(updates)]
        return statistics.mean(m["time/reward_share"] for m in ms), statistics.mean(m["time/update_s"] for m in ms)

    from vprefer.rl.rewards import LoadedReward
    from vprefer.testing.toy_rewards import redness

    rows = [("redness, in process", [LoadedReward("redness", 1.0, redness)]),
            ("stand-in judge, in process", [LoadedReward("judge", 1.0, lambda p, px: JudgeReward().score_pixels(
                p, px, aspects=["prompt_following"])[:, 0])])]
    with RewardServer(JudgeReward(), {"prompt_following": 1.0}).start() as srv:
        rows.append(("stand-in judge, reward server (HTTP)", load_rewards([srv.url])))
        for name, rewards in rows:
            sh, upd = share(rewards)
            print(f"sd: share of a GRPO update waiting on the reward, {name}: {sh:.3f} "
                  f"(update {upd:.2f} s, {len(tr.prompts)} prompt(s), {tr.config.group_size * tr.config.groups_per_step} images)",
                  flush=True)


if __name__ == "__main__":
    main()

"""VP-Score on the learnable world: does a backbone that has learned the world make the reward model as good
as the judge it learns from? (issue 28, item 3)

One training run of world image sets for the 43 training prompts (pairs from the stand-in judge, with its
noise and first-position bias), one held-out run for the 11 held-out prompts (new triples). Each variant
trains VP-Score on the judge's pairs and is measured on the held-out run against the truth reader
(pairwise accuracy, truth ties skipped, 95% bootstrap CI over image sets), next to the judge's own
accuracy on the same held-out pairs:

* ``world``: reward/vp-score-world.yaml, LoRA on the shipped world CLIP (or ``--backbone DIR``);
* ``random-lora``: the same recipe on the same architecture, randomly initialised;
* ``tiny``: reward/vp-score-tiny.yaml as it is (a random tiny CLIP, trained fully);
* ``shuffled`` (with ``--shuffled DIR``): LoRA on a backbone pretrained with captions shuffled against
  images (``vprefer world pretrain-backbone --shuffle-captions``): the wrong version.

    python benchmarks/world_reward.py [--sets 3 --images 6 --epochs N] [--shuffled DIR] [--only world,tiny]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from vprefer.reward import VPScore
from vprefer.reward.recipe import RewardRecipe
from vprefer.reward.train import train_reward
from vprefer.testing.stand_ins import ensure_backbone
from vprefer.world import world_prompts
from vprefer.world.backbone import new_backbone
from vprefer.world.reward_check import accuracy, judge_accuracy, write_world_run

ASPECTS = ("prompt_following", "overall", "aesthetics", "fidelity", "harmlessness")


def recipe_for(variant: str, tmp: Path, args) -> RewardRecipe:
    r = RewardRecipe.load("vp-score-tiny" if variant == "tiny" else "vp-score-world")
    r.training.num_train_epochs = args.epochs or r.training.num_train_epochs
    r.training.logging_steps, r.training.save_steps = 10_000, 10_000
    r.annotators = ["judge"]
    if variant == "world":
        r.backbone.name_or_path = args.backbone or str(tmp / "world-clip")
    elif variant == "random-lora":
        model, _, _ = new_backbone(tmp / "random-clip")
        model.save_pretrained(tmp / "random-clip", safe_serialization=True)
        r.backbone.name_or_path, r.backbone.tiny = str(tmp / "random-clip"), None
    elif variant == "shuffled":
        r.backbone.name_or_path, r.backbone.tiny = args.shuffled, None
    else:
        r.backbone.name_or_path = str(tmp / "tiny-clip")
    ensure_backbone(r)
    return r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", type=int, default=3, help="image sets per training prompt (43 prompts)")
    ap.add_argument("--held-out-sets", type=int, default=8, help="image sets per held-out prompt (11 prompts)")
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--epochs", type=float, default=None, help="default: each recipe's own")
    ap.add_argument("--judge-noise", type=float, default=1.0)
    ap.add_argument("--bias", type=float, default=0.4)
    ap.add_argument("--backbone", help="a world CLIP folder (default: the shipped one)")
    ap.add_argument("--shuffled", help="a backbone pretrained with --shuffle-captions, for the wrong version")
    ap.add_argument("--only", default="", help="comma-separated variants")
    ap.add_argument("--runs", help="keep the two world runs in this folder and reuse them when there")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: fastest on a shared machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    variants = [v for v in ("world", "random-lora", "tiny", "shuffled") if v != "shuffled" or args.shuffled]
    if args.only:
        variants = [v for v in variants if v in args.only.split(",")]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        t0 = time.perf_counter()
        runs = Path(args.runs) if args.runs else tmp
        train, held = runs / "train" / "run", runs / "held" / "run"
        if not (train.exists() and held.exists()):
            write_world_run(runs / "train", world_prompts(43, 0), sets_per_prompt=args.sets, images_per_set=args.images,
                            judge_noise=args.judge_noise, position_bias=args.bias)
            write_world_run(runs / "held", world_prompts(11, 0, held_out=True), sets_per_prompt=args.held_out_sets,
                            images_per_set=args.images, seed=1, judge_noise=args.judge_noise,
                            position_bias=args.bias, held_out=True)
        judge = judge_accuracy(held)
        print(f"runs written in {time.perf_counter() - t0:.0f} s; judge noise {args.judge_noise}, "
              f"position bias {args.bias}; judge's own held-out accuracy vs truth: "
              + ", ".join(f"{a} {judge[a]:.3f}" for a in ASPECTS), flush=True)
        results = {"judge": judge}
        for v in variants:
            t = time.perf_counter()
            r = recipe_for(v, tmp, args)
            s = train_reward(r, [train], tmp / f"vp-{v}")
            acc = accuracy(VPScore.from_pretrained(tmp / f"vp-{v}", device="cpu"), held)
            results[v] = acc
            print(f"{v:12s} {s['train_pairs']} pairs, {s['steps']} steps, {time.perf_counter() - t:.0f} s: " + ", ".join(
                f"{a} {acc[a]['accuracy']:.3f} [{acc[a]['ci'][0]:.3f}, {acc[a]['ci'][1]:.3f}] "
                f"({acc[a]['accuracy'] / judge[a]:.2f}x judge)" for a in ASPECTS), flush=True)
        print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

"""GRPO prompt optimisation on stand-ins: does a trained rewriter beat the original prompt and zero-shot upsampling?

Two figures, one run, CPU:

1. Learning check with a known optimum: a toy reward (share of the letter "e" in the rewrite, optimum 1.0);
   greedy rewrites of held-out prompts before vs after GRPO.
2. VP-Score: a tiny VP-Score trained on the synthetic world's truth pairs, a second one trained on a separately
   generated world as the held-out reward (reward hacking shows as a rising training reward with a flat
   held-out reward). Held-out prompts are scored four ways through the same path (images from the tiny SD
   pipeline, prompt-following against the original prompt): the original prompt, the zero-shot upsampler's
   rewrites (the stand-in judge server answering `prompts upsample`), the untrained rewriter, the trained one.
   Ratios are "trained rewriter minus original" over "zero-shot upsampler minus original".

    python benchmarks/prompt_opt.py [--steps 40]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    a = ap.parse_args()

    from vprefer.annotate import AnnotatorPreset
    from vprefer.ingest import ingest
    from vprefer.prompts import sample_prompts, upsample
    from vprefer.recipes import load_config
    from vprefer.reward import VPScore
    from vprefer.reward.recipe import RewardRecipe
    from vprefer.reward.train import train_reward
    from vprefer.rl.prompt_opt import PromptOptConfig, PromptOptTrainer, RewriteReward, evaluate
    from vprefer.store import Run
    from vprefer.judge_server.server import JudgeServer
    from vprefer.testing.stand_ins import ensure_backbone, ensure_causal_lm, ensure_pipeline
    from vprefer.testing.synthetic import write_dataset, write_truth_pairs
    from vprefer.testing.toy_rewards import LetterReward

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ensure_causal_lm(str(tmp / "lm"), True)
        ensure_pipeline(str(tmp / "sd"), True)

        def config(**kw):
            c = load_config(PromptOptConfig, "grpo-prompts-tiny", "rl", **kw)
            c.policy, c.generator["pretrained"] = str(tmp / "lm"), str(tmp / "sd")
            return c

        held = ["a red circle on a plain background", "a blue square as a flat icon", "a green triangle drawn simply",
                "a yellow circle on a poster", "a purple square in the centre of the frame", "an orange triangle"]
        train_prompts = ["a red square", "a blue circle", "a green circle", "a yellow triangle", "a purple circle",
                         "an orange square", "a red triangle", "a blue triangle"]

        # 1. known optimum
        c = config(output_dir=str(tmp / "toy"), max_steps=30, learning_rate=1e-2, aspect_weights={"aesthetics": 1.0},
                   eval_prompts=held, disable_tqdm=True)
        toy = PromptOptTrainer(c, prompts=train_prompts * 2, reward=LetterReward("e")).train()
        print(f"toy reward (share of 'e', optimum 1.0), greedy rewrites of {len(held)} held-out prompts: "
              f"original {toy['eval/original']:.3f}, before {toy['before/reward']:.3f} -> after {toy['after/reward']:.3f}")

        # 2. VP-Score, with a second one as the held-out reward
        models = {}
        for name, seed in (("reward", 0), ("holdout", 7)):
            ingest(write_dataset(tmp / f"syn-{name}", 150, 4, size=32, seed=seed), tmp / name)
            write_truth_pairs(tmp / name)
            r = RewardRecipe.load("vp-score-tiny")
            r.backbone.name_or_path, r.training.seed = str(tmp / f"clip-{name}"), seed
            r.training.num_train_epochs, r.training.val_fraction, r.training.logging_steps = 3, 0.0, 10_000
            ensure_backbone(r)
            train_reward(r, [tmp / name], tmp / f"vps-{name}")
            models[name] = VPScore.from_pretrained(tmp / f"vps-{name}")
        srv = JudgeServer().start()  # the zero-shot upsampler, through the real client path
        try:
            (tmp / "held.txt").write_text("\n".join(held) + "\n")
            sample_prompts(tmp / "held.txt", tmp / "up")
            upsample(tmp / "up", AnnotatorPreset.load("local-judge", base_url=srv.base_url), style="descriptive")
        finally:
            srv.stop()
        pr = Run(tmp / "up").read("prompts")
        text = dict(zip(pr["prompt_id"], pr["prompt"]))
        up_by_text = {text[json.loads(m)["parent"]]: t for t, m, src in pr.select("prompt", "meta", "source").iter_rows()
                      if src == "upsample:descriptive"}
        zero_shot = [up_by_text.get(h, h) for h in held]
        c = config(output_dir=str(tmp / "rw"), max_steps=a.steps, eval_prompts=held, disable_tqdm=True)
        tr = PromptOptTrainer(c, prompts=train_prompts * 4, reward=models["reward"], holdout_reward=models["holdout"])
        s = tr.train()
        hold = RewriteReward(models["holdout"], tr.pipe, c)
        base = evaluate(tr.reward_fn, held, {"original": held, "zero-shot upsampler": zero_shot})
        hbase = evaluate(hold, held, {"original": held, "zero-shot upsampler": zero_shot})
    rows = [("original prompt", base["original"], hbase["original"]),
            ("zero-shot upsampler (stand-in)", base["zero-shot upsampler"], hbase["zero-shot upsampler"]),
            ("rewriter before GRPO", s["before/reward"], s["before/holdout_reward"]),
            (f"rewriter after {a.steps} GRPO steps", s["after/reward"], s["after/holdout_reward"])]
    print(f"VP-Score on {len(held)} held-out prompts (mean over {c.images_per_rewrite} images per prompt):")
    for name, r, h in rows:
        print(f"  {name:<34} reward {r:+.4f}   held-out reward {h:+.4f}")
    gain_up, gain_rw = base["zero-shot upsampler"] - base["original"], s["after/reward"] - base["original"]
    print(f"gain over the original prompt: trained rewriter {gain_rw:+.4f}, zero-shot upsampler {gain_up:+.4f}"
          + (f" (ratio {gain_rw / gain_up:.2f})" if abs(gain_up) > 1e-9 else ""))
    print(f"training reward (sampled rewrites) {s['train/rewards'][0]:+.4f} -> {s['train/rewards'][-1]:+.4f}; "
          f"examples after: {s['after/examples'][:2]}")
    print(f"ran in {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()

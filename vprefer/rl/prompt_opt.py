"""Prompt optimisation with TRL's GRPO: train the prompt *rewriter* against VP-Score.

A causal LM (with a peft LoRA) rewrites a short user prompt into the prompt
that makes the generator score best (TIPO's prompt optimisation; DALL-E 3's
prompt upsampling, learned instead of zero-shot). The reward of a rewrite is
VP-Score of images the diffusers generator makes from it:

* **prompt_following is scored against the original prompt**, so a rewrite
  cannot drift from what the user asked (a rewrite that describes a different,
  prettier scene loses here);
* the other aspects are scored with the rewrite (the prompt the image was made
  from, as VP-Score was trained);
* per-aspect weights from the recipe, normalised by their absolute sum, minus
  ``length_penalty`` per word beyond ``max_words`` or short of ``min_words`` (an
  empty rewrite makes unconditional images; with a generator that ignores text,
  as the tiny stand-in does, it would otherwise tie the original prompt).

Several images per rewrite, generated in one batch across the GRPO group. Every
rewrite of one reward call (one generation batch: whole groups, on every
process) gets the same seeds, so a group is compared on the same noise; each
call gets new seeds (``image_seed + call * images_per_rewrite + k``), so the
rewriter cannot fit two noise draws; evaluation uses its own seeds
(``eval_image_seed + k``, far from any training seed), so before/after would
show a rewriter that did. TRL does the rest: group-normalised advantages, the
clipped objective, generation, logging.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from trl import GRPOConfig

from vprefer.prompts.local import completion_text, load_policy, load_tokenizer, messages, rewrite  # noqa: F401
from vprefer.recipes import RecipeError

@dataclass
class PromptOptConfig(GRPOConfig):
    policy: str = field(default="Qwen/Qwen2.5-0.5B-Instruct", metadata={"help": "causal LM with a chat template"})
    style: str = "descriptive"
    generator: dict = field(default_factory=lambda: {"name": "sd15", "pretrained": "stable-diffusion-v1-5/stable-diffusion-v1-5",
                                                     "steps": 20, "guidance": 7.5, "resolution": 512})
    images_per_rewrite: int = 2
    image_seed: int = field(default=0, metadata={"help": "first training seed; each reward call takes the next "
                                                         "images_per_rewrite seeds"})
    eval_image_seed: int = field(default=2**31, metadata={"help": "held-out seeds for before/after evaluation"})
    aspect_weights: dict = field(default_factory=lambda: {"prompt_following": 1.0, "aesthetics": 0.5, "fidelity": 0.5})
    max_words: int = 80
    min_words: int = 3
    length_penalty: float = field(default=0.02, metadata={"help": "reward lost per word beyond max_words"})
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_targets: list = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    eval_prompts: list = field(default_factory=list)
    create_tiny_if_missing: bool = field(default=False, metadata={"help": "tests/demo: `policy` is a tiny stand-in "
                                                                          "the CLI builds if absent"})

    def __post_init__(self):  # before the policy, generator or reward loads: one line naming the key
        g = self.generator if isinstance(self.generator, dict) else {}
        check = [(isinstance(self.generator, dict) and bool(g.get("pretrained")),
                  f"generator must be a mapping with a pretrained pipeline, got generator={self.generator!r}"),
                 (int(g.get("resolution", 512)) % 8 == 0 and int(g.get("resolution", 512)) >= 8,
                  f"generator.resolution must be a positive multiple of 8, got {g.get('resolution')!r}"),
                 (int(g.get("steps", 20)) >= 1, f"generator.steps must be >= 1, got {g.get('steps')!r}"),
                 (float(g.get("guidance", 7.5)) >= 0, f"generator.guidance must be >= 0, got {g.get('guidance')!r}"),
                 (self.images_per_rewrite >= 1, f"images_per_rewrite must be >= 1, got {self.images_per_rewrite}"),
                 (0 <= self.min_words <= self.max_words, f"need 0 <= min_words <= max_words, got min_words="
                                                         f"{self.min_words}, max_words={self.max_words}"),
                 (self.length_penalty >= 0, f"length_penalty must be >= 0, got {self.length_penalty}"),
                 (self.lora_rank >= 1, f"lora_rank must be >= 1, got {self.lora_rank}"),
                 (bool(self.aspect_weights), "aspect_weights must name at least one aspect, e.g. {overall: 1.0}")]
        for ok, why in check:
            if not ok:
                raise RecipeError(why)
        super().__post_init__()


class RewriteReward:
    """The GRPO reward function: VP-Score of generated images (see the module docstring)."""

    __name__ = "vp_score"  # TRL names the logged reward column after the function

    def __init__(self, reward, pipe, config: PromptOptConfig):
        self.reward, self.pipe, self.c = reward, pipe, config
        self.calls = 0  # reward calls so far: the training seeds move on with each
        missing = [a for a in config.aspect_weights if a not in reward.aspects]
        if missing:
            raise RecipeError(f"aspect_weights {missing} are not aspects of the reward model {reward.aspects}")

    def training_seeds(self) -> list[int]:
        """The next reward call's seeds (the same for every rewrite in it)."""
        n = self.c.images_per_rewrite
        seeds = [self.c.image_seed + self.calls * n + k for k in range(n)]
        self.calls += 1
        return seeds

    def eval_seeds(self) -> list[int]:
        return [self.c.eval_image_seed + k for k in range(self.c.images_per_rewrite)]

    @torch.no_grad()
    def images(self, prompts: Sequence[str], seeds: Sequence[int]) -> torch.Tensor:
        """One image per seed for every prompt (the same seeds for each), one batch."""
        g = self.c.generator
        n = len(seeds)
        texts = [p for p in prompts for _ in range(n)]
        gens = [torch.Generator("cpu").manual_seed(int(s)) for _ in prompts for s in seeds]
        out = self.pipe(texts, num_inference_steps=g.get("steps", 20), guidance_scale=g.get("guidance", 7.5),
                        height=g.get("resolution", 512), width=g.get("resolution", 512), generator=gens,
                        output_type="pt")
        return out.images.float().clamp(0, 1)

    @torch.no_grad()
    def score(self, originals: Sequence[str], rewrites: Sequence[str], seeds: Sequence[int] | None = None) -> list[float]:
        """Reward per rewrite; ``seeds`` default to the next training call's."""
        c, n = self.c, self.c.images_per_rewrite
        seeds = self.training_seeds() if seeds is None else list(seeds)
        px = self.images(rewrites, seeds).to(self.reward.device)
        orig = [o for o in originals for _ in range(n)]
        rew = [r for r in rewrites for _ in range(n)]
        w = c.aspect_weights
        total = torch.zeros(len(orig), device=px.device)
        if w.get("prompt_following"):
            total += w["prompt_following"] * self.reward.score_pixels(orig, px, aspects=["prompt_following"])[:, 0]
        others = [a for a in w if a != "prompt_following" and w[a]]
        if others:
            s = self.reward.score_pixels(rew, px, aspects=others)
            total += (s * torch.tensor([w[a] for a in others], device=s.device)).sum(1)
        total = total / sum(abs(v) for v in w.values())
        per = total.view(len(rewrites), n).mean(1).cpu().tolist()
        return [r - c.length_penalty * (max(0, len(t.split()) - c.max_words) + max(0, c.min_words - len(t.split())))
                for r, t in zip(per, rewrites)]

    def __call__(self, prompts, completions, original, **_) -> list[float]:
        return self.score(list(original), [completion_text(x) for x in completions])


def evaluate(reward_fn: RewriteReward, originals: Sequence[str], rewrites: dict[str, Sequence[str]]) -> dict[str, float]:
    """Mean reward of each set of rewrites of ``originals`` (e.g. original / zero-shot / trained), on the
    held-out evaluation seeds."""
    out = {}
    for name, r in rewrites.items():
        s = reward_fn.score(originals, list(r), seeds=reward_fn.eval_seeds())
        out[name] = sum(s) / len(s)
    return out


class PromptOptTrainer:
    """``PromptOptConfig`` + prompts + a VP-Score -> a LoRA rewriter, with before/after on held-out prompts."""

    def __init__(self, config: PromptOptConfig, *, prompts: Sequence[str], reward, pipe=None, holdout_reward=None):
        from vprefer.diffusion import load_pipeline, stand_in_must_exist
        from vprefer.rl.rewards import load_reward

        if not prompts:
            raise RecipeError("prompt optimisation needs prompts to rewrite")
        messages(prompts[0], config.style)  # validates the style early
        stand_in_must_exist(config.generator["pretrained"], bool(config.generator.get("create_tiny_if_missing")))
        self.c, self.prompts = config, list(prompts)
        self.reward = load_reward(reward)
        self.holdout = load_reward(holdout_reward)
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        self.pipe = pipe if pipe is not None else load_pipeline(config.generator["pretrained"], device=dev)
        self.reward_fn = RewriteReward(self.reward, self.pipe, config)
        self.out = Path(config.output_dir)

    def _evaluate(self, model, tok, tag: str) -> dict:
        ev = self.c.eval_prompts
        if not ev:
            return {}
        was_training = model.training
        model.eval()
        rw = rewrite(model, tok, ev, self.c.style)
        model.train(was_training)
        m = {f"{tag}/reward": evaluate(self.reward_fn, ev, {"x": rw})["x"], f"{tag}/examples": list(zip(ev, rw))[:4]}
        if self.holdout is not None:
            m[f"{tag}/holdout_reward"] = evaluate(RewriteReward(self.holdout, self.pipe, self.c), ev, {"x": rw})["x"]
        return m

    def train(self) -> dict:
        from datasets import Dataset
        from peft import LoraConfig
        from trl import GRPOTrainer

        c = self.c
        self.out.mkdir(parents=True, exist_ok=True)
        tok = load_tokenizer(c.policy)
        ds = Dataset.from_list([{"prompt": messages(p, c.style), "original": p} for p in self.prompts])
        tr = GRPOTrainer(model=c.policy, reward_funcs=self.reward_fn, args=c, train_dataset=ds, processing_class=tok,
                         peft_config=LoraConfig(r=c.lora_rank, lora_alpha=c.lora_alpha, target_modules=list(c.lora_targets),
                                                task_type="CAUSAL_LM"))
        summary: dict = {"policy": c.policy, "style": c.style, "generator": c.generator,
                         "aspect_weights": c.aspect_weights}
        ev = c.eval_prompts
        if ev:
            summary["eval/original"] = evaluate(self.reward_fn, ev, {"x": ev})["x"]
        summary.update(self._evaluate(tr.model, tok, "before"))
        tr.train()
        summary.update(self._evaluate(tr.model, tok, "after"))
        summary["train/rewards"] = [h["reward"] for h in tr.state.log_history if "reward" in h]
        summary["main_process"] = tr.accelerator.is_main_process
        if not summary["main_process"]:  # under a launcher the rewriter and its records are written once
            return summary
        tr.model.save_pretrained(self.out)  # adapter_config.json + adapter_model.safetensors
        tok.save_pretrained(self.out)
        (self.out / "vprefer_prompt_opt.json").write_text(json.dumps(
            {"policy": c.policy, "style": c.style, "steps": tr.state.global_step, **{k: v for k, v in summary.items()
                                                                                    if k.startswith(("eval", "before", "after"))}},
            indent=2, default=str))
        return summary

"""Online GRPO on the generator (DDPO / DanceGRPO on SD, Flow-GRPO on SD3 / FLUX) against any list of rewards.

One update: sample ``group_size`` images for each of ``groups_per_step`` prompts with the policy as it is
(the rollout turned stochastic: DDIM with ``eta`` for SD, the flow ODE's marginal-preserving SDE with
``noise_level`` for rectified flow), keeping every transition and its log-probability; score them with every
reward of the list; centre each reward **within its prompt's group** and scale it by the group's or the
batch's std (``scale_rewards``; rewards gathered over processes first, so a group is normalised once wherever
its images were made) and combine; then, for ``inner_epochs`` passes of ``minibatches`` optimizer steps (each
on its share of the shuffled images), recompute the log-probability of the sampled transitions at a random
``timestep_fraction`` of the steps with gradient and minimise the clipped surrogate (+ ``beta`` times the KL
to the reference: the denoiser with its LoRA disabled). The first optimizer step of an update sees a ratio
of exactly 1 (logged as ``grpo/ratio_first``; a trainer whose recomputed log-probs drift shows it at once; with
``minibatches`` > 1, 1 up to rounding, as a share of the batch sums its matrix products in another order).

Rewards need not be differentiable: a VP-Score, a Python callable, or a judge behind HTTP
(``vprefer serve-reward``, any server speaking its protocol) all work (``vprefer.rl.rewards``). Evaluation
(before/after grids, the reward list and the held-out reward on eval prompts) is the base trainer's, so reward
hacking shows as the training reward rising while the held-out one falls: ``vprefer.rl.hacking`` warns and,
with ``stop_on_hacking``, ends the run there.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch

from vprefer.errors import InputError
from vprefer.recipes import RecipeError
from vprefer.rl.common import DiffusionTrainerBase, DiffusionTrainingConfig
from vprefer.rl.grpo_math import (SCALES, combine_rewards, ddim_step_with_logprob, flow_sde_step_with_logprob,
                                  grpo_loss, timestep_subset)
from vprefer.diffusion import decode, encode
from vprefer.rl.noising import rollout_scheduler


@dataclass
class GRPOConfig(DiffusionTrainingConfig):
    rewards: list = field(default_factory=list, metadata={"help": "reward list (vprefer.rl.rewards): VP-Score "
                                                                  "folders, module:function, http://server; empty: --reward with reward_aspects"})
    group_size: int = field(default=4, metadata={"help": "images per prompt (the group advantages normalise over)"})
    groups_per_step: int = field(default=2, metadata={"help": "prompts per update on each process"})
    num_steps: int = field(default=10, metadata={"help": "sampling steps of a training rollout (Flow-GRPO: 10)"})
    eta: float = field(default=1.0, metadata={"help": "SD: DDIM stochasticity of the rollout (DDPO: 1)"})
    noise_level: float = field(default=0.7, metadata={"help": "flow: the SDE's noise level (Flow-GRPO: 0.7)"})
    timestep_fraction: float = field(default=0.6, metadata={"help": "share of the steps trained on (DanceGRPO: 0.6)"})
    clip_range: float = field(default=1e-4, metadata={"help": "PPO clip of the importance ratio (Flow-GRPO: 1e-4)"})
    adv_clip: float = field(default=5.0, metadata={"help": "advantages clamped to +-this (DDPO: 5)"})
    scale_rewards: str = field(default="group", metadata={
        "help": "divide each group's centred rewards by the group's std (group: DDPO, DanceGRPO) or by the "
                "batch's (batch: Flow-GRPO's global_std; a group pushes in proportion to how much its images differ)"})
    beta: float = field(default=0.0, metadata={"help": "weight of the KL to the reference (LoRA off)"})
    inner_epochs: int = field(default=1, metadata={"help": "passes over each rollout (PPO epochs)"})
    minibatches: int = field(default=1, metadata={
        "help": "optimizer steps per pass: the rollout's images shuffled and split into this many parts "
                "(DDPO/Flow-GRPO split a sampling epoch into several steps); inner_epochs x minibatches steps"})
    train_guidance_scale: float = field(default=4.5, metadata={"help": "CFG in rollouts and updates (1 = off)"})

    def __post_init__(self):
        problems = [f"{k} must be at least 1 (got {getattr(self, k)})" for k in
                    ("group_size", "groups_per_step", "num_steps", "inner_epochs", "minibatches")
                    if getattr(self, k) < 1]
        if self.minibatches >= 1 and (self.group_size * self.groups_per_step) % self.minibatches:
            problems.append(f"minibatches ({self.minibatches}) must divide the images of an update on each process "
                            f"(groups_per_step x group_size = {self.group_size * self.groups_per_step})")
        if self.group_size < 2:
            problems.append("group_size must be at least 2: a group of one has no relative advantage")
        if not 0 < self.timestep_fraction <= 1:
            problems.append(f"timestep_fraction must be in (0, 1] (got {self.timestep_fraction})")
        if not 0 < self.eta <= 1 or not self.noise_level > 0:
            problems.append(f"eta must be in (0, 1] and noise_level > 0: a deterministic step has no log-probability "
                            f"(got eta={self.eta}, noise_level={self.noise_level})")
        if self.clip_range <= 0 or self.adv_clip <= 0 or self.beta < 0 or self.train_guidance_scale < 0:
            problems.append("need clip_range > 0, adv_clip > 0, beta >= 0, train_guidance_scale >= 0")
        if self.scale_rewards not in SCALES:
            problems.append(f"scale_rewards must be one of {', '.join(SCALES)} (got {self.scale_rewards!r})")
        if problems:
            raise RecipeError("; ".join(problems))
        super().__post_init__()


@dataclass
class Rollout:
    """One update's samples: (B = groups x group_size) prompts, every step's input and output latents and the
    old log-probabilities, (B,) advantages."""
    prompts: list[str]
    groups: list[int]
    xs: list[torch.Tensor]
    nexts: list[torch.Tensor]
    old_lp: torch.Tensor  # (steps, B)
    pixels: torch.Tensor
    cond: object = None  # the prompts' conditioning, encoded once for the rollout and reused by the updates
    advantages: torch.Tensor | None = None


class GRPOTrainer(DiffusionTrainerBase):
    config: GRPOConfig

    def __init__(self, config: GRPOConfig, *, prompts: Sequence[str], **kw):
        super().__init__(config, **kw)
        from vprefer.rl.rewards import ScoreOnlyReward, load_rewards, reward_weights

        self.prompts = list(prompts)
        if not self.prompts:
            raise InputError("GRPO needs training prompts")
        if config.rewards:
            self.rewards = load_rewards(config.rewards)
        elif isinstance(self.reward, ScoreOnlyReward):  # --reward http://... or module:function: as a list of one
            self.rewards = [self.reward.reward]
        elif self.reward is not None:
            from vprefer.rl.rewards import LoadedReward
            from vprefer.rl.rewards import weighted_reward

            rm, w = self.reward, config.reward_aspects
            self.rewards = [LoadedReward(_reward_label(rm), 1.0,
                                         lambda p, px: weighted_reward(rm, p, px.to(self.acc.device), w))]
        else:
            raise InputError("GRPO needs a reward: a `rewards:` list in the recipe or --reward")
        self.weights = reward_weights(self.rewards)
        if config.train_guidance_scale > 1 and not self.fam.supports_cfg:
            raise RecipeError(f"{config.pretrained}: this {self.fam.name} pipeline has no classifier-free guidance "
                              "in training; set train_guidance_scale: 1 (and embedded_guidance for FLUX.1-dev)")
        self.sched = rollout_scheduler(self.pipe, config.resolution)

    # ------------------------------------------------------------------ the stochastic step
    def transition(self, out: torch.Tensor, i: int, x: torch.Tensor, prev: torch.Tensor | None = None,
                   generator: torch.Generator | None = None):
        """Step ``i`` of the rollout as a Gaussian transition -> (next, log_prob, mean, std)."""
        c, s = self.config, self.sched
        if self.fam.stochastic_sampler == "flow_sde":
            return flow_sde_step_with_logprob(out, s.sigmas[i], s.sigmas[i + 1], x, c.noise_level, prev, generator)
        t = int(s.timesteps[i])
        prev_t = t - s.config.num_train_timesteps // s.num_inference_steps
        return ddim_step_with_logprob(s, out, t, prev_t, x, c.eta, prev, generator)

    def _predict(self, x: torch.Tensor, i: int, cond) -> torch.Tensor:
        t = self.sched.timesteps[i]
        return self.fam.predict(self.unet, self.sched.scale_model_input(x, t), t, cond, self.config.train_guidance_scale)

    # ------------------------------------------------------------------ one update
    @torch.no_grad()
    def rollout(self) -> Rollout:
        c = self.config
        picked = [self.rng.choice(self.prompts) for _ in range(c.groups_per_step)]
        prompts = [p for p in picked for _ in range(c.group_size)]
        groups = [k for k in range(c.groups_per_step) for _ in range(c.group_size)]
        cond = encode(self.pipe, prompts, cfg=c.train_guidance_scale > 1, size=c.resolution)
        self.sched.set_timesteps(c.num_steps, device=self.acc.device)
        x = torch.randn(self.fam.latent_shape(len(prompts), c.resolution), generator=self.gen).to(self.acc.device)
        x = x * self.sched.init_noise_sigma
        xs, nexts, lps = [], [], []
        for i in range(len(self.sched.timesteps)):
            nxt, lp, _, _ = self.transition(self._predict(x, i, cond), i, x, generator=self.gen)
            xs.append(x), nexts.append(nxt.to(x.dtype)), lps.append(lp)
            x = nexts[-1]
        return Rollout(prompts, groups, xs, nexts, torch.stack(lps), decode(self.pipe, x).float().clamp(0, 1), cond)

    def advantages(self, roll: Rollout) -> dict:
        """Rewards of every process's images, normalised within each prompt's group, this process's share back."""
        from vprefer.rl.rewards import score_rewards

        scores = score_rewards(self.rewards, roll.prompts, roll.pixels)
        rank, n = self.acc.process_index, len(roll.prompts)
        groups = torch.tensor([g + rank * self.config.groups_per_step for g in roll.groups], device=self.acc.device)
        gathered = {k: self.acc.gather(v.to(self.acc.device)).cpu() for k, v in scores.items()}
        all_groups = self.acc.gather(groups).cpu().tolist()
        adv, per = combine_rewards(gathered, self.weights, all_groups, clip=self.config.adv_clip,
                                   scale=self.config.scale_rewards)
        roll.advantages = adv[rank * n:(rank + 1) * n].to(self.acc.device)
        m = {f"reward/{k}": v.mean().item() for k, v in gathered.items()}
        m.update({f"reward/{k}_group_std": _group_std(v, all_groups) for k, v in gathered.items()})
        return m

    def step_loss(self, roll: Rollout, i: int, cond, part: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """The loss of step ``i`` on the rollout's images ``part`` (all when None; ``cond`` is theirs)."""
        c = self.config
        x, nxt, old_lp, adv = roll.xs[i], roll.nexts[i], roll.old_lp[i], roll.advantages
        if part is not None:
            x, nxt, old_lp, adv = x[part], nxt[part], old_lp[part], adv[part]
        _, lp, mean, std = self.transition(self._predict(x, i, cond), i, x, prev=nxt)
        ref_mean = None
        if c.beta:
            with torch.no_grad(), self.reference() as ref:
                t = self.sched.timesteps[i]
                out = self.fam.predict(ref, self.sched.scale_model_input(x, t), t, cond, c.train_guidance_scale)
                ref_mean = self.transition(out, i, x, prev=nxt)[2]
        return grpo_loss(lp, old_lp, adv, c.clip_range, mean=mean, ref_mean=ref_mean, std=std, beta=c.beta)

    def update(self) -> dict:
        """One rollout, then ``inner_epochs`` passes over it of ``minibatches`` optimizer steps each, every step
        on its own share of the shuffled images (the lr schedule steps once per update)."""
        c = self.config
        lr = self.lr_sched.get_last_lr()[0]
        t0 = time.perf_counter()
        roll = self.rollout()
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # the rollout's queued GPU work belongs to the rollout, not to the reward
        t1 = time.perf_counter()
        m = self.advantages(roll)
        t_reward = time.perf_counter() - t1
        cond = roll.cond
        stats: list[dict] = []
        n_opt = 0
        for _ in range(c.inner_epochs):
            parts = [None] if c.minibatches == 1 else torch.randperm(len(roll.prompts), generator=self.gen).to(
                self.acc.device).chunk(c.minibatches)
            for part in parts:
                if part is not None:  # the part's own conditioning: simpler than slicing every family's
                    cond = encode(self.pipe, [roll.prompts[k] for k in part.tolist()],
                                  cfg=c.train_guidance_scale > 1, size=c.resolution)
                subset = timestep_subset(len(roll.xs), c.timestep_fraction, self.gen).tolist()
                for j, i in enumerate(subset):
                    sync = contextlib.nullcontext() if j == len(subset) - 1 else self.acc.no_sync(self.unet)
                    with sync:
                        loss, st = self.step_loss(roll, i, cond, part)
                        self.acc.backward(loss / len(subset))
                    stats.append({**st, "opt_step": n_opt})
                self.optimizer_step()
                n_opt += 1
        self.lr_sched.step()
        first = [s for s in stats if s["opt_step"] == 0]
        m.update({f"grpo/{k}": sum(s[k] for s in stats) / len(stats) for k in ("policy_loss", "kl", "clip_frac",
                                                                                 "approx_kl", "ratio_mean")})
        m["grpo/ratio_first"] = sum(s["ratio_mean"] for s in first) / len(first)
        m["reward/train"] = m.get(f"reward/{self.rewards[0].name}", 0.0)
        total = time.perf_counter() - t0  # where an update's time goes: a slow (remote) reward shows here
        m.update({"time/rollout_s": t1 - t0, "time/reward_s": t_reward, "time/update_s": total,
                  "time/reward_share": t_reward / total})
        m["lr"] = lr
        return m

    def train_objective(self, prompts: list[str], imgs: torch.Tensor, scores: torch.Tensor | None) -> dict:
        """Every reward of the list on the eval images, and their weighted sum as ``eval/train_reward``."""
        from vprefer.rl.rewards import score_rewards

        means = {k: v.mean().item() for k, v in score_rewards(self.rewards, prompts, imgs).items()}
        total = sum(self.weights[k] * v for k, v in means.items()) / (sum(map(abs, self.weights.values())) or 1.0)
        return {**{f"eval/train/{k}": v for k, v in means.items()}, "eval/train_reward": total}

    def provenance(self) -> dict:
        return {"rewards": [r.name for r in self.rewards], "group_size": self.config.group_size,
                "sampler": self.fam.stochastic_sampler}


def _reward_label(rm) -> str:
    """A reward object's name in logs: its ``name`` if it has one, ``vpscore`` for a VP-Score, else its class's
    name (a truth reader or a judge passed in from Python must not show up as ``reward/vpscore``)."""
    from vprefer.reward import VPScore

    return getattr(rm, "name", None) or ("vpscore" if isinstance(rm, VPScore) else type(rm).__name__.lower())


def _group_std(r: torch.Tensor, groups: list[int]) -> float:
    """Mean within-group spread of a reward: 0 means every group tied, so GRPO has nothing to learn from."""
    by: dict[int, list[float]] = {}
    for g, v in zip(groups, r.tolist()):
        by.setdefault(g, []).append(v)
    return float(sum(torch.tensor(v).std(unbiased=False).item() for v in by.values()) / max(1, len(by)))

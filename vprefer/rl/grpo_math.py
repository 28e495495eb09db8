"""GRPO for diffusion / flow generators (DDPO, Flow-GRPO, DanceGRPO), as small pure functions.

Nothing here knows a pipeline: a trainer owns the model calls and hands tensors in. Sampling becomes a
Markov chain of Gaussian transitions ``x_{t-1} ~ N(mean(x_t, model_output), std^2)``, so every step has a
log-probability and the policy-gradient machinery of PPO/GRPO applies to it.

The call sequence of one GRPO epoch (what a trainer built on the generator interface does)::

    # 1. rollouts, no grad, the policy as it is now ("old"); G images per prompt, group_ids = prompt index
    for each step i:  out = model(x, t_i)                          # CFG applied by the trainer
                      x_next, old_lp[:, i], _, _ = flow_sde_step_with_logprob(out, s_i, s_{i+1}, x, noise_level,
                                                                         generator=g)   # or ddim_step_with_logprob
                      keep x[:, i], x_next[:, i]
    # 2. rewards (vprefer.rl.rewards.score_rewards -> {name: (B,)}), gathered over processes, then
    adv, per_reward = combine_rewards(scores, weights, group_ids, clip=5.0)   # or group_advantages(r, group_ids)
    # 3. updates: for each of num_inner_epochs, for i in timestep_subset(num_steps, fraction, g):
                      out = model(x[:, i], t_i)                                # with grad
                      _, lp, mean, std = flow_sde_step_with_logprob(out, s_i, s_{i+1}, x[:, i], noise_level,
                                                                    prev_sample=x_next[:, i])
                      ref_mean from the frozen model (LoRA disabled) the same way when beta > 0
                      loss, stats = grpo_loss(lp, old_lp[:, i], adv, clip_range, mean=mean, ref_mean=ref_mean,
                                              std=std, beta=beta)
                      backward, clip grad norm, step
    On the first update of an epoch the ratio must be exactly 1 (``stats["ratio_mean"] == 1``): recomputing
    the sampled transition with the same weights reproduces its log-prob bit for bit (tested).

Conventions. ``log_prob`` is per sample: the Gaussian log density of each element, **averaged** over all
non-batch dimensions (as DDPO and Flow-GRPO do; a sum would scale the ratio's exponent by the latent size).
``std`` is the transition's own standard deviation (broadcastable to the sample). A transition with
``std == 0`` (eta = 0, noise_level = 0) is deterministic: its mean is the ODE step, its log-prob is NaN.
Everything is computed in float32 (bf16 overflows in the mean, as Flow-GRPO notes).
"""

from __future__ import annotations

import math
from typing import Hashable, Mapping

import torch

from vprefer.errors import InputError

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _per_sample(x, like: torch.Tensor) -> torch.Tensor:
    """A scalar or (B,) value as a float32 tensor shaped (B|1, 1, ..., 1) to broadcast against ``like``."""
    x = torch.as_tensor(x, dtype=torch.float32, device=like.device)
    return x.reshape(-1, *([1] * (like.ndim - 1)))


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, std^2) per element, averaged over all but the batch dimension -> (B,).
    ``x`` is detached: the sampled transition is data, the gradient flows through ``mean`` (and ``std``)."""
    lp = -((x.detach() - mean) ** 2) / (2 * std ** 2) - torch.log(std) - _LOG_SQRT_2PI
    return lp.mean(dim=tuple(range(1, lp.ndim)))


def _noise(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    dev = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, dtype=torch.float32, device=dev).to(device)


def _transition(mean, std, prev_sample, generator):
    if prev_sample is None:
        prev_sample = mean + std * _noise(mean.shape, generator, mean.device)
    prev_sample = prev_sample.float()
    return prev_sample, gaussian_log_prob(prev_sample, mean, std), mean, std


def ddim_step_with_logprob(schedule, model_output: torch.Tensor, t, prev_t, sample: torch.Tensor, eta: float = 1.0,
                           prev_sample: torch.Tensor | None = None, generator: torch.Generator | None = None, *,
                           prediction_type: str | None = None, final_alpha_cumprod: float | None = None):
    """One DDIM step (Song et al. eq. 12) as a Gaussian transition, DDPO style -> (prev_sample, log_prob, mean, std).

    ``schedule`` is a diffusers scheduler with ``alphas_cumprod`` (DDIM, DDPM, ...; its ``prediction_type``,
    ``final_alpha_cumprod`` and ``clip_sample`` are used) or a bare ``alphas_cumprod`` tensor (then
    ``prediction_type`` defaults to epsilon and the step after t=0 has ``final_alpha_cumprod`` = 1).
    ``t`` and ``prev_t`` are training timesteps (ints or (B,) tensors; ``prev_t < 0`` = the final step).
    ``eta`` scales the DDIM variance: 0 is the deterministic DDIM step (mean == ``DDIMScheduler.step``), 1 is
    DDPM's posterior variance. ``prev_sample`` given: its log-prob under this transition (recomputation);
    otherwise one is drawn from ``generator``. log_prob as in the module docstring (mean over non-batch dims).
    """
    if not 0 <= eta <= 1:
        raise InputError(f"ddim_step_with_logprob: eta must be in [0, 1]; got {eta}")
    clip = None
    if hasattr(schedule, "alphas_cumprod"):
        cfg = schedule.config
        if getattr(cfg, "thresholding", False):
            raise InputError("ddim_step_with_logprob: dynamic thresholding is not supported; use a scheduler "
                             "with thresholding=False")
        prediction_type = prediction_type or cfg.prediction_type
        if final_alpha_cumprod is None:
            final_alpha_cumprod = float(schedule.final_alpha_cumprod) if hasattr(schedule, "final_alpha_cumprod") else 1.0
        if getattr(cfg, "clip_sample", False):
            clip = float(cfg.clip_sample_range)
        alphas = schedule.alphas_cumprod
    else:
        alphas = torch.as_tensor(schedule)
    prediction_type = prediction_type or "epsilon"
    final_alpha_cumprod = 1.0 if final_alpha_cumprod is None else final_alpha_cumprod
    alphas = alphas.to(device=sample.device, dtype=torch.float32)
    x, out = sample.float(), model_output.float()
    t = torch.as_tensor(t, device=sample.device).long()
    prev_t = torch.as_tensor(prev_t, device=sample.device).long()
    a_t = _per_sample(alphas[t], x)
    a_prev = _per_sample(torch.where(prev_t >= 0, alphas[prev_t.clamp(min=0)],
                                     torch.tensor(final_alpha_cumprod, device=x.device)), x)
    b_t = 1 - a_t
    if prediction_type == "epsilon":
        x0, eps = (x - b_t.sqrt() * out) / a_t.sqrt(), out
    elif prediction_type == "v_prediction":
        x0, eps = a_t.sqrt() * x - b_t.sqrt() * out, a_t.sqrt() * out + b_t.sqrt() * x
    elif prediction_type == "sample":
        x0 = out
        eps = (x - a_t.sqrt() * x0) / b_t.sqrt()
    else:
        raise InputError(f"prediction_type must be epsilon, v_prediction or sample; got {prediction_type!r}")
    if clip is not None:  # as diffusers does: x0 clipped, epsilon kept from the model
        x0 = x0.clamp(-clip, clip)
    variance = (1 - a_prev) / b_t * (1 - a_t / a_prev)
    std = eta * variance.sqrt()
    mean = a_prev.sqrt() * x0 + (1 - a_prev - std ** 2).clamp(min=0).sqrt() * eps
    return _transition(mean, std, prev_sample, generator)


def flow_sde_step_with_logprob(velocity: torch.Tensor, sigma, sigma_next, sample: torch.Tensor, noise_level: float = 0.7,
                               prev_sample: torch.Tensor | None = None, generator: torch.Generator | None = None):
    """One step of Flow-GRPO's marginal-preserving SDE for rectified flow -> (prev_sample, log_prob, mean, std).

    The flow is ``x_s = (1 - s) x_0 + s eps``, the model predicts the velocity ``eps - x_0``; ``sigma`` > ``sigma_next``
    (scalars or (B,) tensors, the scheduler's sigmas, shift applied). With ``dt = sigma_next - sigma`` < 0::

        std_dev_t = noise_level * sqrt(sigma / (1 - sigma))        (sigma = 1: 1 - sigma_next in the denominator,
                                                                    Flow-GRPO's sigmas[1] on the first step)
        mean      = x (1 + std_dev_t^2 dt / (2 sigma)) + v (1 + std_dev_t^2 (1 - sigma) / (2 sigma)) dt
        std       = std_dev_t sqrt(-dt)                            (the transition's std; Flow-GRPO returns std_dev_t)

    noise_level -> 0 gives the Euler step ``x + v dt`` of ``FlowMatchEulerDiscreteScheduler``; with the true
    velocity the SDE keeps the ODE's marginals (tested on a Gaussian world).
    """
    x, v = sample.float(), velocity.float()
    s, s_next = _per_sample(sigma, x), _per_sample(sigma_next, x)
    if bool((s_next >= s).any()) or bool((s > 1).any()) or bool((s_next < 0).any()):
        raise InputError("flow_sde_step_with_logprob: need 1 >= sigma > sigma_next >= 0 (a denoising step)")
    dt = s_next - s
    std_dev_t = noise_level * torch.sqrt(s / (1 - torch.where(s == 1, s_next, s)))
    mean = x * (1 + std_dev_t ** 2 / (2 * s) * dt) + v * (1 + std_dev_t ** 2 * (1 - s) / (2 * s)) * dt
    return _transition(mean, std_dev_t * torch.sqrt(-dt), prev_sample, generator)


# ---------------------------------------------------------------------------------------------- advantages
def _group_index(group_ids, n: int, device) -> torch.Tensor:
    if isinstance(group_ids, torch.Tensor):
        ids = group_ids.reshape(-1).tolist()
    else:
        ids = list(group_ids)
    if len(ids) != n:
        raise InputError(f"group_ids has {len(ids)} entries for {n} rewards")
    first: dict[Hashable, int] = {}
    return torch.tensor([first.setdefault(g, len(first)) for g in ids], device=device, dtype=torch.long)


SCALES = ("group", "batch")


def group_advantages(rewards: torch.Tensor, group_ids, eps: float = 1e-4, clip: float | None = None,
                     scale: str = "group") -> torch.Tensor:
    """GRPO advantages: each reward centred **within its prompt's group**, then scaled.

    ``scale="group"``: ``(r - mean_g) / (std_g + eps)`` with the group's population std (DDPO's per-prompt
    stat tracking; DanceGRPO, with Bessel's correction). A group whose images differ only by the reward's noise
    is blown up to unit spread, so it pushes as hard as a group with a real difference. ``scale="batch"``:
    ``(r - mean_g) / (std + eps)`` with the population std of the rewards over the whole batch (Flow-GRPO's
    ``global_std``, its default; TRL's ``scale_rewards="batch"``, there with Bessel's correction): a group's
    push is proportional to how much its images differ. Either way the advantages are zero-mean in every group.

    ``group_ids``: one hashable per reward (prompt index or the prompt itself), (B,). A group whose rewards
    are all equal (or of one image) gets 0. ``clip``: advantages clamped to [-clip, clip] (DDPO: 5).
    Rewards must be gathered over processes first: a group split across ranks would be normalised twice.
    """
    if scale not in SCALES:
        raise InputError(f"scale must be one of {SCALES} (got {scale!r})")
    r = rewards.detach().float().reshape(-1)
    idx = _group_index(group_ids, r.numel(), r.device)
    k = int(idx.max()) + 1 if r.numel() else 0
    count = torch.zeros(k, device=r.device).index_add_(0, idx, torch.ones_like(r))
    mean = torch.zeros(k, device=r.device).index_add_(0, idx, r) / count
    centred = r - mean[idx]
    if scale == "batch":
        adv = centred / (r.std(unbiased=False) + eps) if r.numel() else centred
    else:
        std = (torch.zeros(k, device=r.device).index_add_(0, idx, centred ** 2) / count).sqrt()
        adv = centred / (std[idx] + eps)
    return adv.clamp(-clip, clip) if clip is not None else adv


def combine_rewards(rewards: Mapping[str, torch.Tensor], weights: Mapping[str, float] | None, group_ids,
                    eps: float = 1e-4, clip: float | None = None,
                    scale: str = "group") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Several rewards into one advantage, GDPO style: each reward is centred within the group and scaled
    first (``scale``, as ``group_advantages``: either way a reward with a large scale cannot drown the others),
    the per-reward advantages are summed with ``weights`` (missing name = weight 1), and the sum is
    standardised over the batch (it stays zero-mean in every group). Returns (advantage (B,), {name: its
    group advantage} for logging). ``clip`` applies to the combined advantage."""
    if not rewards:
        raise InputError("combine_rewards: no rewards given")
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(rewards))
    if unknown:
        raise InputError(f"reward weights name {unknown}, which are not among the rewards {sorted(rewards)}")
    per = {name: group_advantages(r, group_ids, eps=eps, scale=scale) for name, r in rewards.items()}
    total = sum(float(weights.get(name, 1.0)) * a for name, a in per.items())
    total = (total - total.mean()) / (total.std(unbiased=False) + eps) if total.numel() > 1 else total * 0
    return (total.clamp(-clip, clip) if clip is not None else total), per


def timestep_subset(num_steps: int, fraction: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Which sampling steps to train on (DanceGRPO's/Flow-GRPO's ``timestep_fraction``): a random
    ``max(1, round(num_steps * fraction))`` of ``range(num_steps)`` without repetition, in sampling order."""
    if num_steps < 1 or not 0 < fraction <= 1:
        raise InputError(f"timestep_subset: need num_steps >= 1 and 0 < fraction <= 1; got {num_steps}, {fraction}")
    k = max(1, round(num_steps * fraction))
    return torch.randperm(num_steps, generator=generator)[:k].sort().values


# ---------------------------------------------------------------------------------------------- the loss
def grpo_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_range: float, *,
              mean: torch.Tensor | None = None, ref_mean: torch.Tensor | None = None, std=None,
              beta: float = 0.0) -> tuple[torch.Tensor, dict]:
    """The PPO-clip surrogate of GRPO for one step of the chain, plus an optional KL to the reference.

    ``ratio = exp(log_prob - old_log_prob)`` (both (B,)); ``policy = mean(max(-A r, -A clip(r, 1-c, 1+c)))``
    i.e. ``-min(r A, clip(r) A)``. With ``beta > 0`` the loss adds ``beta * KL``, the KL between this step's
    Gaussian transition under the policy and under the frozen reference, which share ``std``::

        KL = mean_over_elements((mean - ref_mean)^2) / (2 std^2)      (averaged over the batch)

    the exact KL per element (consistent with ``log_prob``'s averaging). Flow-GRPO divides by ``std_dev_t``
    rather than the transition's std, i.e. its beta is this one's times ``-dt``: pass ``std=std / sqrt(-dt)``
    to reuse its beta values. ``advantages`` are used as given (clip them in ``group_advantages``).
    Stats (floats): policy_loss, kl, ratio_mean, clip_frac (share with ``|r - 1| > c``), approx_kl
    (``0.5 mean((lp - old)^2)``, as DDPO logs it).
    """
    diff = log_prob - old_log_prob.detach()
    ratio = torch.exp(diff)
    adv = advantages.detach().to(ratio.dtype)
    policy = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip_range, 1 + clip_range)).mean()
    kl = torch.zeros((), device=ratio.device)
    if beta:
        if mean is None or ref_mean is None or std is None:
            raise InputError("grpo_loss: beta > 0 needs mean, ref_mean and std")
        std = _per_sample(std, mean) if not isinstance(std, torch.Tensor) or std.ndim <= 1 else std.float()
        per = ((mean.float() - ref_mean.detach().float()) ** 2 / (2 * std ** 2))
        kl = per.mean(dim=tuple(range(1, per.ndim))).mean()
    loss = policy + beta * kl
    with torch.no_grad():
        stats = {"policy_loss": policy.item(), "kl": kl.item(), "ratio_mean": ratio.mean().item(),
                 "clip_frac": ((ratio - 1).abs() > clip_range).float().mean().item(),
                 "approx_kl": (0.5 * diff ** 2).mean().item()}
    return loss, stats


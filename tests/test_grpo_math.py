"""GRPO's math for diffusion / flow generators, checked by hand and against diffusers: a wrong GRPO fails here.

Wrong versions each test was seen to catch (made by hand once): the advantage's sign flipped; advantages
normalised over the batch instead of the group; the ratio not clipped; the log-prob of a transition other than
the one sampled (a fresh draw on recomputation); the KL term with the wrong sign; a sum instead of a mean over
the latent; the SDE's drift correction with the wrong sign.
"""

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler
from scipy.stats import norm

from vprefer.errors import InputError
from vprefer.rl.grpo_math import (combine_rewards, ddim_step_with_logprob, flow_sde_step_with_logprob,
                                  group_advantages, grpo_loss, timestep_subset)


def sd_scheduler(prediction_type="epsilon"):
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------ one step, by hand
def test_ddim_log_prob_is_the_gaussian_density_by_hand():
    alphas = torch.tensor([0.99, 0.9, 0.7, 0.5])
    x, eps = torch.randn(2, 3, 2, 2, generator=gen(1)), torch.randn(2, 3, 2, 2, generator=gen(2))
    prev, lp, mean, std = ddim_step_with_logprob(alphas, eps, 3, 1, x, eta=0.8, generator=gen(3))
    a, ap = 0.5, 0.9
    var = (1 - ap) / (1 - a) * (1 - a / ap)
    s = 0.8 * math.sqrt(var)
    x0 = (x.numpy() - math.sqrt(1 - a) * eps.numpy()) / math.sqrt(a)
    m = math.sqrt(ap) * x0 + math.sqrt(1 - ap - s * s) * eps.numpy()
    np.testing.assert_allclose(mean.numpy(), m, rtol=1e-5, atol=1e-6)
    assert float(std.flatten()[0]) == pytest.approx(s, rel=1e-6)
    by_hand = norm.logpdf(prev.numpy(), loc=m, scale=s).mean(axis=(1, 2, 3))  # mean over the latent, per sample
    np.testing.assert_allclose(lp.numpy(), by_hand, rtol=1e-5)
    # a per-sample timestep (B,) gives each sample its own transition
    _, _, m2, s2 = ddim_step_with_logprob(alphas, eps, torch.tensor([3, 2]), torch.tensor([1, 0]), x, eta=0.8)
    assert torch.allclose(m2[0], mean[0]) and float(s2[1].flatten()[0]) == pytest.approx(
        0.8 * math.sqrt((1 - 0.99) / (1 - 0.7) * (1 - 0.7 / 0.99)), rel=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_matches_diffusers_deterministic_and_with_noise(prediction_type):
    sch = sd_scheduler(prediction_type)
    sch.set_timesteps(10)
    stride = sch.config.num_train_timesteps // 10
    x = torch.randn(2, 4, 8, 8, generator=gen(0))
    for k, t in enumerate(sch.timesteps):
        out = torch.randn(2, 4, 8, 8, generator=gen(10 + k))
        prev, _, mean, _ = ddim_step_with_logprob(sch, out, t, t - stride, x, eta=0.0)
        ref = sch.step(out, t, x, eta=0.0).prev_sample
        torch.testing.assert_close(mean, ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(prev, ref, rtol=1e-5, atol=1e-5)
        z = torch.randn(2, 4, 8, 8, generator=gen(99))  # the same draw diffusers is given as variance_noise
        prev1, lp1, _, _ = ddim_step_with_logprob(sch, out, t, t - stride, x, eta=1.0, generator=gen(99))
        torch.testing.assert_close(prev1, sch.step(out, t, x, eta=1.0, variance_noise=z).prev_sample,
                                   rtol=1e-5, atol=1e-5)
        assert torch.isfinite(lp1).all()
        x = ref


def test_flow_sde_log_prob_by_hand_and_its_euler_limit():
    x, v = torch.randn(3, 2, 4, 4, generator=gen(1)), torch.randn(3, 2, 4, 4, generator=gen(2))
    sigma, nxt, level = 0.6, 0.45, 0.7
    prev, lp, mean, std = flow_sde_step_with_logprob(v, sigma, nxt, x, level, generator=gen(3))
    sd = level * math.sqrt(sigma / (1 - sigma))
    dt = nxt - sigma
    m = x.numpy() * (1 + sd ** 2 / (2 * sigma) * dt) + v.numpy() * (1 + sd ** 2 * (1 - sigma) / (2 * sigma)) * dt
    np.testing.assert_allclose(mean.numpy(), m, rtol=1e-5, atol=1e-6)
    assert float(std.flatten()[0]) == pytest.approx(sd * math.sqrt(-dt), rel=1e-6)
    by_hand = norm.logpdf(prev.numpy(), loc=m, scale=sd * math.sqrt(-dt)).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(lp.numpy(), by_hand, rtol=1e-5)

    sch = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sch.set_timesteps(8)
    for i, t in enumerate(sch.timesteps):
        s, s_next = sch.sigmas[i], sch.sigmas[i + 1]
        euler = sch.step(v, t, x).prev_sample
        _, _, m0, _ = flow_sde_step_with_logprob(v, s, s_next, x, noise_level=0.0)
        torch.testing.assert_close(m0, euler, rtol=1e-5, atol=1e-5)
        _, _, m_small, _ = flow_sde_step_with_logprob(v, s, s_next, x, noise_level=1e-3)
        assert (m_small - euler).abs().max() < 1e-4  # tends to the Euler step
        x = euler


def test_flow_sde_is_safe_at_sigma_one_and_refuses_a_step_backwards():
    x, v = torch.randn(2, 4, generator=gen(1)), torch.randn(2, 4, generator=gen(2))
    prev, lp, mean, std = flow_sde_step_with_logprob(v, 1.0, 0.9, x, 0.7, generator=gen(3))
    assert torch.isfinite(prev).all() and torch.isfinite(lp).all()
    assert float(std.flatten()[0]) == pytest.approx(0.7 * math.sqrt(1 / (1 - 0.9)) * math.sqrt(0.1), rel=1e-6)
    with pytest.raises(InputError, match="denoising step"):
        flow_sde_step_with_logprob(v, 0.5, 0.6, x, 0.7)


# ------------------------------------------------------------------------------------------ the whole chain
def test_the_sde_and_ddim_keep_the_marginals_of_a_gaussian_world():
    """With the exact model of a Gaussian world (x0 ~ N(0, 0.5^2)) the stochastic samplers must end at
    the data's variance, as the deterministic ones do: a wrong drift correction or std does not."""
    s0, n = 0.5, 200_000
    g = gen(0)
    x = torch.randn(n, 1, generator=g)
    sigmas = torch.linspace(1, 0, 41)
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        var = (1 - s) ** 2 * s0 ** 2 + s ** 2
        v = (s - (1 - s) * s0 ** 2) / var * x  # E[eps - x0 | x_s]
        x, _, _, _ = flow_sde_step_with_logprob(v, s, s_next, x, 0.7, generator=g)
    assert float(x.var()) == pytest.approx(s0 ** 2, rel=0.05)

    # DDIM's defining property (Song et al. eq. 7): given x0 and the noise that made x_t, a step to prev_t
    # lands on q(x_prev | x0) = N(sqrt(a_prev) x0, 1 - a_prev) for every eta (the deterministic DDIM included)
    a = sd_scheduler().alphas_cumprod
    x0 = torch.randn(n, 1, generator=g) * s0
    for t, prev_t in ((901, 801), (501, 301), (101, 1)):
        e = torch.randn(n, 1, generator=g)
        xt = a[t].sqrt() * x0 + (1 - a[t]).sqrt() * e
        for eta in (0.0, 0.5, 1.0):
            x, _, _, _ = ddim_step_with_logprob(a, e, t, prev_t, xt, eta=eta, generator=g)
            resid = x - a[prev_t].sqrt() * x0
            assert abs(float(resid.mean())) < 0.01 and float(resid.var()) == pytest.approx(float(1 - a[prev_t]), rel=0.02)


@pytest.mark.parametrize("kind", ["ddim", "flow"])
def test_the_ratio_is_exactly_one_before_the_first_update(kind):
    x, out = torch.randn(4, 3, 8, 8, generator=gen(1)), torch.randn(4, 3, 8, 8, generator=gen(2))

    def step(prev=None, g=None):
        if kind == "ddim":
            return ddim_step_with_logprob(sd_scheduler(), out, 501, 401, x, eta=1.0, prev_sample=prev, generator=g)
        return flow_sde_step_with_logprob(out, 0.7, 0.6, x, 0.7, prev_sample=prev, generator=g)

    prev, old_lp, _, _ = step(g=gen(5))
    _, lp, _, _ = step(prev=prev)  # the sampled transition, recomputed with the same model output
    assert torch.equal(lp, old_lp)  # bit for bit
    _, stats = grpo_loss(lp, old_lp, torch.randn(4), 1e-4)
    assert stats["ratio_mean"] == 1.0 and stats["clip_frac"] == 0.0 and stats["approx_kl"] == 0.0
    other, _, _, _ = step(g=gen(6))  # another transition from the same state has another log-prob
    assert not torch.allclose(step(prev=other)[1], old_lp)


# ------------------------------------------------------------------------------------------ advantages
def test_advantages_are_normalised_within_each_prompts_group():
    rewards = torch.tensor([10.0, 11.0, 12.0, 13.0, 0.0, 0.2, 0.1, 0.3, 5.0, 5.0])
    groups = ["a", "a", "a", "a", "b", "b", "b", "b", "c", "c"]
    adv = group_advantages(rewards, groups)
    for g, sl in (("a", slice(0, 4)), ("b", slice(4, 8))):
        assert abs(float(adv[sl].mean())) < 1e-6, g
        assert float(adv[sl].std(unbiased=False)) == pytest.approx(1.0, abs=1e-3), g
        assert torch.equal(adv[sl].argsort(), rewards[sl].argsort()), g  # the sign and order follow the reward
    assert (adv[:4] < 0).sum() == 2 and (adv[4:8] > 0).sum() == 2  # not one sign per group (batch statistics)
    assert torch.equal(adv[8:], torch.zeros(2))  # a group of equal rewards gives nothing
    by_hand = (np.array([0.0, 0.2, 0.1, 0.3]) - 0.15) / (np.std([0.0, 0.2, 0.1, 0.3]) + 1e-4)
    np.testing.assert_allclose(adv[4:8].numpy(), by_hand, rtol=1e-5)
    assert torch.equal(group_advantages(rewards, torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])), adv)
    clipped = group_advantages(torch.tensor([0.0] * 30 + [1.0]), [0] * 31, clip=5.0)
    assert float(clipped.max()) == 5.0 and float(group_advantages(torch.tensor([0.0] * 30 + [1.0]), [0] * 31).max()) > 5
    with pytest.raises(InputError, match="group_ids"):
        group_advantages(rewards, groups[:3])


def test_batch_scaling_weights_a_group_by_how_much_its_images_differ():
    """``scale="batch"``: centred in the group, divided by the batch's std. A group whose images differ by
    the reward's noise (spread 0.01) gets a hundredth of the push of one with a real difference (spread 1);
    under group scaling both get unit spread (the wrong version for a "batch" recipe)."""
    rewards = torch.tensor([0.50, 0.51, 0.49, 0.50, 0.0, 1.0, 2.0, 1.0])
    groups = [0, 0, 0, 0, 1, 1, 1, 1]
    adv = group_advantages(rewards, groups, scale="batch")
    centred = torch.tensor([0.0, 0.01, -0.01, 0.0, -1.0, 0.0, 1.0, 0.0])
    torch.testing.assert_close(adv, centred / (float(np.std(rewards.numpy())) + 1e-4))  # Flow-GRPO's global_std
    for sl in (slice(0, 4), slice(4, 8)):
        assert abs(float(adv[sl].mean())) < 1e-6 and torch.equal(adv[sl].argsort(), rewards[sl].argsort())
    assert float(adv[4:].std() / adv[:4].std()) == pytest.approx(100.0, rel=1e-3)
    by_group = group_advantages(rewards, groups)  # the default: both groups pushed alike
    assert float(by_group[4:].std() / by_group[:4].std()) == pytest.approx(1.0, rel=0.02)  # eps: 1e-4
    per = combine_rewards({"r": rewards}, None, groups, scale="batch")[1]["r"]
    torch.testing.assert_close(per, adv)  # the recipe's knob reaches every reward of a list
    with pytest.raises(InputError, match="scale"):
        group_advantages(rewards, groups, scale="prompt")


def test_several_rewards_are_normalised_each_within_the_group_before_weighting():
    big = torch.tensor([2000.0, 3000.0, 1000.0, 0.0, 5.0, 9.0])  # a reward on a scale 1000x the other's
    small = torch.tensor([0.3, 0.1, 0.2, 0.2, 0.1, 0.0])
    groups = [0, 0, 0, 1, 1, 1]
    adv, per = combine_rewards({"big": big, "small": small}, {"big": 1.0, "small": 1.0}, groups)
    assert torch.allclose(per["big"], group_advantages(big, groups)) and torch.allclose(per["small"],
                                                                                        group_advantages(small, groups))
    total = per["big"] + per["small"]
    torch.testing.assert_close(adv, (total - total.mean()) / (total.std(unbiased=False) + 1e-4))
    assert adv[0] > adv[1] > adv[2]  # 0: middling on big, best on small; the sum of raw rewards would pick 1
    for sl in (slice(0, 3), slice(3, 6)):
        assert abs(float(adv[sl].mean())) < 1e-5
    only_small, _ = combine_rewards({"big": big, "small": small}, {"big": 0.0}, groups)
    assert torch.equal(only_small.argsort(), per["small"].argsort())
    with pytest.raises(InputError, match="not among the rewards"):
        combine_rewards({"big": big}, {"bigg": 1.0}, groups)


def test_timestep_subset():
    s = timestep_subset(10, 0.6, gen(0))
    assert len(s) == 6 and len(set(s.tolist())) == 6 and s.tolist() == sorted(s.tolist()) and 0 <= s.min() < s.max() < 10
    assert torch.equal(s, timestep_subset(10, 0.6, gen(0))) and timestep_subset(10, 1.0).tolist() == list(range(10))
    assert len(timestep_subset(3, 0.01)) == 1
    with pytest.raises(InputError):
        timestep_subset(10, 0.0)


# ------------------------------------------------------------------------------------------ the loss
def test_the_loss_is_the_clipped_surrogate_by_hand():
    old = torch.zeros(4)
    lp = torch.log(torch.tensor([1.5, 0.5, 1.1, 0.5])).requires_grad_(True)
    adv = torch.tensor([1.0, -1.0, 1.0, 1.0])
    loss, stats = grpo_loss(lp, old, adv, clip_range=0.2)
    # -min(r A, clip(r) A): [-min(1.5, 1.2), -min(-0.5, -0.8), -min(1.1, 1.1), -min(0.5, 0.8)]
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 1.1 - 0.5) / 4, rel=1e-6)
    assert stats["clip_frac"] == 0.75 and stats["ratio_mean"] == pytest.approx(0.9, rel=1e-6)
    loss.backward()
    # clipped where the ratio ran past the bound in the advantage's direction: no gradient there
    assert lp.grad[0] == 0 and lp.grad[1] == 0
    # elsewhere descent raises the log-prob of a positive advantage (gradient -A r / B)
    assert lp.grad[2].item() == pytest.approx(-1.1 / 4, rel=1e-5) and lp.grad[3].item() == pytest.approx(-0.5 / 4, rel=1e-5)


def test_the_kl_pulls_towards_the_reference():
    mean = (torch.zeros(2, 3, 4) + 0.3).requires_grad_(True)
    ref = torch.zeros(2, 3, 4)
    std = torch.full((2, 1, 1), 0.5)
    lp = torch.zeros(2)
    loss, stats = grpo_loss(lp, lp, torch.zeros(2), 0.1, mean=mean, ref_mean=ref, std=std, beta=0.5)
    assert stats["kl"] == pytest.approx(0.09 / (2 * 0.25), rel=1e-5) and loss.item() == pytest.approx(0.5 * 0.18, rel=1e-5)
    loss.backward()
    assert (mean.grad > 0).all()  # a descent step moves the mean back towards the reference
    far, _ = grpo_loss(lp, lp, torch.zeros(2), 0.1, mean=mean + 1, ref_mean=ref, std=std, beta=0.5)
    assert far.item() > loss.item()
    with pytest.raises(InputError, match="beta > 0 needs"):
        grpo_loss(lp, lp, torch.zeros(2), 0.1, beta=0.1)


def test_a_few_grpo_updates_raise_the_reward_of_a_toy_flow_policy():
    """A policy of one learnable velocity offset, 4 SDE steps, reward = the final sample's mean: GRPO must raise
    the reward (a flipped advantage or ratio lowers it)."""
    theta = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=0.05)
    g = gen(0)
    sigmas = torch.linspace(1, 0.2, 5)
    groups = torch.arange(8).repeat_interleave(4)

    def mean_reward():
        with torch.no_grad():
            x = torch.randn(256, 2, generator=gen(1))
            for s, s2 in zip(sigmas[:-1], sigmas[1:]):
                x = flow_sde_step_with_logprob(-x + theta, s, s2, x, 0.7, generator=g)[0]
            return float(x.mean())

    before = mean_reward()
    for _ in range(15):
        with torch.no_grad():  # rollouts
            x = torch.randn(32, 2, generator=g)
            traj, old = [], []
            for s, s2 in zip(sigmas[:-1], sigmas[1:]):
                nxt, lp, _, _ = flow_sde_step_with_logprob(-x + theta, s, s2, x, 0.7, generator=g)
                traj.append((x, nxt, s, s2))
                old.append(lp)
                x = nxt
            adv = group_advantages(x.mean(1), groups)
        for (xi, nxt, s, s2), olp in zip(traj, old):
            _, lp, _, _ = flow_sde_step_with_logprob(-xi + theta, s, s2, xi, 0.7, prev_sample=nxt)
            loss, _ = grpo_loss(lp, olp, adv, clip_range=0.2)
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert mean_reward() > before + 0.2

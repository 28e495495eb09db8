"""Tests that fail for the wrong version of each fine-tuning algorithm (issue 11).

Each test names the wrong version it exists to catch; each was tried by hand once
(edit the loop, watch the test go red, revert).
"""

import math
import random

import pytest
import torch
from PIL import Image

import vprefer.rl.dpo as dpo_mod
import vprefer.rl.refl as refl_mod
from vprefer.diffusion import encode_images, load_pipeline
from vprefer.rl import DiffusionDPOConfig, DiffusionDPOTrainer, ReFLConfig, ReFLTrainer
from vprefer.rl.rewards import load_reward
from vprefer.rl.noising import noise_target, rollout_scheduler, training_scheduler
from vprefer.testing.toy_rewards import RednessReward


def colour_pairs(folder, n, seed):
    """Red winner, blue loser: the truth (redness) is known independently of any label."""
    folder.mkdir(parents=True, exist_ok=True)
    rng, pairs = random.Random(seed), []
    for i in range(n):
        w, lo = folder / f"r{seed}-{i}.png", folder / f"b{seed}-{i}.png"
        Image.new("RGB", (32, 32), (200 + rng.randint(0, 55), rng.randint(0, 60), rng.randint(0, 60))).save(w)
        Image.new("RGB", (32, 32), (rng.randint(0, 60), rng.randint(0, 60), 200 + rng.randint(0, 55))).save(lo)
        pairs.append({"prompt": "a square", "win": str(w), "lose": str(lo), "margin": 1.0})
    return pairs


def dpo_cfg(tmp_path, pretrained, **kw):
    base = dict(output_dir=str(tmp_path / "dpo"), pretrained=str(pretrained), resolution=32, max_steps=30,
                learning_rate=2e-3, per_device_train_batch_size=4, beta=500.0, eval_prompts=[], logging_steps=1,
                save_steps=0, report_to=[], seed=0)
    base.update(kw)
    return DiffusionDPOConfig(**base)


def refl_cfg(tmp_path, pretrained, **kw):
    base = dict(output_dir=str(tmp_path / "refl"), pretrained=str(pretrained), resolution=32, max_steps=2,
                learning_rate=1e-3, per_device_train_batch_size=2, num_steps=10, t_lo=3, t_hi=8, lam=1.0,
                grad_scale=1.0, train_guidance_scale=1.0, guidance_scale=1.0, eval_prompts=[], eval_every=0,
                eval_steps_sampling=4, logging_steps=1, save_steps=0, report_to=[], reward_aspects={"redness": 1.0})
    base.update(kw)
    return ReFLConfig(**base)


class UNetCalls:
    """Forward hook: timestep, grad mode, input and output of every UNet call."""

    def __init__(self, unet):
        self.calls = []
        self.handle = unet.register_forward_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs, out):
        x = args[0] if args else kwargs["sample"]
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        t = t.flatten()[0].item() if torch.is_tensor(t) else t
        self.calls.append({"t": int(t), "grad": torch.is_grad_enabled(), "x": x.detach().clone(),
                           "out": out.sample.detach().clone()})


# ---------------------------------------------------------------------------- schedulers
def test_training_noise_is_variance_preserving_and_not_clean_on_sdxl_after_sampling(tiny_sdxl):
    """Wrong version: noising with SDXL's Euler sampler (std ~14.6 before sampling, noisy == clean after)."""
    pipe = load_pipeline(str(tiny_sdxl))
    pipe(["a cube"], num_inference_steps=3, guidance_scale=1.0, height=32, width=32, output_type="pt")
    sched = training_scheduler(pipe)
    g = torch.Generator().manual_seed(0)
    lat, noise = torch.randn(8, 4, 16, 16, generator=g), torch.randn(8, 4, 16, 16, generator=g)
    noisy = sched.add_noise(lat, noise, torch.full((8,), 999))
    assert 0.9 < noisy.std().item() < 1.1
    mid = sched.add_noise(lat, noise, torch.full((8,), 500))
    assert (mid - lat).abs().mean() > 0.1


def test_dpo_on_sdxl_trains_on_noisy_latents_after_a_sampling_call(tiny_sdxl, tmp_path, monkeypatch):
    tr = DiffusionDPOTrainer(dpo_cfg(tmp_path, tiny_sdxl, per_device_train_batch_size=2, proportion_empty_prompts=0.0),
                             pairs=colour_pairs(tmp_path / "img", 2, 0))
    tr.sample(["a cube"], steps=3)  # the "before" grid always runs first in train()
    clean = []
    real_encode = dpo_mod.encode_images
    monkeypatch.setattr(dpo_mod, "encode_images", lambda *a, **k: clean.append(real_encode(*a, **k)) or clean[-1])
    monkeypatch.setattr(dpo_mod, "sample_timesteps", lambda s, n, d, g=None: torch.full((n,), 999, device=d))
    calls = UNetCalls(tr.unet)
    tr.compute_loss()
    x = calls.calls[0]["x"]
    assert (x - clean[0]).abs().mean() > 0.5
    assert 0.8 < x.std().item() < 1.2


def test_targets_follow_the_prediction_type(tiny_sd):
    from diffusers import DDIMScheduler

    pipe = load_pipeline(str(tiny_sd))
    eps_sched = training_scheduler(pipe)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction")
    v_sched = training_scheduler(pipe)
    assert v_sched.config.prediction_type == "v_prediction"
    lat, noise, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    assert torch.equal(noise_target(eps_sched, lat, noise, t), noise)
    ab = v_sched.alphas_cumprod[t].view(2, 1, 1, 1)
    assert torch.allclose(noise_target(v_sched, lat, noise, t), ab.sqrt() * noise - (1 - ab).sqrt() * lat, atol=1e-5)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type="sample")
    with pytest.raises(ValueError, match="not supported for training"):
        training_scheduler(pipe)


def test_rollout_scheduler_never_clips_x0(tiny_sdxl):
    """Wrong version: DDIMScheduler.from_config(euler_config) takes clip_sample=True, set_alpha_to_one=True."""
    pipe = load_pipeline(str(tiny_sdxl))
    s = rollout_scheduler(pipe)
    assert not s.config.clip_sample and not s.config.set_alpha_to_one and not s.config.thresholding
    s.set_timesteps(10)
    x = torch.randn(1, 4, 8, 8) * 5
    out = s.step(torch.zeros_like(x), s.timesteps[-1], x).pred_original_sample
    assert out.abs().max() > 1.5  # would be clamped to [-1, 1] with clip_sample


# ---------------------------------------------------------------------------- ReFL
def test_refl_step_unet_calls_timesteps_grad_and_x0(tiny_sd, tmp_path, monkeypatch):
    """Wrong versions: decoding prev_sample, gradient through the whole rollout, the wrong timestep index."""
    tr = ReFLTrainer(refl_cfg(tmp_path, tiny_sd), prompts=["a red car", "a house"], reward=RednessReward())
    decoded = []
    real_decode = refl_mod.decode
    monkeypatch.setattr(refl_mod, "decode", lambda pipe, lat: decoded.append(lat.detach().clone()) or real_decode(pipe, lat))
    for _ in range(3):
        calls, decoded[:] = UNetCalls(tr.unet), []
        loss, m = tr.compute_loss()
        calls.handle.remove()
        mid, ts = m["t_index"], [int(t) for t in tr.sched.timesteps]
        assert [c["t"] for c in calls.calls] == ts[:mid + 1]  # the rollout, then the grad call at ts[mid]
        assert [c["grad"] for c in calls.calls] == [False] * mid + [True]  # exactly one call with grad: the last
        last = calls.calls[-1]
        ab = tr.sched.alphas_cumprod[last["t"]]
        x0 = (last["x"] - (1 - ab).sqrt() * last["out"]) / ab.sqrt()
        assert torch.allclose(decoded[0], x0, atol=1e-4, rtol=1e-4)
        assert loss.requires_grad


def test_reward_object_is_frozen():
    class Learned(torch.nn.Module):
        aspects = ["redness"]

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def score_pixels(self, prompts, pixels, aspects=None, normalize=True):
            return (pixels.mean(dim=(1, 2, 3)) * self.w).unsqueeze(1)

    r = load_reward(Learned())
    assert not r.w.requires_grad and not r.training


# ---------------------------------------------------------------------------- step accounting
def test_steps_count_optimizer_updates_with_scheduler_and_ema(tiny_sd, tmp_path):
    """Wrong versions: max_steps counting micro-batches, a constant LR whatever the config, EMA per micro-batch."""
    cfg = refl_cfg(tmp_path, tiny_sd, max_steps=3, gradient_accumulation_steps=2, lr_scheduler_type="linear",
                   warmup_steps=1, ema_decay=0.5, save_steps=2)
    tr = ReFLTrainer(cfg, prompts=["a red car"], reward=RednessReward())
    micro, snaps = [0], []
    real_loss, real_update = tr.compute_loss, tr.update

    def counted():
        micro[0] += 1
        return real_loss()

    def update():
        m = real_update()
        snaps.append([p.detach().clone() for p in tr.params])
        return m

    tr.compute_loss, tr.update = counted, update
    start = [p.detach().clone() for p in tr.params]
    hist = tr.train()
    assert micro[0] == 6 and len(snaps) == 3 and tr.step_no == 3
    lrs = [h["lr"] for h in hist if "lr" in h]
    assert lrs == pytest.approx([0.0, 1e-3, 5e-4])  # transformers' linear warmup then decay, per update
    ema = start
    for s in snaps:
        ema = [e + 0.5 * (p - e) for e, p in zip(ema, s)]
    assert all(torch.allclose(e, x, atol=1e-6) for e, x in zip(ema, tr.ema))
    assert (tmp_path / "refl" / "checkpoints" / "step-000002").exists()


def test_single_eval_prompt_has_no_nan(tiny_sd, tmp_path):
    tr = ReFLTrainer(refl_cfg(tmp_path, tiny_sd, eval_prompts=["a red cube"]), prompts=["x"], reward=RednessReward())
    m = tr.evaluate("one")
    assert m and all(math.isfinite(v) for v in m.values())


# ---------------------------------------------------------------------------- Diffusion-DPO
@pytest.mark.slow
def test_dpo_learns_the_truth_on_held_out_pairs(tiny_sd, tmp_path):
    """Wrong version: winners and losers swapped. The training labels cannot see it; held-out pairs labelled
    by their redness (not by anything the trainer saw) can."""
    held_out = colour_pairs(tmp_path / "held", 12, seed=99)
    tr = DiffusionDPOTrainer(dpo_cfg(tmp_path, tiny_sd, max_steps=30), pairs=colour_pairs(tmp_path / "img", 12, 0))
    assert tr.implicit_accuracy(held_out) == 0.0  # model == reference: no preference at all
    tr.train()
    acc = tr.implicit_accuracy(held_out)
    assert acc >= 0.75, acc


def test_dpo_prompt_dropout_and_posterior_sampling(tiny_sd, tmp_path, monkeypatch):
    seen = []
    real_encode = dpo_mod.encode
    monkeypatch.setattr(dpo_mod, "encode", lambda pipe, prompts, **k: seen.append(list(prompts)) or real_encode(pipe, prompts, **k))
    for p, expect in ((1.0, {""}), (0.0, {"a square"})):
        seen.clear()
        tr = DiffusionDPOTrainer(dpo_cfg(tmp_path, tiny_sd, proportion_empty_prompts=p), pairs=colour_pairs(tmp_path / "i", 4, 0))
        tr.compute_loss()
        assert set(seen[0]) == expect
    with pytest.raises(ValueError, match="proportion_empty_prompts"):
        DiffusionDPOTrainer(dpo_cfg(tmp_path, tiny_sd, proportion_empty_prompts=1.5), pairs=colour_pairs(tmp_path / "i", 1, 0))
    px = torch.rand(2, 3, 32, 32)
    a, b = encode_images(tr.pipe, px, sample=True), encode_images(tr.pipe, px, sample=True)
    assert not torch.equal(a, b)
    assert torch.equal(encode_images(tr.pipe, px), encode_images(tr.pipe, px))


@pytest.mark.parametrize("name,cls", [("refl-sd15", ReFLConfig), ("refl-sdxl", ReFLConfig), ("dpo-sd15", DiffusionDPOConfig),
                                      ("dpo-sdxl", DiffusionDPOConfig), ("refl-tiny", ReFLConfig), ("dpo-tiny", DiffusionDPOConfig)])
def test_shipped_recipes_load_with_reference_defaults(name, cls, tmp_path):
    from vprefer.rl.common import config_from_yaml

    c = config_from_yaml(cls, name, output_dir=str(tmp_path), bf16=False)  # no bf16 on a CPU runner
    assert c.max_steps > 0 and c.get_warmup_steps(c.max_steps) < c.max_steps
    if "tiny" not in name:
        assert c.sample_latents
        if cls is DiffusionDPOConfig:
            assert c.proportion_empty_prompts == 0.2 and getattr(c.lr_scheduler_type, "value", c.lr_scheduler_type) == "constant_with_warmup"


def test_steps_run_with_a_half_precision_vae(tiny_sd, tmp_path):
    """Found on a GPU at SD 1.5 size: a bf16 VAE (the usual frozen weight dtype) met fp32 latents and pixels."""
    pipe = load_pipeline(str(tiny_sd))
    pipe.vae.to(torch.bfloat16)
    tr = ReFLTrainer(refl_cfg(tmp_path, tiny_sd), pipe=pipe, prompts=["a red car"], reward=RednessReward(),
                     pretrain_data=[("a square", p["win"]) for p in colour_pairs(tmp_path / "i", 2, 0)])
    loss, m = tr.compute_loss()
    assert math.isfinite(loss.item()) and "loss/pretrain" in m
    pipe = load_pipeline(str(tiny_sd))
    pipe.vae.to(torch.bfloat16)
    tr = DiffusionDPOTrainer(dpo_cfg(tmp_path, tiny_sd), pipe=pipe, pairs=colour_pairs(tmp_path / "i", 2, 0))
    assert math.isfinite(tr.compute_loss()[0].item())


@pytest.mark.parametrize("kind", ["refl", "dpo"])
def test_a_pipeline_loaded_in_bf16_trains_its_fp32_adapters(tiny_sd, tmp_path, kind):
    """On a GPU a bf16 recipe loads the pipeline in bf16 (frozen VAE, text encoder and base UNet: SDXL's frozen
    fp32 weights alone were ~13 GB) and keeps the trainable adapters in fp32. Imitated on CPU under autocast,
    as accelerate runs the prepared UNet's forward there."""
    from vprefer.rl.common import frozen_dtype

    cfg = (refl_cfg if kind == "refl" else dpo_cfg)(tmp_path, tiny_sd, bf16=True, use_lora=True)
    assert frozen_dtype(cfg, cuda=True) is torch.bfloat16 and frozen_dtype(cfg, cuda=False) is None
    assert frozen_dtype(dpo_cfg(tmp_path, tiny_sd, fp16=True), cuda=True) is torch.float16
    pipe = load_pipeline(str(tiny_sd), frozen_dtype(cfg, cuda=True))
    if kind == "refl":
        tr = ReFLTrainer(cfg, pipe=pipe, prompts=["a red car"], reward=RednessReward(),
                         pretrain_data=[("a square", p["win"]) for p in colour_pairs(tmp_path / "i", 2, 0)])
    else:
        tr = DiffusionDPOTrainer(cfg, pipe=pipe, pairs=colour_pairs(tmp_path / "i", 2, 0))
    assert tr.params and all(p.dtype == torch.float32 for p in tr.params)
    frozen = [p for p in pipe.unet.parameters() if not p.requires_grad]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    assert pipe.vae.dtype == pipe.text_encoder.dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = tr.compute_loss()
    loss.backward()
    assert math.isfinite(loss.item()) and any(p.grad is not None and p.grad.abs().sum() > 0 for p in tr.params)

"""Rectified-flow generators (SD3, FLUX) behind the generator interface: hand-computed values for the forward
process, the target and x0, checked against the schedulers' and pipelines' own code; the loops end to end.

Each test names the wrong version it exists to catch; each was tried by hand once (edit, watch it go red, revert).
"""

import math

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
from PIL import Image
from typer.testing import CliRunner

import vprefer.rl.dpo as dpo_mod
from vprefer.diffusion import for_pipeline, load_pipeline
from vprefer.diffusion.flow import FlowProcess, image_ids, pack, shifted, unpack
from vprefer.errors import InputError
from vprefer.recipes import RecipeError
from vprefer.rl import DiffusionDPOConfig, DiffusionDPOTrainer, ReFLConfig, ReFLTrainer
from vprefer.rl.noising import noise_target, sample_timesteps, training_scheduler
from vprefer.testing.toy_rewards import RednessReward


@pytest.fixture(scope="module")
def tiny_sd3(tmp_path_factory):
    from vprefer.testing.tiny_pipelines import make_tiny_sd3

    return make_tiny_sd3(tmp_path_factory.mktemp("sd3") / "tiny-sd3")


@pytest.fixture(scope="module")
def tiny_flux(tmp_path_factory):
    from vprefer.testing.tiny_pipelines import make_tiny_flux

    return make_tiny_flux(tmp_path_factory.mktemp("flux") / "tiny-flux")


def pairs(folder, n=2):
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        w, lo = folder / f"r{i}.png", folder / f"b{i}.png"
        Image.new("RGB", (32, 32), (220, 20 + i, 20)).save(w)
        Image.new("RGB", (32, 32), (20, 20 + i, 220)).save(lo)
        out.append({"prompt": "a square", "win": str(w), "lose": str(lo), "margin": 1.0})
    return out


def dpo_cfg(tmp_path, pretrained, **kw):
    base = dict(output_dir=str(tmp_path / "dpo"), pretrained=str(pretrained), resolution=32, max_steps=2,
                learning_rate=1e-3, per_device_train_batch_size=2, beta=500.0, eval_prompts=[], logging_steps=1,
                save_steps=0, report_to=[], proportion_empty_prompts=0.0, lora_targets=["to_q", "to_k", "to_v"])
    base.update(kw)
    return DiffusionDPOConfig(**base)


# ---------------------------------------------------------------------------- forward process and target
def test_forward_process_and_target_by_hand():
    """Wrong version: target ``x_0 - noise`` (the sign)."""
    p = FlowProcess(1000, shift=3.0, density="uniform")
    x0, noise = torch.full((1, 1, 1, 1), 2.0), torch.full((1, 1, 1, 1), -1.0)
    t = torch.tensor([250.0])  # sigma 0.25
    assert p.add_noise(x0, noise, t).item() == pytest.approx(0.75 * 2 - 0.25)  # (1 - s) x0 + s noise = 1.25
    assert noise_target(p, x0, noise, t).item() == pytest.approx(-3.0)  # noise - x0
    # the scheduler's own forward process at one of its grid timesteps
    s = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    x0, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    ts = s.timesteps[[100, 700]]
    assert torch.allclose(p.add_noise(x0, noise, ts), s.scale_noise(x0, ts, noise), atol=1e-6)


def test_timesteps_are_drawn_on_the_shifted_grid_by_hand():
    """Wrong version: the unshifted sigma where the checkpoint shifts (shift 3: u = 0.5 -> sigma 0.75)."""
    p = FlowProcess(1000, shift=3.0, density="uniform")
    g = torch.Generator().manual_seed(0)
    u = torch.rand(6, generator=torch.Generator().manual_seed(0))
    t = p.sample_timesteps(6, g)
    idx = (u * 1000).long()
    unshifted = (1000 - idx).float() / 1000
    assert torch.allclose(t / 1000, 3 * unshifted / (1 + 2 * unshifted), atol=1e-6)
    s = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    assert torch.allclose(t, s.timesteps[idx], atol=1e-3) and torch.allclose(t / 1000, s.sigmas[idx], atol=1e-6)
    assert p.sigmas(torch.tensor([500])).item() == pytest.approx(0.75)
    # logit-normal: sigmoid of N(0, 1) draws, the same stream
    ln = FlowProcess(1000, shift=1.0, density="logit_normal").sample_timesteps(4, torch.Generator().manual_seed(1))
    z = torch.sigmoid(torch.randn(4, generator=torch.Generator().manual_seed(1)))
    assert torch.allclose(ln / 1000, (1000 - (z * 1000).long()).float() / 1000)


def test_each_family_noises_with_the_checkpoints_shift(tiny_sd3, tiny_flux):
    """Wrong version: unshifted training sigmas (SD3.5's static 3.0; FLUX's exp(mu) at the training resolution)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    sd3 = load_pipeline(str(tiny_sd3))
    assert training_scheduler(sd3, resolution=32).config.shift == 3.0
    assert training_scheduler(sd3, resolution=32, timestep_shift=1.0).config.shift == 1.0
    flux = load_pipeline(str(tiny_flux))
    c = flux.scheduler.config
    mu = calculate_shift(64, c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift)  # (32/2/2)^2 tokens
    proc = training_scheduler(flux, resolution=32)
    assert proc.config.shift == pytest.approx(math.exp(mu))
    # the pipeline's own sampler at this resolution shifts sigma exactly so
    s = FlowMatchEulerDiscreteScheduler.from_config(c)
    s.set_timesteps(4, sigmas=np.linspace(1.0, 0.25, 4), mu=mu)
    assert torch.allclose(s.sigmas[:4], shifted(torch.linspace(1.0, 0.25, 4), proc.config.shift), atol=1e-5)


# ---------------------------------------------------------------------------- rollout and x0
def test_rollout_step_and_x0_by_hand(tiny_sd3):
    """Wrong version: x0 from the next step's sigma (``x_t - sigma_next v``) instead of the current one."""
    pipe = load_pipeline(str(tiny_sd3))
    r = for_pipeline(pipe).rollout_scheduler(32)
    r.set_timesteps(4)
    ref = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    ref.set_timesteps(4)
    assert torch.equal(r.timesteps, ref.timesteps)
    x, v = torch.randn(1, 4, 16, 16), torch.randn(1, 4, 16, 16)
    for i, t in enumerate(r.timesteps):
        out = r.step(v, t, x)
        s, s_next = r.sigmas[i], r.sigmas[i + 1]
        assert torch.allclose(out.pred_original_sample, x - s * v, atol=1e-6)
        assert torch.allclose(out.prev_sample, ref.step(v, t, x).prev_sample, atol=1e-6)  # x + (s_next - s) v
        assert torch.allclose(out.prev_sample, x + (s_next - s) * v, atol=1e-6)
    # on the last step (sigma_next = 0) the Euler step lands on x0
    assert torch.allclose(out.prev_sample, out.pred_original_sample, atol=1e-6)
    # x0 = x_t - sigma v recovers x0 when v is the true velocity
    x0, noise = torch.randn(1, 4, 16, 16), torch.randn(1, 4, 16, 16)
    t = r.timesteps[1]
    xt = (1 - r.sigmas[1]) * x0 + r.sigmas[1] * noise
    assert torch.allclose(r.step(noise - x0, t, xt).pred_original_sample, x0, atol=1e-5)


@pytest.mark.parametrize("kind,guidance", [("sd3", 2.0), ("flux", 1.0)])
def test_the_families_rollout_is_the_pipelines_own_sampler(kind, guidance, tiny_sd3, tiny_flux):
    """Wrong versions: FLUX latents packed/unpacked inconsistently, wrong position ids, timestep not /1000 for
    FLUX, guidance not embedded, sigmas without the checkpoint's (dynamic) shift, CFG halves swapped."""
    pipe = load_pipeline(str(tiny_sd3 if kind == "sd3" else tiny_flux))
    fam = for_pipeline(pipe)
    start = torch.randn(fam.latent_shape(2, 32), generator=torch.Generator().manual_seed(0))
    prompts = ["a red circle", "a blue square"]
    with torch.no_grad():
        cond = fam.encode(prompts, cfg=guidance > 1, size=32)
        r = fam.rollout_scheduler(32)
        r.set_timesteps(5)
        x = start.clone()
        for t in r.timesteps:
            x = r.step(fam.predict(pipe.transformer, x, t, cond, guidance), t, x).prev_sample
        given = pack(start) if kind == "flux" else start
        theirs = pipe(prompts, num_inference_steps=5, guidance_scale=3.5 if kind == "flux" else guidance,
                      height=32, width=32, latents=given, output_type="latent").images
    mine = pack(x) if kind == "flux" else x
    assert torch.allclose(mine, theirs, atol=1e-4), (mine - theirs).abs().max()


def test_flux_packing_matches_the_pipeline():
    """Wrong version: unpack transposing rows and columns (or channels and patch positions)."""
    x = torch.randn(2, 4, 8, 6)
    assert torch.equal(pack(x), FluxPipeline._pack_latents(x, 2, 4, 8, 6))
    assert torch.equal(unpack(pack(x), 8, 6), x)
    assert torch.equal(unpack(pack(x), 8, 6), FluxPipeline._unpack_latents(pack(x), 16, 12, 2))
    assert torch.equal(image_ids(8, 6, "cpu", torch.float32), FluxPipeline._prepare_latent_image_ids(2, 4, 3, "cpu",
                                                                                                   torch.float32))


def test_vae_scaling_and_shift_factors_round_trip(tiny_flux):
    pipe = load_pipeline(str(tiny_flux))
    fam = for_pipeline(pipe)
    px = torch.rand(1, 3, 32, 32)
    lat = fam.encode_images(px)
    with torch.no_grad():
        raw = pipe.vae.encode(px * 2 - 1).latent_dist.mean
        c = pipe.vae.config
        assert torch.allclose(lat, (raw - c.shift_factor) * c.scaling_factor, atol=1e-6)
        dec = fam.decode(lat)
        assert torch.allclose(dec, (pipe.vae.decode(raw).sample / 2 + 0.5).clamp(0, 1), atol=1e-5)


# ---------------------------------------------------------------------------- DPO's pair draw
def test_dpo_winner_and_loser_share_noise_and_sigma_and_the_target_is_the_velocity(tiny_sd3, tmp_path, monkeypatch):
    """Wrong versions: winner and loser with different noise or sigma; the epsilon target on a flow model."""
    tr = DiffusionDPOTrainer(dpo_cfg(tmp_path, tiny_sd3), pairs=pairs(tmp_path / "img"))
    assert tr.sched.config.prediction_type == "flow" and tr.sched.config.shift == 3.0
    lats, calls = [], []
    real = dpo_mod.encode_images
    monkeypatch.setattr(dpo_mod, "encode_images", lambda *a, **k: lats.append(real(*a, **k)) or lats[-1])
    h = tr.unet.register_forward_hook(lambda m, a, k, o: calls.append((k["hidden_states"].detach().clone(),
                                                                       k["timestep"].clone(), o.sample.detach())),
                                      with_kwargs=True)
    mse, ref = tr.pair_mses(tr.pairs, ["a square"] * 2)
    h.remove()
    x, t, out = calls[0]
    s = (t / 1000).view(-1, 1, 1, 1)
    lat = lats[0]
    noise = (x - (1 - s) * lat) / s
    assert torch.equal(t[:2], t[2:])
    assert torch.allclose(noise[:2], noise[2:], atol=1e-4)
    assert torch.allclose(mse, (out - (noise - lat)).pow(2).mean(dim=(1, 2, 3)), atol=1e-4)
    assert torch.allclose(mse, ref, atol=1e-6)  # adapters start at zero: policy == reference


# ---------------------------------------------------------------------------- settings a user can get wrong
def test_flux_refuses_cfg_in_training_and_bad_knobs_are_named(tiny_flux, tmp_path):
    with pytest.raises(RecipeError, match="timestep_density"):
        dpo_cfg(tmp_path, tiny_flux, timestep_density="cosine")
    with pytest.raises(RecipeError, match="timestep_shift"):
        dpo_cfg(tmp_path, tiny_flux, timestep_shift=0.0)
    cfg = ReFLConfig(output_dir=str(tmp_path / "r"), pretrained=str(tiny_flux), resolution=32, max_steps=1,
                     num_steps=4, t_lo=2, t_hi=3, train_guidance_scale=3.0, eval_prompts=[], report_to=[],
                     reward_aspects={"redness": 1.0})
    with pytest.raises(RecipeError, match="train_guidance_scale: 1"):
        ReFLTrainer(cfg, prompts=["x"], reward=RednessReward())
    with pytest.raises(InputError, match="multiple of 4"):  # the tiny VAE halves: FLUX's 2x2 packing needs 4
        for_pipeline(load_pipeline(str(tiny_flux))).check_resolution(42)


# ---------------------------------------------------------------------------- end to end, from the CLI
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_cli_dpo_and_refl_on_tiny_flow_pipelines(kind, tmp_path, monkeypatch):
    from diffusers import DiffusionPipeline

    from vprefer.cli import app
    from vprefer.ingest import ingest
    from vprefer.testing.synthetic import write_dataset, write_truth_pairs

    monkeypatch.chdir(tmp_path)  # the tiny recipes build their pipeline under ./.cache
    ingest(write_dataset(tmp_path / "syn", 4, 2, size=32), tmp_path / "run")
    write_truth_pairs(tmp_path / "run")
    (tmp_path / "p.txt").write_text("a red circle\na blue square\n")
    run = CliRunner().invoke
    res = run(app, ["rl", "dpo", "--recipe", f"rl/dpo-{kind}-tiny.yaml", "--data", str(tmp_path / "run"), "--out",
                    str(tmp_path / "o2"), "--max-steps", "2", "per_device_train_batch_size=2", "eval_prompts=[]"])
    assert res.exit_code == 0, res.output
    assert "implicit accuracy" in res.output
    rows = [__import__("json").loads(x) for x in (tmp_path / "o2" / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in rows if "loss/dpo" in r][0]["loss/dpo"] == pytest.approx(math.log(2), abs=0.02)
    pipe = DiffusionPipeline.from_pretrained(str(tmp_path / ".cache" / f"tiny-{kind}"))
    pipe.load_lora_weights(str(tmp_path / "o2"))
    assert any("lora" in n for n, _ in pipe.transformer.named_parameters())

    # ReFL with a differentiable toy reward object is not reachable from the CLI: an untrained tiny VP-Score is
    from vprefer.reward.build import build
    from vprefer.reward.recipe import RewardRecipe
    from vprefer.testing.stand_ins import ensure_backbone

    r = RewardRecipe.load("vp-score-tiny")
    r.backbone.name_or_path = str(tmp_path / "tiny-clip")
    ensure_backbone(r)
    build(r).save_pretrained(tmp_path / "vps")
    res = run(app, ["rl", "refl", "--recipe", f"rl/refl-{kind}-tiny.yaml", "--reward", str(tmp_path / "vps"),
                    "--prompts", str(tmp_path / "p.txt"), "--pretrain-data", str(tmp_path / "run"), "--out",
                    str(tmp_path / "o1"), "--max-steps", "2", "eval_steps_sampling=3"])
    assert res.exit_code == 0, res.output
    assert "eval/reward/overall" in res.output
    rows = [__import__("json").loads(x) for x in (tmp_path / "o1" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss/refl"]) and math.isfinite(r["loss/pretrain"]) for r in rows if "loss/refl" in r)


@pytest.mark.slow
def test_cli_generate_with_flow_generators_beside_sd(tmp_path, monkeypatch):
    from vprefer.cli import app
    from vprefer.prompts import sample_prompts

    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.txt").write_text("a red circle\na blue square\n")
    sample_prompts(tmp_path / "p.txt", tmp_path / "run")
    res = CliRunner().invoke(app, ["generate", str(tmp_path / "run"), "--recipe", "rl/generators-flow-tiny.yaml"])
    assert res.exit_code == 0, res.output
    from vprefer.store import as_run

    got = as_run(tmp_path / "run").read("images")
    assert sorted(got["generator"].unique().to_list()) == ["tiny-flux", "tiny-sd", "tiny-sd3"]
    assert got.height == 6 and set(got["width"].to_list()) == {32}


@pytest.mark.parametrize("name,cls", [("dpo-sd35m", DiffusionDPOConfig), ("refl-sd35m", ReFLConfig),
                                      ("dpo-flux-dev", DiffusionDPOConfig), ("refl-flux-dev", ReFLConfig),
                                      ("dpo-sd3-tiny", DiffusionDPOConfig), ("refl-flux-tiny", ReFLConfig)])
def test_flow_recipes_load(name, cls, tmp_path):
    from vprefer.rl.common import config_from_yaml

    c = config_from_yaml(cls, name, output_dir=str(tmp_path), bf16=False)
    assert c.timestep_density == "logit_normal" and c.timestep_shift is None and "add_q_proj" in c.lora_targets
    if "flux" in name and cls is ReFLConfig:
        assert c.train_guidance_scale == 1.0 and c.embedded_guidance == 3.5

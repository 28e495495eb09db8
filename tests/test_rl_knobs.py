"""Multi-process correctness and one test per recipe knob that changes the algorithm (issue 27).

Each test names the wrong version it exists to catch; each was made by hand once and went red.
"""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from vprefer.diffusion import decode, encode, load_pipeline, predict_noise
from vprefer.rl import DiffusionDPOTrainer, ReFLTrainer
from vprefer.rl.rewards import weighted_reward
from vprefer.rl.losses import noise_mse
from vprefer.rl.noising import sample_timesteps
from vprefer.testing.toy_rewards import RednessReward

from test_rl_correctness import colour_pairs, refl_cfg  # the same configs and images as the loop checks
from test_rl_correctness import dpo_cfg as base_dpo_cfg


def pairs(folder, n, seed=0):
    """Red beats blue (the truth is known apart from any label), from one annotator."""
    return [{**x, "annotator": "judge"} for x in colour_pairs(folder, n, seed)]


def dpo_cfg(tmp_path, pretrained, **kw):
    return base_dpo_cfg(tmp_path, pretrained, **{"max_steps": 4, "per_device_train_batch_size": 2, **kw})


def as_rank(monkeypatch, rank: int):
    from accelerate import Accelerator

    monkeypatch.setattr(Accelerator, "process_index", property(lambda self: rank))


# ---------------------------------------------------------------------------- per-rank streams
@pytest.mark.parametrize("kind", ["dpo", "refl"])
def test_every_rank_draws_its_own_noise_and_timesteps(tiny_sd, tmp_path, monkeypatch, kind):
    """Wrong version: the global generators seeded with the same seed on every rank (8 GPUs, one draw 8x)."""
    def draws(rank):
        as_rank(monkeypatch, rank)
        if kind == "dpo":
            tr = DiffusionDPOTrainer(dpo_cfg(tmp_path, tiny_sd), pairs=pairs(tmp_path / "i", 4))
        else:
            tr = ReFLTrainer(refl_cfg(tmp_path, tiny_sd), prompts=["a red car"], reward=RednessReward())
        m = [tr.compute_loss()[1] for _ in range(3)]
        return [(x.get("draw/t"), x["draw/noise"], x.get("t_index")) for x in m]

    r0, r1, r0_again = draws(0), draws(1), draws(0)
    assert r0 == r0_again  # seeded: a rank's draws are reproducible
    assert all(a[1] != b[1] for a, b in zip(r0, r1))  # but not shared with the other rank
    if kind == "dpo":
        assert [a[0] for a in r0] != [b[0] for b in r1]


def test_resume_continues_the_draws_instead_of_replaying_them(tiny_sd, tmp_path):
    """Wrong version: accelerate's state restored but not the trainer's own streams (the pair / timestep
    sequence restarts at update 0). Two updates + resume for two more must equal four in one go."""
    data = pairs(tmp_path / "i", 6)
    one = DiffusionDPOTrainer(dpo_cfg(tmp_path / "a", tiny_sd, max_steps=4), pairs=data)
    hist = one.train()
    DiffusionDPOTrainer(dpo_cfg(tmp_path / "b", tiny_sd, max_steps=2, save_steps=2), pairs=data).train()
    two = DiffusionDPOTrainer(dpo_cfg(tmp_path / "b", tiny_sd, max_steps=4, save_steps=2), pairs=data)
    hist2 = two.train(resume=True)
    assert (tmp_path / "b" / "dpo" / "checkpoints" / "step-000002" / "rng-rank0.json").exists()
    cont = [(h["step"], h["draw/t"], round(h["draw/noise"], 5)) for h in hist if "draw/t" in h and h["step"] > 2]
    resumed = [(h["step"], h["draw/t"], round(h["draw/noise"], 5)) for h in hist2 if "draw/t" in h]
    assert resumed == cont and len(cont) == 2
    for p, q in zip(one.params, two.params):
        assert torch.allclose(p, q, atol=1e-6)


def test_metrics_are_the_mean_over_processes():
    """Wrong version: rank 0's own loss logged as the run's."""
    from vprefer.rl.ranks import mean_over_processes

    class TwoRanks:  # what accelerate's gather returns with two processes, the second having its own values
        num_processes, device = 2, "cpu"

        def gather(self, t):
            return torch.cat([t, t * 3])

    m = mean_over_processes(TwoRanks(), {"step": 3, "loss/dpo": 1.0, "dpo/implicit_acc": 0.5, "phase": "x",
                                         "distributed/params_in_sync": True, "draw/t": 10.0})
    assert m["loss/dpo"] == 2.0 and m["dpo/implicit_acc"] == 1.0 and m["step"] == 3 and m["phase"] == "x"
    assert m["per_rank"] == {"loss/dpo": [1.0, 3.0], "draw/t": [10.0, 30.0]}
    assert m["distributed/params_in_sync"] is True


# ---------------------------------------------------------------------------- saving under FSDP
def test_full_fine_tuning_saves_the_gathered_state_and_the_reference_is_unsharded(tiny_sd, tmp_path, monkeypatch):
    """Wrong versions: ``save_pretrained`` of the (sharded) module instead of ``accelerator.get_state_dict``;
    the DPO reference deep-copied from the prepared (sharded) UNet. Accelerate runs FSDP only on GPUs, so the
    prepared module's parameters are replaced here by stand-in "shards" (zeros) as fully_shard replaces them."""
    from accelerate import Accelerator
    from safetensors.torch import load_file

    real = Accelerator.prepare

    def sharding_prepare(self, model, opt):
        model, opt = real(self, model, opt)
        new = {}
        for mod in model.modules():
            for name, q in list(mod.named_parameters(recurse=False)):
                new[q] = torch.nn.Parameter(torch.zeros_like(q), requires_grad=q.requires_grad)
                setattr(mod, name, new[q])
        for g in opt.param_groups:
            g["params"] = [new.get(q, q) for q in g["params"]]
        return model, opt

    full = {k: v.clone() for k, v in load_pipeline(str(tiny_sd)).unet.state_dict().items()}
    monkeypatch.setattr(Accelerator, "prepare", sharding_prepare)
    monkeypatch.setattr(Accelerator, "get_state_dict", lambda self, model, unwrap=True: {k: v + 1 for k, v in full.items()})
    tr = DiffusionDPOTrainer(dpo_cfg(tmp_path, tiny_sd, use_lora=False), pairs=pairs(tmp_path / "i", 2))
    ref = tr.ref.state_dict()
    assert all(torch.equal(ref[k], full[k]) for k in full)  # the reference holds the full weights
    tr.save()
    saved = load_file(str(tmp_path / "dpo" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert saved.keys() == full.keys() and all(torch.equal(saved[k], full[k] + 1) for k in full)  # gathered, not shards
    from diffusers import UNet2DConditionModel

    back = UNet2DConditionModel.from_pretrained(tmp_path / "dpo" / "unet")  # the layout diffusers reads
    k = next(iter(full))
    assert torch.equal(back.state_dict()[k], full[k] + 1)


def test_lora_is_saved_from_the_gathered_state(tiny_sd, tmp_path, monkeypatch):
    from accelerate import Accelerator
    from safetensors.torch import load_file

    tr = DiffusionDPOTrainer(dpo_cfg(tmp_path, tiny_sd), pairs=pairs(tmp_path / "i", 2))
    state = {k: v.detach().clone() for k, v in tr.pipe.unet.state_dict().items()}
    monkeypatch.setattr(Accelerator, "get_state_dict",
                        lambda self, model, unwrap=True: {k: v + 7 if "lora" in k else v for k, v in state.items()})
    tr.save()
    saved = load_file(str(tmp_path / "dpo" / "pytorch_lora_weights.safetensors"))
    lora = {k: v for k, v in state.items() if "lora_A" in k}
    down = [v for k, v in saved.items() if k.endswith("lora.down.weight")]  # diffusers' name for lora_A
    assert len(down) == len(lora) and all(v.min() > 6 for v in down), "the LoRA written is not the gathered state"
    rl = json.loads((tmp_path / "dpo" / "vprefer_rl.json").read_text())
    assert rl["annotators"] == ["judge"] and rl["aspect"] == "overall"  # what the loop trained on


# ---------------------------------------------------------------------------- SDXL's VAE in fp16
def test_an_fp16_vae_that_must_upcast_stays_fp32_and_a_named_vae_replaces_it(tiny_sdxl, tmp_path):
    """Wrong version: ``force_upcast`` ignored, SDXL's VAE run in fp16 (NaN latents on real weights)."""
    from diffusers import AutoencoderKL

    pipe = load_pipeline(str(tiny_sdxl), torch.float16)
    assert pipe.vae.config.force_upcast and pipe.vae.dtype == torch.float32 and pipe.unet.dtype == torch.float16
    fixed = AutoencoderKL.from_config({**pipe.vae.config, "force_upcast": False})
    torch.nn.init.constant_(fixed.decoder.conv_out.bias, 0.25)
    fixed.save_pretrained(tmp_path / "vae-fp16-fix")
    pipe = load_pipeline(str(tiny_sdxl), torch.float16, vae=str(tmp_path / "vae-fp16-fix"))
    assert pipe.vae.dtype == torch.float16  # a VAE made fp16-safe stays fp16
    assert torch.all(pipe.vae.decoder.conv_out.bias == 0.25)  # and it is the named one
    cfg = dpo_cfg(tmp_path, tiny_sdxl, pretrained_vae=str(tmp_path / "vae-fp16-fix"))
    tr = DiffusionDPOTrainer(cfg, pairs=pairs(tmp_path / "i", 2))
    assert torch.all(tr.pipe.vae.decoder.conv_out.bias == 0.25)
    from vprefer.errors import InputError

    with pytest.raises(InputError, match="cannot load diffusers VAE"):
        load_pipeline(str(tiny_sdxl), vae=str(tmp_path / "no-such-vae"))


# ---------------------------------------------------------------------------- knobs that change the algorithm
def test_classifier_free_guidance_pushes_towards_the_prompt(tiny_sd):
    """Wrong version: the unconditional and conditional halves swapped (guidance pushes away from the prompt)."""
    pipe = load_pipeline(str(tiny_sd))
    x, t = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor(500)
    prompts = ["a red circle", "a blue square"]
    with torch.no_grad():
        cond = encode(pipe, prompts, cfg=False, size=32)
        uncond = encode(pipe, ["", ""], cfg=False, size=32)
        c = pipe.unet(x, t, encoder_hidden_states=cond.embeds).sample
        u = pipe.unet(x, t, encoder_hidden_states=uncond.embeds).sample
        got = predict_noise(pipe.unet, x, t, encode(pipe, prompts, cfg=True, size=32), 4.0)
    assert not torch.allclose(c, u, atol=1e-4)
    assert torch.allclose(got, u + 4.0 * (c - u), atol=1e-4)


def test_refl_rollout_uses_the_training_guidance(tiny_sd, tmp_path):
    """Wrong version: ``train_guidance_scale`` ignored (the rollout run without classifier-free guidance)."""
    seen = []
    for g in (1.0, 3.0):
        tr = ReFLTrainer(refl_cfg(tmp_path, tiny_sd, train_guidance_scale=g), prompts=["a red car"], reward=RednessReward())
        h = tr.unet.register_forward_hook(lambda mod, a, k, o: seen.append((g, (a[0] if a else k["sample"]).shape[0])),
                                          with_kwargs=True)
        tr.compute_loss()
        h.remove()
    assert {b for g, b in seen if g == 1.0} == {2} and {b for g, b in seen if g == 3.0} == {4}


def test_refl_gradient_step_stays_in_the_window(tiny_sd, tmp_path):
    """Wrong version: the step with gradient drawn outside [t_lo, t_hi] (or always the same one)."""
    tr = ReFLTrainer(refl_cfg(tmp_path, tiny_sd, t_lo=5, t_hi=7, per_device_train_batch_size=1), prompts=["a"],
                     reward=RednessReward())
    mids = {tr.compute_loss()[1]["t_index"] for _ in range(30)}
    assert mids == {5, 6, 7}
    with pytest.raises(ValueError, match="t_lo <= t_hi < num_steps"):  # refused before any pipeline loads
        refl_cfg(tmp_path, "/nonexistent/pipeline", t_lo=8, t_hi=12)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_dpo_target_follows_the_prediction_type_and_each_pair_its_own_prompt(tiny_sd, tmp_path, kind):
    """Wrong versions: the DPO target fixed to the noise (breaks SD 2.1, one of VisionPrefer's generators);
    winners and losers conditioned on misaligned prompts (the prompt must reach each pair's own images)."""
    from diffusers import DDIMScheduler

    from vprefer.diffusion import encode_images, load_pixels

    pipe = load_pipeline(str(tiny_sd))
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type=kind)
    data = pairs(tmp_path / "i", 2)
    tr = DiffusionDPOTrainer(dpo_cfg(tmp_path, tiny_sd), pipe=pipe, pairs=data)
    assert tr.sched.config.prediction_type == kind
    prompts = ["a red square", "a blue circle"]
    with torch.no_grad():
        mse, _ = tr.pair_mses(data, prompts, generator=torch.Generator().manual_seed(3), sample_latents=False)
        g = torch.Generator().manual_seed(3)
        px = torch.stack([load_pixels(x[k], 32) for k in ("win", "lose") for x in data])
        lat = encode_images(pipe, px)
        noise = torch.randn(lat[:2].shape, generator=g).repeat(2, 1, 1, 1)
        t = sample_timesteps(tr.sched, 2, "cpu", g).repeat(2)
        noisy = tr.sched.add_noise(lat, noise, t)
        def mse_with(texts, target):
            return noise_mse(tr.unet(noisy, t, **encode(pipe, texts, cfg=False, size=32).kwargs()).sample, target)

        target = tr.sched.get_velocity(lat, noise, t) if kind == "v_prediction" else noise
        by_hand = mse_with(prompts * 2, target)  # [winners..., losers...], each with its pair's prompt
        misaligned = mse_with([prompts[0]] * 2 + [prompts[1]] * 2, target)
        wrong_target = mse_with(prompts * 2, lat if kind == "epsilon" else noise)
    assert torch.allclose(mse, by_hand, atol=1e-5)
    assert not torch.allclose(mse, misaligned, atol=1e-4)
    assert not torch.allclose(mse, wrong_target, atol=1e-3)


def test_refl_scores_each_image_with_the_prompt_it_was_made_from(tiny_sd, tmp_path, monkeypatch):
    """Wrong version: rewards computed with prompts misaligned with the images (a prompt-dependent reward
    then teaches the opposite of what each prompt asks)."""
    import vprefer.rl.refl as refl_mod
    from vprefer.testing.toy_rewards import PromptColourReward

    cfg = refl_cfg(tmp_path, tiny_sd, reward_aspects={"prompt_colour": 1.0}, per_device_train_batch_size=4)
    tr = ReFLTrainer(cfg, prompts=["a red square", "a blue square", "a green square"], reward=PromptColourReward())
    seen = {}
    real_encode, real_reward = refl_mod.encode, refl_mod.weighted_reward
    monkeypatch.setattr(refl_mod, "encode", lambda pipe, p, **k: seen.setdefault("cond", list(p)) and real_encode(pipe, p, **k))
    monkeypatch.setattr(refl_mod, "weighted_reward",
                        lambda rm, p, px, w: seen.update(reward=list(p), px=px.detach()) or real_reward(rm, p, px, w))
    _, m = tr.compute_loss()
    assert seen["reward"] == seen["cond"] and len(set(seen["cond"])) > 1
    own = PromptColourReward().score_pixels(seen["cond"], seen["px"])[:, 0]
    assert m["reward/train"] == pytest.approx(own.mean().item(), abs=1e-6)
    other = {"a red square": "a blue square", "a blue square": "a green square", "a green square": "a red square"}
    wrong = PromptColourReward().score_pixels([other[x] for x in seen["cond"]], seen["px"])[:, 0]
    assert (own - wrong).abs().min() > 1e-4  # the reward does depend on the prompt: alignment is checked


def test_sdxl_micro_conditioning_follows_the_training_resolution(tiny_sdxl, tmp_path):
    """Wrong version: SDXL's size/crop ids fixed (e.g. to 1024) instead of the resolution trained at."""
    pipe = load_pipeline(str(tiny_sdxl))
    for size in (32, 64):
        c = encode(pipe, ["a cube", "a ball"], cfg=True, size=size)
        assert c.time_ids.tolist() == [[size, size, 0, 0, size, size]] * 4
    seen = []
    tr = DiffusionDPOTrainer(dpo_cfg(tmp_path, tiny_sdxl, resolution=32), pairs=pairs(tmp_path / "i", 2))
    h = tr.unet.register_forward_hook(lambda m, a, k, o: seen.append(k["added_cond_kwargs"]["time_ids"]), with_kwargs=True)
    tr.compute_loss()
    h.remove()
    assert seen and all(x.tolist() == [[32, 32, 0, 0, 32, 32]] * x.shape[0] for x in seen)


def test_reward_aspect_weights_are_applied():
    """Wrong version: ``reward_aspects`` weights ignored (every aspect counted equally) or not normalised."""
    class TwoAspects:
        aspects = ["a", "b"]

        def score_pixels(self, prompts, pixels, aspects=None, normalize=True):
            cols = {"a": pixels.mean(dim=(1, 2, 3)), "b": -pixels.mean(dim=(1, 2, 3)) * 2}
            return torch.stack([cols[x] for x in aspects], 1)

    px = torch.full((2, 3, 4, 4), 0.5)
    assert weighted_reward(TwoAspects(), ["x", "y"], px, {"a": 1.0, "b": 3.0}).tolist() == pytest.approx([-0.625] * 2)
    assert weighted_reward(TwoAspects(), ["x", "y"], px, {"b": 1.0}).tolist() == pytest.approx([-1.0] * 2)


def test_half_precision_decode_is_finite_after_upcast(tiny_sdxl):
    pipe = load_pipeline(str(tiny_sdxl), torch.float16)
    x = decode(pipe, torch.randn(1, 4, 16, 16))
    assert x.dtype == torch.float32 and torch.isfinite(x).all()


# ---------------------------------------------------------------------------- whose pairs a job trains on
@pytest.fixture(scope="module")
def two_sources(tmp_path_factory):
    from vprefer.ingest import ingest
    from vprefer.testing.synthetic import write_dataset, write_truth_pairs

    d = tmp_path_factory.mktemp("src")
    ingest(write_dataset(d / "syn", 4, 3, size=32), d / "run")
    write_truth_pairs(d / "run", annotator="judge-a")
    write_truth_pairs(d / "run", annotator="judge-a+b")  # a combined label beside its part: the same judgement
    return d / "run"


def test_several_annotators_need_a_choice_for_dpo_and_vp_score(two_sources):
    """Wrong version: every annotator's pairs used by default (a judgement counted twice, humans mixed in)."""
    from vprefer.errors import InputError
    from vprefer.reward.data import load_pairs
    from vprefer.rl.dpo import dpo_pairs

    with pytest.raises(InputError, match=r"2 annotators: judge-a \(\d+ pairs\), judge-a\+b .*--annotator"):
        dpo_pairs(two_sources, "overall")
    with pytest.raises(InputError, match=r"2 annotators.*--annotator"):
        load_pairs([two_sources], ["overall", "aesthetics"])
    chosen = dpo_pairs(two_sources, "overall", ["judge-a"])
    assert chosen and {p["annotator"] for p in chosen} == {"judge-a"}
    df = load_pairs([two_sources], ["overall"], ["judge-a+b"])
    assert set(df["annotator"].unique()) == {"judge-a+b"}
    assert load_pairs([two_sources], ["overall"], None, {"judge-a": 1.0, "judge-a+b": 0.0}).height == df.height


# ---------------------------------------------------------------------------- calibration
def test_calibration_picks_the_same_images_whatever_the_row_order():
    """Wrong version: the first 512 of an unordered ``unique()`` (the stored mean/std, on which ReFL's
    ``lam`` is defined, then changes between runs and between ranks)."""
    import polars as pl

    from vprefer.reward.train import calibration_items

    rows = [{"prompt": f"p{i % 40}", "win_path": f"/r/images/{i:04d}w.png", "lose_path": f"/r/images/{i:04d}l.png"}
            for i in range(400)]
    df = pl.DataFrame(rows)
    picks = {tuple(map(tuple, calibration_items(df.sample(fraction=1.0, shuffle=True, seed=s), 100).rows()))
             for s in range(5)}
    assert len(picks) == 1
    chosen = calibration_items(df, 100)
    assert chosen.height == 100 and chosen["prompt"].n_unique() > 30  # spread over prompts, not the first few
    moved = pl.DataFrame([{**r, "win_path": r["win_path"].replace("/r/", "/elsewhere/"),
                           "lose_path": r["lose_path"].replace("/r/", "/elsewhere/")} for r in rows])
    assert [Path(p).name for p in calibration_items(moved, 100)["p"]] == [Path(p).name for p in chosen["p"]]


def test_score_pixels_is_calibrated_like_score(tmp_path):
    """Wrong version: ``score_pixels`` (ReFL's path) returning raw head outputs while ``score`` calibrates."""
    from vprefer.reward.model import VPScore, load_backbone
    from vprefer.testing.tiny_models import make_tiny_backbone
    from transformers import CLIPImageProcessor

    bb, tok, _ = load_backbone("clip", str(make_tiny_backbone("clip", tmp_path / "clip", image_size=32)))
    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    m = VPScore(bb, tok, proc, kind="clip", base="tiny", aspects=["overall", "aesthetics"]).eval()
    m.calibration = {"overall": (3.0, 2.0), "aesthetics": (-1.0, 0.5)}
    u8 = (torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 255).round().to(torch.uint8)
    ims = [Image.fromarray(x.permute(1, 2, 0).numpy()) for x in u8]
    ref = m.score(["a cube"] * 3, ims)
    raw = m.score(["a cube"] * 3, ims, normalize=False)
    with torch.no_grad():
        got = m.score_pixels(["a cube"] * 3, u8.float() / 255)
    for k, a in enumerate(m.aspects):
        assert torch.allclose(got[:, k], torch.tensor(ref[a]), atol=1e-4)
        mean, std = m.calibration[a]
        assert torch.allclose(torch.tensor(ref[a]), (torch.tensor(raw[a]) - mean) / std, atol=1e-4)

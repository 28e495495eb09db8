"""ReFL and Diffusion-DPO on a tiny SD-architecture pipeline built from configs (CPU, no download)."""

import math
import random

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from vprefer.diffusion import load_pipeline
from vprefer.recipes import RecipeError
from vprefer.rl import (
    DiffusionDPOConfig,
    DiffusionDPOTrainer,
    ReFLConfig,
    ReFLTrainer,
    diffusion_dpo_loss,
    refl_loss,
)
from vprefer.rl.common import config_from_yaml
from vprefer.testing.toy_rewards import RednessReward

pytestmark = pytest.mark.slow  # training loops on tiny pipelines

EVAL = ["a red cube", "a blue ball", "a cat on a mat", "a tree"]


def refl_cfg(tmp_path, tiny_sd, **kw):
    base = dict(output_dir=str(tmp_path / "refl"), pretrained=str(tiny_sd), resolution=32, max_steps=30,
                learning_rate=3e-3, per_device_train_batch_size=2, num_steps=10, t_lo=6, t_hi=9, lam=1.0,
                grad_scale=1.0, train_guidance_scale=1.0, guidance_scale=1.0, eval_prompts=EVAL, eval_every=0,
                eval_steps_sampling=10, logging_steps=5, save_steps=0, report_to=[],
                reward_aspects={"redness": 1.0})
    base.update(kw)
    return ReFLConfig(**base)


def toy_pairs(folder, n=12):
    folder.mkdir(parents=True, exist_ok=True)
    rng, pairs = random.Random(0), []
    for i in range(n):
        w, l = folder / f"r{i}.png", folder / f"b{i}.png"
        Image.new("RGB", (32, 32), (200 + rng.randint(0, 55), rng.randint(0, 60), rng.randint(0, 60))).save(w)
        Image.new("RGB", (32, 32), (rng.randint(0, 60), rng.randint(0, 60), 200 + rng.randint(0, 55))).save(l)
        pairs.append({"prompt": "a square", "win": str(w), "lose": str(l), "margin": 1.0})
    return pairs


# ---------------------------------------------------------------------------- losses
def test_refl_loss_by_hand():
    r = torch.tensor([0.5, 3.0, 1.0])
    assert refl_loss(r, lam=2.0, scale=1e-3).item() == pytest.approx((1.5 + 0 + 1.0) / 3 * 1e-3)


def test_dpo_loss_by_hand():
    m = torch.tensor([0.3, 0.5])
    loss, st = diffusion_dpo_loss(m, m.flip(0), m, m.flip(0), beta=5000.0)
    assert loss.item() == pytest.approx(math.log(2)) and st["implicit_acc"] == 0.0  # model == reference
    # policy denoises the winner 0.001 better than the reference does: inside = -2500 * (-0.001) = 2.5
    loss, st = diffusion_dpo_loss(torch.tensor([0.1]), torch.tensor([0.2]), torch.tensor([0.101]),
                                  torch.tensor([0.2]), beta=5000.0)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-2.5)), rel=1e-4) and st["implicit_acc"] == 1.0


# ---------------------------------------------------------------------------- ReFL
def test_refl_raises_a_held_out_reward_and_saves_a_plain_diffusers_lora(tiny_sd, tmp_path):
    tr = ReFLTrainer(refl_cfg(tmp_path, tiny_sd), prompts=["a red car", "a green dog", "a house"],
                     reward=RednessReward(), pretrain_data=[])
    hist = tr.train()
    before = next(h for h in hist if h.get("phase") == "before")["eval/reward/redness"]
    after = next(h for h in hist if h.get("phase") == "after")["eval/reward/redness"]
    assert after > before + 0.05, (before, after)
    assert (tmp_path / "refl" / "eval" / "before.png").exists() and (tmp_path / "refl" / "eval" / "after.png").exists()
    pipe = load_pipeline(str(tiny_sd))
    pipe.load_lora_weights(str(tmp_path / "refl"))  # plain diffusers API
    assert any("lora" in n for n, _ in pipe.unet.named_parameters())


def test_refl_pretrain_regulariser_and_resume(tiny_sd, tmp_path):
    imgs = toy_pairs(tmp_path / "img", 4)
    data = [(p["prompt"], p["win"]) for p in imgs]
    cfg = refl_cfg(tmp_path, tiny_sd, max_steps=4, save_steps=2, eval_prompts=[], pretrain_weight=1.0)
    hist = ReFLTrainer(cfg, prompts=["a red car"], reward=RednessReward(), pretrain_data=data).train()
    assert all(math.isfinite(h["loss/pretrain"]) for h in hist if "loss/pretrain" in h)
    assert (tmp_path / "refl" / "checkpoints" / "step-000004").exists()
    cfg.max_steps = 6
    tr = ReFLTrainer(cfg, prompts=["a red car"], reward=RednessReward(), pretrain_data=data)
    tr.train(resume=True)
    assert tr.step_no == 6


def test_refl_rejects_bad_settings(tiny_sd, tmp_path):
    with pytest.raises(ValueError, match="t_lo <= t_hi"):
        ReFLTrainer(refl_cfg(tmp_path, tiny_sd, t_lo=9, t_hi=12), prompts=["x"], reward=RednessReward())
    with pytest.raises(ValueError, match="needs a differentiable reward"):
        ReFLTrainer(refl_cfg(tmp_path, tiny_sd), prompts=["x"], reward=None)


# ---------------------------------------------------------------------------- DPO
def test_dpo_moves_only_the_adapters_and_learns_the_preference(tiny_sd, tmp_path):
    cfg = DiffusionDPOConfig(output_dir=str(tmp_path / "dpo"), pretrained=str(tiny_sd), resolution=32, max_steps=30,
                             learning_rate=2e-3, per_device_train_batch_size=4, beta=500.0, eval_prompts=[],
                             logging_steps=1, save_steps=0, report_to=[])
    tr = DiffusionDPOTrainer(cfg, pairs=toy_pairs(tmp_path / "img"))
    base_before = {n: p.detach().clone() for n, p in tr.unet.named_parameters() if "lora" not in n}
    lora_before = {n: p.detach().clone() for n, p in tr.unet.named_parameters() if "lora" in n}
    hist = tr.train()
    steps = [h for h in hist if "dpo/implicit_acc" in h]
    assert steps[0]["loss/dpo"] == pytest.approx(math.log(2), abs=0.05)  # starts at model == reference
    late = steps[-10:]
    assert sum(h["dpo/implicit_acc"] for h in late) / len(late) > 0.5
    for n, p in tr.unet.named_parameters():
        if "lora" in n:
            continue
        assert torch.equal(p, base_before[n]), f"reference weight {n} moved"
    assert any(not torch.equal(p, lora_before[n]) for n, p in tr.unet.named_parameters() if "lora" in n)


def test_the_trainer_follows_parameters_that_prepare_replaces(tiny_sd, tmp_path, monkeypatch):
    # FSDP2 (rl/accelerate-fsdp.yaml) swaps every parameter of the prepared module for a new, sharded one and
    # points the optimizer at those; clipping and the EMA must follow them, not the objects made before prepare
    # (accelerate runs FSDP only on GPUs, so the swap is done here as fully_shard does it)
    from accelerate import Accelerator

    real = Accelerator.prepare

    def swapping_prepare(self, model, opt):
        model, opt = real(self, model, opt)
        new = {}
        for mod in model.modules():
            for name, q in list(mod.named_parameters(recurse=False)):
                if q.requires_grad:
                    new[q] = torch.nn.Parameter(q.detach().clone())
                    setattr(mod, name, new[q])
        for g in opt.param_groups:
            g["params"] = [new.get(q, q) for q in g["params"]]
        return model, opt

    monkeypatch.setattr(Accelerator, "prepare", swapping_prepare)
    cfg = DiffusionDPOConfig(output_dir=str(tmp_path / "dpo"), pretrained=str(tiny_sd), resolution=32, max_steps=3,
                             learning_rate=2e-3, per_device_train_batch_size=2, beta=500.0, eval_prompts=[],
                             logging_steps=1, save_steps=0, report_to=[], ema_decay=0.5, max_grad_norm=1.0)
    tr = DiffusionDPOTrainer(cfg, pairs=toy_pairs(tmp_path / "img", 4))
    assert [id(p) for p in tr.params] == [id(p) for p in tr.unet.parameters() if p.requires_grad]
    ema0 = [e.clone() for e in tr.ema]
    tr.train()
    assert any(not torch.equal(a, b) for a, b in zip(ema0, tr.ema)), "the EMA did not follow the trained weights"


def test_an_ema_under_fsdp_is_refused_clearly(tiny_sd, tmp_path, monkeypatch):
    # the EMA would hold shards that checkpoints and the saved weights cannot gather: refused before training
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    real = Accelerator.__init__

    def as_fsdp(self, *a, **k):
        real(self, *a, **k)
        # accelerate runs FSDP only on GPUs; its state is shared by every Accelerator: restored after the test
        monkeypatch.setattr(self.state, "distributed_type", DistributedType.FSDP)

    monkeypatch.setattr(Accelerator, "__init__", as_fsdp)
    cfg = DiffusionDPOConfig(output_dir=str(tmp_path / "dpo"), pretrained=str(tiny_sd), resolution=32, max_steps=1,
                             eval_prompts=[], save_steps=0, report_to=[], ema_decay=0.9)
    with pytest.raises(RecipeError, match="ema_decay.*FSDP"):
        DiffusionDPOTrainer(cfg, pairs=toy_pairs(tmp_path / "img", 2))


def test_recipe_unknown_key(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("pretrained: x\nbeta_dpo: 3\n")
    with pytest.raises(RecipeError, match=r"unknown key\(s\) \['beta_dpo'\]"):
        config_from_yaml(DiffusionDPOConfig, bad, output_dir=str(tmp_path))


# ---------------------------------------------------------------------------- CLI, with a real VP-Score
def test_cli_refl_dpo_sample_with_vp_score(tmp_path, monkeypatch):
    from vprefer.cli import app
    from vprefer.ingest import ingest
    from vprefer.reward.build import build
    from vprefer.reward.recipe import RewardRecipe
    from vprefer.testing.stand_ins import ensure_backbone
    from vprefer.testing.synthetic import write_dataset, write_truth_pairs

    monkeypatch.chdir(tmp_path)  # the tiny recipes build their pipeline under ./.cache
    ingest(write_dataset(tmp_path / "syn", 8, 3, size=32), tmp_path / "run")
    write_truth_pairs(tmp_path / "run")
    r = RewardRecipe.load("vp-score-tiny")
    r.backbone.name_or_path = str(tmp_path / "tiny-clip")
    ensure_backbone(r)
    build(r).save_pretrained(tmp_path / "vps")  # an untrained VP-Score is still a differentiable reward
    (tmp_path / "p.txt").write_text("a red circle\na blue square\n")
    run = CliRunner().invoke
    res = run(app, ["rl", "refl", "--recipe", "rl/refl-tiny.yaml", "--reward", str(tmp_path / "vps"), "--prompts",
                    str(tmp_path / "p.txt"), "--pretrain-data", str(tmp_path / "run"), "--out", str(tmp_path / "o1"),
                    "--max-steps", "3"])
    assert res.exit_code == 0, res.output
    assert "eval/reward/prompt_following" in res.output
    res = run(app, ["rl", "dpo", "--recipe", "rl/dpo-tiny.yaml", "--data", str(tmp_path / "run"), "--out",
                    str(tmp_path / "o2"), "--max-steps", "3", "--reward", str(tmp_path / "vps")])
    assert res.exit_code == 0, res.output
    assert "implicit accuracy" in res.output
    res = run(app, ["rl", "sample", "--lora", str(tmp_path / "o1"), "--prompts", str(tmp_path / "p.txt"),
                    "--out", str(tmp_path / "s"), "--steps", "5"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "s" / "before_after.png").exists()


def test_both_loops_run_on_sdxl_and_the_lora_loads(tmp_path):
    from diffusers import StableDiffusionXLPipeline

    from vprefer.testing.tiny_pipelines import make_tiny_sdxl

    xl = make_tiny_sdxl(tmp_path / "xl")
    cfg = refl_cfg(tmp_path, xl, max_steps=2, train_guidance_scale=2.0, guidance_scale=2.0, eval_prompts=EVAL[:2],
                   eval_steps_sampling=4)
    hist = ReFLTrainer(cfg, prompts=["a red cube"], reward=RednessReward()).train()
    assert any("loss/refl" in h for h in hist)
    dcfg = DiffusionDPOConfig(output_dir=str(tmp_path / "xl_dpo"), pretrained=str(xl), resolution=32, max_steps=2,
                              learning_rate=1e-3, per_device_train_batch_size=2, beta=500.0, eval_prompts=[],
                              logging_steps=1, save_steps=0, report_to=[])
    h = DiffusionDPOTrainer(dcfg, pairs=toy_pairs(tmp_path / "img", 2)).train()
    assert h[1]["loss/dpo"] == pytest.approx(math.log(2), abs=0.05)
    pipe = StableDiffusionXLPipeline.from_pretrained(str(xl))
    pipe.load_lora_weights(str(tmp_path / "xl_dpo"))
    assert any("lora" in n for n, _ in pipe.unet.named_parameters())

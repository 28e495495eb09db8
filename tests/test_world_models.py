"""The world's pretrained models (issue 28): the CLIP VP-Score's world recipe puts LoRA on, and the LM the GRPO
rewriter starts from. The commands write folders that ``from_pretrained`` loads, deterministically; the
shipped ones have learned the world (held-out figures), and a wrong pretraining does not."""

import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from vprefer.cli import app
from vprefer.reward.build import build
from vprefer.reward.model import load_backbone
from vprefer.reward.recipe import RewardRecipe
from vprefer.testing.stand_ins import ensure_backbone, ensure_causal_lm
from vprefer.world import Scene
from vprefer.world.backbone import _needs, _shows, caption, pretrain_backbone, zero_shot
from vprefer.world.lm import keeps_attributes, pretrain_lm
from vprefer.world.models import SHIPPED


def _weights(folder: Path) -> dict:
    return load_file(str(folder / "model.safetensors"))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_caption_is_true_of_every_image_it_describes_and_no_other():
    """The multi-positive target: "a circle" is true of a blue circle; "a red circle ..." is not."""
    def true_of(text, scene):
        return all(n < 0 or n == s for n, s in zip(_needs(text), _shows(scene)))

    blue = Scene("blue", "circle", "white", "small")
    assert true_of("a circle", blue) and true_of("blue circle, white background", blue)
    assert not true_of("a red circle on a white background", blue)
    assert not true_of("a blue circle on a black background", blue)
    assert not true_of("large blue circle", blue)
    noisy = Scene("blue", "circle", "white", artefacts=0.7, harmful=True)
    assert true_of("a circle, with grainy noise and glitch blocks, with a cyan badge in the corner", noisy)
    assert not true_of("a circle, with grainy noise and glitch blocks", blue)
    rng = random.Random(0)
    assert all(true_of(caption(noisy, rng), noisy) for _ in range(50))  # every caption of an image is true of it


def test_pretrain_backbone_writes_a_clip_vpscore_loads_and_is_deterministic(tmp_path):
    kw = dict(steps=3, batch_size=16, pool=32, zero_shot_images=12, log=None)
    m = pretrain_backbone(tmp_path / "a", **kw)
    pretrain_backbone(tmp_path / "b", **kw)
    assert _same(_weights(tmp_path / "a"), _weights(tmp_path / "b"))
    assert m["steps"] == 3 and m["first_loss"] > 0
    model, tok, proc = load_backbone("clip", str(tmp_path / "a"))  # VP-Score's own loading path
    assert type(model).__name__ == "CLIPModel" and tok("a grey triangle")["input_ids"].count(tok.unk_token_id) == 0
    assert proc.crop_size["height"] == 32


def test_pretrain_backbone_command_and_its_refusal(tmp_path):
    r = CliRunner().invoke(app, ["world", "pretrain-backbone", "--out", str(tmp_path / "bb"), "--steps", "2",
                                 "--batch-size", "8", "--pool", "16"])
    assert r.exit_code == 0, r.output
    assert "zero-shot on held-out combinations" in r.output and (tmp_path / "bb" / "model.safetensors").exists()
    r = CliRunner().invoke(app, ["world", "pretrain-backbone", "--out", str(tmp_path / "x"), "--batch-size", "1"])
    assert r.exit_code == 1 and "batch_size" in r.output and "Traceback" not in r.output


def test_world_recipe_puts_lora_on_the_shipped_backbone(tmp_path):
    r = RewardRecipe.load("vp-score-world")
    r.backbone.name_or_path = str(tmp_path / "world-clip")
    ensure_backbone(r)
    assert _same(_weights(tmp_path / "world-clip"), _weights(SHIPPED["clip"]))
    model = build(r)
    lora = [n for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
    frozen = [n for n, p in model.backbone.named_parameters() if not p.requires_grad]
    assert lora and frozen and all("lora_" not in n for n in frozen)


def test_the_shipped_backbone_reads_held_out_combinations_zero_shot():
    """Chance is 1/6 colour, 1/3 shape and background, 1/54 all three; the shipped model was measured
    at the figures in its README (BENCHMARKS.md), this asks for well above chance."""
    from transformers import CLIPImageProcessor, CLIPModel, PreTrainedTokenizerFast

    d = str(SHIPPED["clip"])
    z = zero_shot(CLIPModel.from_pretrained(d), PreTrainedTokenizerFast.from_pretrained(d),
                  CLIPImageProcessor.from_pretrained(d), n=66)
    assert z["colour"] > 0.8 and z["shape"] > 0.6 and z["background"] > 0.8 and z["all"] > 0.4, z


def test_pretrain_lm_writes_a_causal_lm_and_is_deterministic(tmp_path):
    from transformers import AutoModelForCausalLM

    pretrain_lm(tmp_path / "a", steps=2, batch_size=2, log=None, evaluate=False)
    pretrain_lm(tmp_path / "b", steps=2, batch_size=2, log=None, evaluate=False)
    assert _same(_weights(tmp_path / "a"), _weights(tmp_path / "b"))
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "a").config.model_type == "qwen2"


def test_keeps_attributes():
    assert keeps_attributes("a red circle on a white background", "a large red circle drawn on a white background")
    assert not keeps_attributes("a red circle on a white background", "a large red circle on a grey background")
    assert not keeps_attributes("red circle", "a small circle on a black background")
    assert keeps_attributes("a circle", "a small blue circle on a black background")  # it may add what was unsaid


def test_world_grpo_recipe_starts_from_the_shipped_rewriter(tmp_path):
    from vprefer.recipes import load_config
    from vprefer.rl.prompt_opt import PromptOptConfig, load_policy, rewrite

    c = load_config(PromptOptConfig, "grpo-prompts-world", "rl", output_dir=str(tmp_path / "out"))
    assert Path(c.policy).name == "world-lm" and c.create_tiny_if_missing
    ensure_causal_lm(str(tmp_path / "world-lm"), True)
    model, tok = load_policy(str(tmp_path / "world-lm"), device="cpu")
    [out] = rewrite(model, tok, ["a purple triangle on a black background"], c.style, max_new_tokens=c.max_completion_length)
    assert keeps_attributes("a purple triangle on a black background", out), out


@pytest.mark.slow
def test_the_shipped_rewriter_keeps_the_attributes_of_held_out_prompts():
    from vprefer.prompts.local import load_policy
    from vprefer.world.lm import held_out_prompts, measure

    model, tok = load_policy(str(SHIPPED["lm"]), device="cpu")
    m = measure(model, tok, held_out_prompts())
    assert m["plain"]["keeps_attributes"] >= 0.8 and m["short"]["keeps_attributes"] >= 0.6, m


@pytest.mark.slow
def test_vpscore_on_the_shipped_backbone_beats_a_random_one_on_held_out_prompts(tmp_path):
    """LoRA on the world CLIP against LoRA on the same architecture with random weights, both trained on
    the stand-in judge's pairs for training prompts, measured on held-out prompts against the truth
    (benchmarks/world_reward.py at full size). Wrong version tried by hand: a backbone pretrained with
    captions shuffled against images (``--shuffle-captions``) loses the advantage."""
    from vprefer.reward import VPScore
    from vprefer.reward.train import train_reward
    from vprefer.world import world_prompts
    from vprefer.world.backbone import new_backbone
    from vprefer.world.reward_check import accuracy, write_world_run

    train = write_world_run(tmp_path / "train", world_prompts(43, 0), sets_per_prompt=1, images_per_set=5)
    held = write_world_run(tmp_path / "held", world_prompts(11, 0, held_out=True), sets_per_prompt=3,
                           images_per_set=5, seed=1, held_out=True)
    model, _, _ = new_backbone(tmp_path / "random")
    model.save_pretrained(tmp_path / "random", safe_serialization=True)
    acc = {}
    for name, path in (("world", tmp_path / "world-clip"), ("random", tmp_path / "random")):
        r = RewardRecipe.load("vp-score-world")
        r.backbone.name_or_path = str(path)
        r.training.num_train_epochs, r.training.logging_steps, r.training.save_steps = 3, 10_000, 10_000
        r.annotators = ["judge"]
        ensure_backbone(r)
        train_reward(r, [train], tmp_path / f"vp-{name}")
        acc[name] = accuracy(VPScore.from_pretrained(tmp_path / f"vp-{name}", device="cpu"), held, n_boot=50)
    for a in ("prompt_following", "overall"):
        assert acc["world"][a]["accuracy"] > acc["random"][a]["accuracy"] + MARGIN[a], (a, acc)


MARGIN = {"prompt_following": 0.1, "overall": 0.05}  # about half the gaps measured at this size (BENCHMARKS.md)

"""VP-Score: loss, adapters, quantization, persistence, differentiability, evaluation rules, learning."""

import math
from pathlib import Path

import polars as pl
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

from vprefer import schema
from vprefer.ingest import ingest
from vprefer.metrics import pair_metrics
from vprefer.recipes import RecipeError
from vprefer.reward import VPScore, bradley_terry_loss
from vprefer.reward.build import build
from vprefer.reward.evaluate import evaluate_run
from vprefer.reward.model import load_backbone
from vprefer.reward.recipe import RewardRecipe
from vprefer.reward.train import train_reward
from vprefer.testing.helpers import tiny_reward_recipe
from vprefer.testing.stand_ins import ensure_backbone
from vprefer.testing.synthetic import write_dataset, write_truth_pairs


def make_run(folder, n, seed=0):
    ingest(write_dataset(folder / "syn", n, 4, size=32, seed=seed), folder / "run")
    write_truth_pairs(folder / "run")
    return folder / "run"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("world"), 24)


recipe = tiny_reward_recipe


# ---------------------------------------------------------------------------- loss
def test_bradley_terry_by_hand():
    d = torch.tensor([0.0, 2.0])
    assert bradley_terry_loss(d, torch.zeros(2) * 0).item() == pytest.approx((math.log(2) + math.log1p(math.exp(-2))) / 2)
    # a tie is a soft 0.5 target: log 2 at d = 0, larger as the rewards separate
    tie = torch.tensor([True, True])
    assert bradley_terry_loss(d, torch.zeros(2), tie=tie).item() == pytest.approx(
        (math.log(2) + 0.5 * (math.log1p(math.exp(-2)) + math.log1p(math.exp(2)))) / 2)
    # weights normalise; dropped ties do not count
    w = torch.tensor([3.0, 1.0])
    assert bradley_terry_loss(d, torch.zeros(2), weight=w).item() == pytest.approx(
        (3 * math.log(2) + math.log1p(math.exp(-2))) / 4)
    mixed = torch.tensor([True, False])
    assert bradley_terry_loss(d, torch.zeros(2), tie=mixed, tie_mode="drop").item() == pytest.approx(
        math.log1p(math.exp(-2)))
    with pytest.raises(ValueError):
        bradley_terry_loss(d, d, tie_mode="bogus")


# ---------------------------------------------------------------------------- recipes
def test_recipe_errors_are_clear(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("name: x\nbackbone: {kind: clip, name_or_path: y}\nlearning_rate: 3\n")
    with pytest.raises(RecipeError, match="learning_rate: unknown key"):
        RewardRecipe.load(str(bad))
    bad.write_text("name: x\nbackbone: {kind: clip}\n")
    with pytest.raises(RecipeError, match="backbone.name_or_path: Field required"):
        RewardRecipe.load(str(bad))
    r = RewardRecipe.validated({"name": "x", "backbone": {"kind": "clip", "name_or_path": str(tmp_path / "nothing")}})
    with pytest.raises(RecipeError, match="cannot load backbone"):
        build(r)
    with pytest.raises(RecipeError, match="only be trained with LoRA"):
        build(r.model_copy(update={"quantization": "4bit"}))


# ---------------------------------------------------------------------------- training paths
def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_lora_training_changes_only_adapters_and_heads(world, tmp_path):
    r = recipe(tmp_path, lora__enabled=True, training__learning_rate=1e-2)
    from vprefer.reward import build as build_mod

    seen = {}
    orig = build_mod.build

    def spy(rc):
        m = orig(rc)
        seen["model"], seen["before"] = m, _snapshot(m)
        return m

    build_mod.build = spy
    try:
        import vprefer.reward.train as tr
        tr.build = spy
        train_reward(r, [world], tmp_path / "m")
    finally:
        build_mod.build = orig
        tr.build = orig
    after = _snapshot(seen["model"])
    changed = [n for n in after if not torch.equal(after[n], seen["before"][n])]
    assert changed and all("lora_" in n or n.startswith("heads.") for n in changed), changed
    assert any("lora_" in n for n in changed)
    assert (tmp_path / "m" / "adapter" / "adapter_model.safetensors").exists()


def test_save_load_gives_identical_scores_and_score_pixels_has_gradients(world, tmp_path):
    train_reward(recipe(tmp_path), [world], tmp_path / "m")
    imgs = sorted((world / "images").glob("*.png"))[:5]
    prompts = ["a red circle on a plain background"] * 5
    a = VPScore.from_pretrained(tmp_path / "m")
    b = VPScore.from_pretrained(tmp_path / "m")
    sa, sb = a.score(prompts, imgs, batch_size=2), b.score(prompts, imgs, batch_size=5)
    for k in sa:
        assert sa[k] == pytest.approx(sb[k], abs=1e-5)
    # preprocessing split over threads (slices of 1, 2, 2 and empty ones) keeps every image with its prompt
    for workers, bs in ((3, 5), (4, 2), (1, 5)):
        sw = a.score(prompts, imgs, batch_size=bs, workers=workers)
        assert all(sw[k] == pytest.approx(sb[k], abs=1e-5) for k in sb)
    # one lazily opened image in every slice: decoded once, not by three threads reading one file at once
    same = a.score(prompts, [Image.open(imgs[0])] * 5, batch_size=5, workers=3)
    assert all(v == pytest.approx(sb[k][0], abs=1e-5) for k in sb for v in same[k])
    assert len({round(v, 4) for v in sb["aesthetics"]}) > 1  # distinct images: a shuffled order would show
    assert set(sa) == set(schema.ASPECTS) | {"overall"}
    assert not any(p.suffix in (".bin", ".pt", ".pkl") for p in (tmp_path / "m").rglob("*") if p.parent.name != "checkpoints"
                   and "checkpoint-" not in str(p))
    px = torch.rand(2, 3, 48, 48, requires_grad=True)
    r = a.score_pixels(prompts[:2], px, aspects=["aesthetics", "prompt_following"])
    r.sum().backward()
    assert r.shape == (2, 2) and torch.isfinite(px.grad).all() and px.grad.abs().sum() > 0



def test_score_pixels_matches_score_with_clip_normalisation(tmp_path):
    """The ReFL path (torch resize + normalise) must score what the PIL path scores.

    The tiny backbones use mean = std = 0.5, where forgetting the normalisation still leaves
    inputs in a plausible range; CLIP's own statistics make the two paths disagree loudly."""
    from transformers import CLIPImageProcessor

    from vprefer.reward.model import load_backbone
    from vprefer.testing.tiny_models import make_tiny_backbone

    bb, tok, _ = load_backbone("clip", str(make_tiny_backbone("clip", tmp_path / "clip", image_size=32)))
    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                              image_mean=[0.4815, 0.4578, 0.4082], image_std=[0.2686, 0.2613, 0.2758])
    torch.manual_seed(0)
    m = VPScore(bb, tok, proc, kind="clip", base="tiny", aspects=["overall"]).eval()
    g = torch.rand(6, 3, 1, 1, generator=torch.Generator().manual_seed(1))
    ramp = torch.linspace(0, 1, 64)
    smooth = (0.15 + 0.7 * (g * ramp.view(1, 1, -1, 1) + (1 - g) * ramp.view(1, 1, 1, -1)))  # 6 images, 64x64
    for size in (32, 64):  # at the backbone's size (no resampling) and downscaled 2x (bicubic both ways)
        px = F.interpolate(smooth, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        u8 = (px * 255).round().to(torch.uint8)
        ims = [Image.fromarray(x.permute(1, 2, 0).numpy()) for x in u8]
        prompts = ["a red circle"] * len(ims)
        ref = torch.tensor(m.score(prompts, ims, normalize=False)["overall"])
        with torch.no_grad():
            got = m.score_pixels(prompts, u8.float() / 255, normalize=False)[:, 0]
            mean, std = m.pixel_mean.clone(), m.pixel_std.clone()
            m.pixel_mean.zero_(), m.pixel_std.fill_(1.0)  # what score_pixels gives without (x - mean) / std
            raw = m.score_pixels(prompts, u8.float() / 255, normalize=False)[:, 0]
            m.pixel_mean.copy_(mean), m.pixel_std.copy_(std)
        spread = (ref.max() - ref.min()).item()  # how much scores move between these images
        assert spread > 0
        # same pixels in, same score out; downscaling differs only by PIL vs torch bicubic and uint8 rounding
        assert (got - ref).abs().max().item() < (1e-5 if size == 32 else 0.1 * spread)
        assert (raw - ref).abs().min().item() > 2 * spread


def test_four_bit_lora_path_on_cpu(world, tmp_path):
    r = recipe(tmp_path, quantization="4bit", lora__enabled=True)
    train_reward(r, [world], tmp_path / "q")
    m = VPScore.from_pretrained(tmp_path / "q")
    assert any(type(x).__name__ == "Linear4bit" for x in m.backbone.modules())
    s = m.score(["a blue square as a flat icon"], [sorted((world / "images").glob("*.png"))[0]])
    assert all(math.isfinite(v[0]) for v in s.values())


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the process's mappings (Linux)")
def test_a_four_bit_load_does_not_keep_the_checkpoint_mapped(tmp_path):
    # quantizing reads every page of the memory-mapped safetensors file; one weight left as a view of it (the
    # token embedding) kept all of it resident: 1.6 GB of RSS for CLIP-L (found measuring the rehearsal)
    import shutil

    r = recipe(tmp_path)
    own = shutil.copytree(r.backbone.name_or_path, tmp_path / "bb")  # a copy no other test has mapped
    model, _, _ = load_backbone(r.backbone.kind, str(own), "4bit")
    assert any(type(x).__name__ == "Linear4bit" for x in model.modules())
    maps = Path("/proc/self/maps").read_text()
    for ckpt in own.glob("*.safetensors"):
        assert str(ckpt.resolve()) not in maps


@pytest.mark.parametrize("checkpointing", [False, True])
def test_blip_cross_encoder_trains_and_reloads(world, tmp_path, checkpointing):
    # with gradient checkpointing (as reward/vp-score-blip.yaml) and frozen embeddings, BLIP's in-place add of
    # position embeddings met a leaf that requires grad: found by the full-size rehearsal
    r = recipe(tmp_path, backbone__kind="blip", backbone__tiny="blip", freeze_ratio=0.5,
               training__gradient_checkpointing=checkpointing)
    ensure_backbone(r)
    s = train_reward(r, [world], tmp_path / "b")
    assert s["steps"] == 3
    assert VPScore.from_pretrained(tmp_path / "b").kind == "blip"


def test_checkpoint_and_resume(world, tmp_path):
    r = recipe(tmp_path, training__max_steps=4, training__save_steps=2)
    train_reward(r, [world], tmp_path / "c")
    assert (tmp_path / "c" / "checkpoints" / "checkpoint-4" / "trainable.safetensors").exists()
    r.training.max_steps = 6
    s = train_reward(r, [world], tmp_path / "c", resume=True)
    assert s["resumed_from"].endswith("checkpoint-4") and s["steps"] == 6


# ---------------------------------------------------------------------------- evaluation
def test_tie_rules_by_hand():
    pairs = schema.frame("pairs", [
        {"prompt_id": "p", "win_image_id": "a", "lose_image_id": "b", "aspect": "overall", "annotator": "h",
         "margin": 1, "weight": 1, "tie": False},   # model right
        {"prompt_id": "p", "win_image_id": "a", "lose_image_id": "c", "aspect": "overall", "annotator": "h",
         "margin": 1, "weight": 1, "tie": False},   # model ties -> 0 (skip rule) / 0.5 (half rule)
        {"prompt_id": "q", "win_image_id": "d", "lose_image_id": "e", "aspect": "overall", "annotator": "h",
         "margin": 1, "weight": 1, "tie": False},   # model wrong
        {"prompt_id": "q", "win_image_id": "d", "lose_image_id": "f", "aspect": "overall", "annotator": "h",
         "margin": 0, "weight": 1, "tie": True},    # gold tie, model decides -> skipped / 0.5
    ])
    scores = pl.DataFrame({"model": "m", "prompt_id": ["p", "p", "p", "q", "q", "q"],
                           "image_id": list("abcdef"), "aspect": "overall", "score": [2.0, 1.0, 2.0, 0.0, 1.0, 3.0]})
    row = pair_metrics(pairs, scores, n_boot=50).row(0, named=True)
    assert row["acc_skip_ties"] == pytest.approx(1 / 3)
    assert row["acc_ties_half"] == pytest.approx((1 + 0.5 + 0 + 0.5) / 4)
    assert row["gold_ties"] == 1 and row["prompts"] == 2
    assert row["ci_skip_lo"] <= row["acc_skip_ties"] <= row["ci_skip_hi"]


# ---------------------------------------------------------------------------- learning check
@pytest.mark.slow
def test_learning_check_tiny_backbone_from_scratch(tmp_path):
    """Procedural world where the right answer depends on the prompt's colour: >= 90% held out."""
    train_run = make_run(tmp_path / "train", 300, seed=0)
    held_out = make_run(tmp_path / "held", 50, seed=11)
    r = recipe(tmp_path, training__max_steps=-1, training__num_train_epochs=8, training__val_fraction=0.0)
    train_reward(r, [train_run], tmp_path / "m")
    rep = evaluate_run(VPScore.from_pretrained(tmp_path / "m"), held_out, annotator="truth", n_boot=100)
    acc = {a["aspect"]: a["acc_skip_ties"] for a in rep["aspects"] if a["pairs"] > a["gold_ties"]}
    print("held-out accuracy", acc)
    assert acc["prompt_following"] >= 0.85 and acc["fidelity"] >= 0.85 and acc["aesthetics"] >= 0.85
    assert sum(acc.values()) / len(acc) >= 0.9


def test_cli_train_eval_score(world, tmp_path):
    rc = tmp_path / "tiny.yaml"
    r = recipe(tmp_path)
    import yaml
    rc.write_text(yaml.safe_dump(r.resolved()))
    run = CliRunner().invoke
    from vprefer.cli import app
    res = run(app, ["train-reward", "--recipe", str(rc), "--data", str(world), "--out", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    res = run(app, ["eval-reward", str(tmp_path / "m"), "--data", str(world), "--annotator", "truth", "--n-boot", "50"])
    assert res.exit_code == 0, res.output
    assert "ties skipped" in res.output and (tmp_path / "m" / "eval-run.json").exists()
    res = run(app, ["score", str(tmp_path / "m"), "--run", str(world)])
    assert res.exit_code == 0, res.output
    from vprefer.store import Run
    assert Run(world).read("scores").height == Run(world).read("images").height * 5
    img = str(sorted((world / "images").glob("*.png"))[0])
    res = run(app, ["score", str(tmp_path / "m"), img, "--prompt", "a red circle"], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "prompt_following" in res.output


def test_evaluate_reward_checks_its_inputs_in_the_api_before_loading_a_model(tmp_path):
    """The checks eval-reward made in the CLI only are the API's: a notebook gets the same clear errors, and
    nothing is loaded first (the model path does not even exist)."""
    from vprefer.errors import InputError
    from vprefer.reward.evaluate import evaluate_reward

    f = tmp_path / "test.json"
    f.write_text("[]")
    for kw, msg in [({"fmt": "nope"}, "unknown format"), ({"fmt": "imagereward"}, "--images-root"),
                    ({"fmt": "imagereward", "images_root": tmp_path, "held_out": True}, "held_out.json")]:
        with pytest.raises(InputError, match=msg):
            evaluate_reward(tmp_path / "no-model", f, **kw)

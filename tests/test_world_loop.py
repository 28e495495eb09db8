"""The closed loop's measuring half (truth before/after, paired, CIs over prompts), VP-Score's similarity prior,
the shipped world generator, and the loop's stages wired end to end (slow)."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vprefer.reward import VPScore
from vprefer.reward.build import build
from vprefer.testing.helpers import tiny_reward_recipe
from vprefer.world import parse_prompt, prompt_of, truth_eval
from vprefer.world.loop import LoopConfig, grpo_gen_prompts, held_out_items, seen_items, training_prompts
from vprefer.world.models import SHIPPED, shipped_name
from vprefer.world.prompts import HELD_OUT_COMBOS, TRAIN_COMBOS
from vprefer.world.scenes import Scene


def _t(shape=True, colour=True):
    pf = (int(shape) + int(colour) + 1) / 3
    return {"colour_right": colour, "shape_right": shape, "background_right": True,
            "all_right": shape and colour, "prompt_following": pf}


def _reading(prompts, truths, reward=None):
    return truth_eval.Reading(list(prompts), list(range(len(prompts))), truths, reward)


def test_compare_is_paired_by_prompt_and_seed_with_a_ci_over_prompts():
    prompts = ["a"] * 4 + ["b"] * 4 + ["c"] * 4
    before = _reading(prompts, [_t(shape=False)] * 12, reward=[0.0] * 12)
    after = _reading(prompts, [_t(shape=True)] * 8 + [_t(shape=False)] * 4, reward=[1.0] * 8 + [0.0] * 4)
    c = truth_eval.compare(before, after, n_boot=500)
    assert c["images"] == 12 and c["prompts"] == 3
    assert c["shape_right"]["before"] == 0 and c["shape_right"]["after"] == pytest.approx(8 / 12)
    assert c["all_right"]["delta"] == pytest.approx(8 / 12)
    assert c["colour_right"]["delta"] == 0 and c["colour_right"]["ci"] == [0, 0]
    lo, hi = c["shape_right"]["ci"]  # resampling prompts: each draw is 0, 1/3, 2/3 or 1 of them improved
    assert 0 <= lo < 8 / 12 < hi <= 1
    assert c["win_rate"]["rate"] == pytest.approx((8 + 0.5 * 4) / 12) and c["win_rate"]["decided"] == 8
    assert c["reward"]["delta"] == pytest.approx(8 / 12)
    h = c["hacking"]  # both rose together: no gap to speak of
    assert h["reward_gain_sd"] > 0 and h["truth_gain_sd"] > 0
    # a reward that rises while the truth falls is the hacking the gap reports
    worse = _reading(prompts, [_t(shape=False, colour=False)] * 12, reward=[2.0] * 12)
    base = _reading(prompts, [_t(shape=False)] * 6 + [_t(shape=False, colour=True)] * 6, reward=list(range(12)))
    g = truth_eval.compare(base, worse, n_boot=200)["hacking"]
    assert g["gap_sd"] > 1 and g["truth_gain_sd"] < 0
    with pytest.raises(ValueError, match="same"):
        truth_eval.compare(before, _reading(prompts[::-1], [_t()] * 12))
    # how many shapes are drawn large, before and after (a flat image shows no size: not large)
    assert "large_share" not in c  # readings without sizes report none (NaN would not be JSON)
    before.sizes, after.sizes = ["small"] * 9 + ["large"] * 3, ["large"] * 6 + [None] * 2 + ["small"] * 4
    c = truth_eval.compare(before, after, n_boot=50)
    assert c["large_share"] == {"before": 0.25, "after": 0.5} and "drawn large 0.25->0.50" in truth_eval.line("x", c)


def test_reward_accuracy_counts_pairs_the_truth_decides_within_a_prompt():
    r = _reading(["a", "a", "a", "b"], [_t(False), _t(True), _t(True), _t(True)], reward=[0.1, 0.5, 0.0, 9.0])
    acc = truth_eval.reward_accuracy(r)  # pairs (0,1) right, (0,2) wrong; (1,2) a truth tie; b alone
    assert acc == {"pairs": 2, "accuracy": 0.5}


def test_loop_prompts_keep_held_out_combinations_out_of_training():
    c = LoopConfig()
    train = training_prompts(c)
    held, seeds = held_out_items(c)
    from vprefer.world import parse_prompt

    combos = {tuple(parse_prompt(p)[k] for k in ("colour", "shape", "background")) for p in train}
    assert combos == set(TRAIN_COMBOS) and not combos & set(HELD_OUT_COMBOS)
    assert len(held) == len(HELD_OUT_COMBOS) * c.eval_seeds and len(set(zip(held, seeds))) == len(held)
    seen = seen_items(c)
    assert not set(seeds) & set(seen[1]) and min(seeds) >= 1_000_000  # evaluation seeds are no training seed
    # online GRPO's prompts: by default the training combinations' plain prompts, each once, none held out
    plain = grpo_gen_prompts(c)
    assert sorted(plain) == sorted(prompt_of(Scene(*x)) for x in TRAIN_COMBOS) and set(plain) <= set(train)
    assert not set(plain) & set(held) and all(parse_prompt(p)["size"] is None for p in plain)
    assert grpo_gen_prompts(LoopConfig(grpo_gen_prompts="all")) == train
    with pytest.raises(ValueError, match="grpo_gen_prompts"):
        grpo_gen_prompts(LoopConfig(grpo_gen_prompts="descriptive"))


def test_world_model_stand_in_folders_are_named_copies():
    assert shipped_name(".cache/world-sd") == "sd" and shipped_name("x/world-lm") == "lm"
    assert shipped_name(".cache/tiny-sd") is None
    assert (SHIPPED["sd"] / "model_index.json").exists() and (SHIPPED["clip"] / "model.safetensors").exists()


def test_the_shipped_generator_draws_the_world_right_often_but_not_always():
    """Recognisable world images (colour and background read right) that get the shape wrong often enough
    for fine-tuning to have something to fix; the measured figures are in BENCHMARKS.md."""
    from vprefer.diffusion import load_pipeline

    pipe = load_pipeline(str(SHIPPED["sd"]))
    prompts = [prompt_of(Scene(*c)) for c in HELD_OUT_COMBOS] * 2
    r = truth_eval.read(pipe, prompts, list(range(1_000_000, 1_000_000 + len(prompts))))
    assert r.share("colour_right") >= 0.8 and r.share("background_right") >= 0.8, r.truth
    assert 0.1 <= r.share("all_right") <= 0.9
    assert len(r.sizes) == len(prompts) and set(r.sizes) <= {"large", "small", None} and "large" in r.sizes


def test_similarity_prior_starts_every_head_at_the_zero_shot_score_and_survives_saving(tmp_path):
    r = tiny_reward_recipe(tmp_path, similarity_prior=True)
    model = build(r).eval()
    px = torch.rand(3, 3, 32, 32)
    ids, mask = model.tokenize(["a red circle", "a blue square", "a cat"], "cpu")
    with torch.no_grad():
        raw = model(px, ids, mask)
        bb = model.backbone
        img = bb.get_image_features(pixel_values=px)
        txt = bb.get_text_features(input_ids=ids, attention_mask=mask)
        img = img if isinstance(img, torch.Tensor) else img.pooler_output
        txt = txt if isinstance(txt, torch.Tensor) else txt.pooler_output
        zero_shot = (F.normalize(img, dim=-1) * F.normalize(txt, dim=-1)).sum(-1) * bb.logit_scale.exp()
    for k in range(raw.shape[1]):  # every aspect starts as the backbone's own score, not random heads
        assert torch.allclose(raw[:, k], zero_shot, atol=1e-5)
    with torch.no_grad():
        model.prior_scale.mul_(0.5)
    model.save_pretrained(tmp_path / "m")
    back = VPScore.from_pretrained(tmp_path / "m", device="cpu")
    assert back.similarity_prior and torch.allclose(back.prior_scale, model.prior_scale)
    with torch.no_grad():
        assert torch.allclose(back(px, ids, mask), model(px, ids, mask), atol=1e-5)
    off = build(tiny_reward_recipe(tmp_path)).eval()
    with torch.no_grad():
        assert not torch.allclose(off(px, ids, mask)[:, 0], zero_shot, atol=1e-3)  # the setting matters
    assert json.loads((tmp_path / "m" / "vpscore_config.json").read_text())["similarity_prior"] == r.aspects


def test_a_similarity_prior_on_named_aspects_leaves_the_other_heads_alone(tmp_path):
    """Wrong versions: the list read as ``true`` (every head starts at the cosine), or the unnamed heads'
    scale left trainable (they drift onto the cosine)."""
    r = tiny_reward_recipe(tmp_path, similarity_prior=["prompt_following"])
    model = build(r).eval()
    plain = build(tiny_reward_recipe(tmp_path)).eval()
    plain.load_state_dict(model.state_dict(), strict=False)
    px = torch.rand(3, 3, 32, 32)
    ids, mask = model.tokenize(["a red circle", "a blue square", "a cat"], "cpu")
    k = r.aspects.index("prompt_following")
    with torch.no_grad():
        raw, ref = model(px, ids, mask), plain(px, ids, mask)
        zero_shot = raw[:, k]
    assert zero_shot.abs().max() > 0 and torch.allclose(ref[:, k], torch.zeros(3), atol=1e-6)  # head zeroed
    others = [i for i in range(len(r.aspects)) if i != k]
    assert torch.allclose(raw[:, others], ref[:, others], atol=1e-6)  # the unnamed heads: exactly as without it
    model(px, ids, mask).sum().backward()
    assert model.prior_scale.grad[others].abs().max() == 0 and model.prior_scale.grad[k] != 0
    model.save_pretrained(tmp_path / "m")
    assert VPScore.from_pretrained(tmp_path / "m", device="cpu").similarity_prior == ["prompt_following"]
    from vprefer.recipes import RecipeError
    from vprefer.reward.recipe import RewardRecipe

    with pytest.raises(RecipeError, match="not among the aspects"):
        RewardRecipe.load("vp-score-tiny", similarity_prior=["prompt_follwing"])


def test_similarity_prior_is_refused_for_a_cross_encoder(tmp_path):
    from vprefer.errors import InputError

    with pytest.raises(InputError, match="dual encoder"):
        build(tiny_reward_recipe(tmp_path, similarity_prior=True, backbone__kind="blip", backbone__tiny="blip"))


@pytest.mark.slow
def test_the_closed_loop_runs_every_stage_on_the_real_paths(tmp_path):
    """Tiny sizes: image sets by vprefer generate, the judge over HTTP, pairs, VP-Score, ReFL, DPO and the GRPO
    rewriter each trained, then measured on held-out prompts and seeds. This checks the wiring and the
    figures' shape; whether the loops help is the benchmark's question (BENCHMARKS.md)."""
    from vprefer.world.loop import closed_loop

    c = LoopConfig(descriptive_per_combo=0, images_per_set=2, other_images_per_set=2, permutations=1, reward_epochs=1,
                   refl_steps=2, dpo_steps=2, grpo_steps=1, eval_seeds=1, train_eval_seeds=0)
    res = closed_loop(tmp_path / "loop", c, log=lambda m: None)
    assert res["annotation"]["ok"] == len(TRAIN_COMBOS) and res["annotation"]["invalid"] == 0
    for name in ("refl", "dpo", "grpo"):
        h = res[name]["held_out"]
        assert h["images"] == len(HELD_OUT_COMBOS) and 0 <= h["all_right"]["after"] <= 1, name
        assert not math.isnan(h["reward"]["before"])
    assert (tmp_path / "loop" / "refl" / "adapter_config.json").exists() or any((tmp_path / "loop" / "refl").glob("*.safetensors"))
    assert json.loads((tmp_path / "loop" / "closed_loop.json").read_text())["seconds"]["total"] > 0
    assert Path(tmp_path / "loop" / "grpo" / "adapter_config.json").exists()


def test_the_truth_grid_frames_each_image_by_its_truth_and_keeps_reading_order(tmp_path):
    """Wrong versions: frames from the other row's truth, or columns picked by how they look."""
    from PIL import Image

    from vprefer.world.scenes import Scene, draw

    ims = [draw(Scene("red", "circle", "white"), 32, seed=k) for k in range(3)]
    prompts = ["a red circle on a white background"] * 2 + ["a blue square on a grey background"]
    before = truth_eval.Reading(prompts, [1, 2, 1], [{"all_right": True}, {"all_right": True}, {"all_right": False}],
                                images=ims)
    after = truth_eval.Reading(prompts, [1, 2, 1], [{"all_right": False}, {"all_right": True}, {"all_right": True}],
                               images=ims)
    g = Image.open(truth_eval.grid(before, after, tmp_path / "g.png", side=40)).convert("RGB")
    assert g.width == 2 * (40 + 4) + 4  # one column per prompt (its first seed), in reading order
    green, red = (0x1a, 0x98, 0x50), (0xd7, 0x30, 0x27)
    top, bottom = 4 - 1, 4 + 40 + 4 - 1  # a frame pixel of each row
    assert g.getpixel((4 + 10, top)) == green and g.getpixel((4 + 10, bottom)) == red
    assert g.getpixel((4 + 44 + 10, top)) == red and g.getpixel((4 + 44 + 10, bottom)) == green


def test_a_rerun_keeps_only_the_stages_whose_results_are_on_disk(tmp_path):
    """Wrong versions: a stage skipped because its folder exists (a run killed mid-training would be kept
    half-done), or the measurements skipped (a rerun must measure again)."""
    from vprefer.store import Run
    from vprefer.world.loop import Stages, finished

    s = Stages(tmp_path / "cl")
    assert not any(finished(s, n) for n in ("image sets", "VP-Score", "refl", "dpo", "grpo", "models"))
    (s.out / "refl").mkdir(parents=True)
    (s.out / "refl" / "metrics.jsonl").write_text("{}\n")  # started, not finished
    assert not finished(s, "refl")
    (s.out / "refl" / "pytorch_lora_weights.safetensors").write_bytes(b"x")
    (s.out / "grpo").mkdir()
    (s.out / "grpo" / "adapter_model.safetensors").write_bytes(b"x")
    s.vpscore.mkdir()
    (s.vpscore / "heads.safetensors").write_bytes(b"x")
    assert finished(s, "refl") and finished(s, "grpo") and finished(s, "VP-Score") and not finished(s, "dpo")
    assert not finished(s, "measure refl (held_out)")
    Run(s.run, create=True)
    assert not finished(s, "image sets")  # a run without pairs: the judge has not finished


@pytest.mark.slow
def test_the_closed_loop_runs_online_grpo_and_the_flow_loops_on_the_real_paths(tmp_path):
    """Issues 30/31 on the same world: GRPO on the generator against VP-Score and against the stand-in judge
    served over HTTP, and ReFL / DPO / GRPO on the world's rectified-flow generator, each trained by its trainer
    from its shipped *-world recipe and measured on held-out prompts with the flow generator as the base of
    the *-flow loops. Wiring and figures' shape; the figures are the benchmark's (BENCHMARKS.md)."""
    from vprefer.world.loop import closed_loop

    loops = ("grpo-gen", "grpo-gen-judge", "grpo-gen-truth", "refl-flow", "dpo-flow", "grpo-gen-flow")
    c = LoopConfig(descriptive_per_combo=0, images_per_set=2, other_images_per_set=2, permutations=1, reward_epochs=1,
                   refl_steps=2, dpo_flow_steps=2, grpo_gen_steps=1, eval_seeds=1, train_eval_seeds=0, loops=loops,
                   overrides={n: {"group_size": 2} for n in loops if n.startswith("grpo")})
    res = closed_loop(tmp_path / "loop", c, log=lambda m: None)
    for name in loops:
        h = res[name]["held_out"]
        assert h["images"] == len(HELD_OUT_COMBOS) and 0 <= h["all_right"]["after"] <= 1, name
        assert any((tmp_path / "loop" / name).glob("*.safetensors")), name
        rl = json.loads((tmp_path / "loop" / name / "vprefer_rl.json").read_text())
        assert rl["family"] == ("sd3" if name.endswith("-flow") else "sd"), (name, rl)
    assert json.loads((tmp_path / "loop" / "grpo-gen-judge" / "vprefer_rl.json").read_text())["rewards"] == ["remote"]
    truth = [json.loads(x) for x in (tmp_path / "loop" / "grpo-gen-truth" / "metrics.jsonl").read_text().splitlines()]
    assert "eval/reward/all_right" in truth[0]  # trained against the truth reader itself

"""GRPO prompt optimisation (TRL) against a reward of generated images: the reward's rules and learning."""

import json

import pytest
import torch
from typer.testing import CliRunner

from vprefer.recipes import load_config
from vprefer.rl.prompt_opt import PromptOptConfig, PromptOptTrainer, RewriteReward, completion_text, load_policy, rewrite
from vprefer.testing.stand_ins import ensure_causal_lm, ensure_pipeline
from vprefer.testing.toy_rewards import LetterReward


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    d = tmp_path_factory.mktemp("po")
    ensure_causal_lm(str(d / "tiny-lm"), True)
    ensure_causal_lm(str(d / "world-lm"), True)  # pretrained: its greedy rewrites are words, a random LM's may be blank
    ensure_pipeline(str(d / "tiny-sd"), True)
    return d


def cfg(stand_ins, tmp_path, **kw):
    c = load_config(PromptOptConfig, "grpo-prompts-tiny", "rl", output_dir=str(tmp_path / "out"), **kw)
    c.policy, c.generator["pretrained"] = str(stand_ins / "tiny-lm"), str(stand_ins / "tiny-sd")
    return c


def test_prompt_following_is_scored_against_the_original_and_the_rest_against_the_rewrite(stand_ins, tmp_path):
    """Wrong versions: prompt-following judged on the rewrite (drift goes unpunished), aspects swapped."""
    from vprefer.diffusion import load_pipeline

    c = cfg(stand_ins, tmp_path, aspect_weights={"prompt_following": 1.0}, length_penalty=0.0)
    rf = RewriteReward(LetterReward(), load_pipeline(c.generator["pretrained"]), c)
    assert rf.score(["zzzz"], ["abcd"]) == pytest.approx([1.0])  # the original's z's count, not the rewrite's
    c.aspect_weights = {"aesthetics": 1.0}
    assert rf.score(["eeee"], ["abcd"]) == pytest.approx([0.0])  # aesthetics: the text the image was made from
    c.aspect_weights = {"prompt_following": 1.0, "aesthetics": 3.0}  # weights normalised by their sum
    assert rf.score(["zz"], ["ee"]) == pytest.approx([1.0])
    assert rf.score(["zz"], ["ab"]) == pytest.approx([0.25])


def test_length_penalty_and_seeds_shared_in_a_call_new_per_call_held_out_for_evaluation(stand_ins, tmp_path):
    """Wrong versions: the same seeds at every step (the rewriter can fit two noise draws), different seeds
    inside one group (rewrites compared on different noise), evaluation on training seeds."""
    from vprefer.diffusion import load_pipeline
    from vprefer.rl.prompt_opt import evaluate

    c = cfg(stand_ins, tmp_path, aspect_weights={"aesthetics": 1.0}, max_words=3, min_words=2, length_penalty=0.1)
    rf = RewriteReward(LetterReward(letter="x"), load_pipeline(c.generator["pretrained"]), c)
    assert rf.score(["a", "a"], ["a b c d e f", ""]) == pytest.approx([-0.3, -0.2])  # 3 words over; 2 short
    n = c.images_per_rewrite
    seen = []
    real_images = rf.images
    rf.images = lambda prompts, seeds: seen.append(list(seeds)) or real_images(prompts, seeds)
    rf.score(["a red cube", "a cat"], ["a red cube", "a cat"])  # one call: every rewrite on the same seeds
    rf.score(["a cat"], ["a cat"])
    evaluate(rf, ["a cat"], {"x": ["a cat"]})
    evaluate(rf, ["a cat"], {"x": ["a cat"]})
    assert seen[0] == [c.image_seed + n + k for k in range(n)]  # the second call of this reward function
    assert seen[1] == [c.image_seed + 2 * n + k for k in range(n)]  # a new call, new seeds
    assert seen[2] == seen[3] == [c.eval_image_seed + k for k in range(n)]  # held-out, fixed for before/after
    assert not set(seen[2]) & {s for x in seen[:2] for s in x}
    a = real_images(["a red cube", "a cat"], seen[0])
    b = real_images(["a cat"], seen[0])
    assert a.shape[0] == 2 * n and torch.allclose(a[n:], b, atol=1e-4)  # seeds shared by the rewrites of a call
    assert not torch.equal(a[0], a[1])  # the images of one rewrite differ (seed + k)
    assert not torch.allclose(b, real_images(["a cat"], seen[1]), atol=1e-3)  # and the next call draws new noise
    with pytest.raises(Exception, match="not aspects of the reward model"):
        c.aspect_weights = {"fidelity": 1.0}
        RewriteReward(LetterReward(), None, c)


def test_completion_text():
    assert completion_text([{"role": "assistant", "content": ' "a red\\ncube ,  bright" '.replace("\\n", "\n")}]) \
        == "a red cube , bright"


@pytest.mark.slow
def test_grpo_moves_the_policy_to_a_known_optimum(stand_ins, tmp_path):
    """Toy reward: share of the letter 'e' in the rewrite (optimum 1.0). Greedy rewrites of held-out prompts,
    before and after 30 GRPO steps, measured through the same reward path (images generated and scored)."""
    c = cfg(stand_ins, tmp_path, max_steps=30, learning_rate=1e-2, aspect_weights={"aesthetics": 1.0},
            eval_prompts=["a red cube", "a cat", "a blue tree"], report_to=[])
    s = PromptOptTrainer(c, prompts=["a red circle", "a blue square", "a green dog", "a house"] * 4,
                         reward=LetterReward("e")).train()
    assert s["after/reward"] >= 0.9 and s["after/reward"] > s["before/reward"] + 0.5, s
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_cli_end_to_end_with_a_vp_score_and_the_result_loads_with_peft(stand_ins, tmp_path):
    from vprefer.cli import app
    from vprefer.reward.build import build
    from vprefer.reward.recipe import RewardRecipe
    from vprefer.testing.stand_ins import ensure_backbone

    r = RewardRecipe.load("vp-score-tiny")
    r.backbone.name_or_path = str(tmp_path / "tiny-clip")
    ensure_backbone(r)
    build(r).save_pretrained(tmp_path / "vps")
    (tmp_path / "p.txt").write_text("a red circle\na blue square\na green triangle\na yellow star\n")
    (tmp_path / "e.txt").write_text("a purple circle\na red square\n")
    recipe = tmp_path / "r.yaml"
    import yaml

    d = yaml.safe_load(open("rl/grpo-prompts-tiny.yaml"))
    d["policy"], d["generator"]["pretrained"] = str(stand_ins / "world-lm"), str(stand_ins / "tiny-sd")
    recipe.write_text(yaml.safe_dump(d))
    res = CliRunner().invoke(app, ["rl", "prompts", "--recipe", str(recipe), "--reward", str(tmp_path / "vps"),
                                   "--prompts", str(tmp_path / "p.txt"), "--eval-prompts", str(tmp_path / "e.txt"),
                                   "--holdout-reward", str(tmp_path / "vps"), "--out", str(tmp_path / "o"),
                                   "--max-steps", "2"])
    assert res.exit_code == 0, res.output
    assert "held-out prompts: original" in res.output
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert "after/holdout_reward" in s
    model, tok = load_policy(str(stand_ins / "world-lm"), adapter=tmp_path / "o", device="cpu")  # plain transformers + peft
    assert len(rewrite(model, tok, ["a red cube"], "descriptive", max_new_tokens=8)) == 1
    # the trained rewriter upsamples a run's prompts locally, written exactly like the LLM upsampler's variants
    from vprefer.prompts import sample_prompts
    from vprefer.store import Run

    sample_prompts(tmp_path / "p.txt", tmp_path / "run")
    res = CliRunner().invoke(app, ["prompts", "upsample", str(tmp_path / "run"), "--annotator", f"local:{tmp_path / 'o'}"])
    assert res.exit_code == 0, res.output
    p = Run(tmp_path / "run").read("prompts")
    variants = p.filter(p["source"] == "upsample:descriptive")
    assert variants.height >= 1 and all(json.loads(m)["parent"] in set(p["prompt_id"]) for m in variants["meta"])
    again = CliRunner().invoke(app, ["prompts", "upsample", str(tmp_path / "run"), "--annotator", f"local:{tmp_path / 'o'}"])
    assert "4 already upsampled, 0 new" in again.output, again.output


@pytest.mark.slow
def test_only_the_main_process_writes_the_rewriter(stand_ins, tmp_path, monkeypatch):
    """Wrong version: every process under ``accelerate launch`` writes the same safetensors and JSON at once."""
    from accelerate import Accelerator

    c = cfg(stand_ins, tmp_path, max_steps=1, aspect_weights={"aesthetics": 1.0}, report_to=[])
    monkeypatch.setattr(Accelerator, "is_main_process", property(lambda self: False))
    s = PromptOptTrainer(c, prompts=["a red circle", "a blue square"] * 2, reward=LetterReward("e")).train()
    assert s["main_process"] is False
    written = {p.name for p in (tmp_path / "out").iterdir()} if (tmp_path / "out").exists() else set()
    assert not written & {"adapter_model.safetensors", "adapter_config.json", "vprefer_prompt_opt.json"}, written

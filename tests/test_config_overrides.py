"""One configuration system (issue 29): YAML recipe + trailing key=value overrides for every training command.

The commands are called through the CLI with their trainers replaced by a stub that records the config it was
given, so nothing trains and no model loads: what is checked is that an override reaches the trainer's config.
"""

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from vprefer.cli import app
from vprefer.config import RecipeDeprecation, parse_overrides
from vprefer.recipes import RecipeError, load_config


class Reached(Exception):
    """Raised by a stub trainer: the command got as far as building it."""


def _stub(monkeypatch, module, name, seen):
    def fake(cfg, *a, **kw):
        seen["cfg"] = cfg
        raise Reached

    monkeypatch.setattr(module, name, fake)


@pytest.fixture
def no_stand_ins(monkeypatch):
    import vprefer.testing.stand_ins as si

    built = []
    for fn in ("ensure_pipeline", "ensure_causal_lm", "ensure_backbone"):
        monkeypatch.setattr(si, fn, lambda *a, _fn=fn, **k: built.append(_fn))
    return built


def _invoke(args):
    return CliRunner().invoke(app, args)


@pytest.fixture
def prompts(tmp_path) -> str:
    (tmp_path / "p.txt").write_text("a cat\n")
    return str(tmp_path / "p.txt")


def test_parse_overrides_reads_yaml_values():
    o = parse_overrides(["learning_rate=1e-5", "t_lo=30", "use_lora=false", "eval_prompts=[a cat, a dog]",
                         "training.seed=3", "pretrained_vae="])
    assert o == {"learning_rate": "1e-5", "t_lo": 30, "use_lora": False, "eval_prompts": ["a cat", "a dog"],
                 "training.seed": 3, "pretrained_vae": None}
    with pytest.raises(RecipeError, match="KEY=VALUE"):
        parse_overrides(["learning_rate"])


def test_refl_overrides_reach_the_config(tmp_path, prompts, monkeypatch, no_stand_ins):
    import vprefer.rl

    seen = {}
    _stub(monkeypatch, vprefer.rl, "ReFLTrainer", seen)
    r = _invoke(["rl", "refl", "--recipe", "refl-tiny", "--reward", "x", "--prompts", prompts, "--out",
                 str(tmp_path / "o"), "--max-steps", "7", "learning_rate=1e-5", "t_lo=2", "t_hi=8",
                 "reward_aspects.overall=2", "lora_targets=to_q"])
    assert isinstance(r.exception, Reached), r.output
    c = seen["cfg"]
    assert (c.learning_rate, c.t_lo, c.t_hi, c.max_steps) == (1e-5, 2, 8, 7)
    assert isinstance(c.learning_rate, float)  # "1e-5" is a string to YAML 1.1: typed by the field
    assert c.reward_aspects == {"overall": 2} and c.lora_targets == ["to_q"]
    # the flag and its key=value spelling are the same override; key=value is applied last
    r = _invoke(["rl", "refl", "--recipe", "refl-tiny", "--reward", "x", "--prompts", prompts, "--out",
                 str(tmp_path / "o"), "--max-steps", "7", "max_steps=9"])
    assert seen["cfg"].max_steps == 9


def test_dpo_and_grpo_prompts_overrides_reach_the_config(tmp_path, prompts, monkeypatch, no_stand_ins):
    import vprefer.rl
    import vprefer.rl.dpo
    import vprefer.rl.prompt_opt

    seen = {}
    _stub(monkeypatch, vprefer.rl, "DiffusionDPOTrainer", seen)
    monkeypatch.setattr(vprefer.rl.dpo, "dpo_pairs", lambda *a: [{"annotator": "judge"}])
    r = _invoke(["rl", "dpo", "--recipe", "dpo-tiny", "--data", str(tmp_path), "--out", str(tmp_path / "o"),
                 "beta=2500", "annotators=judge", "proportion_empty_prompts=0.1"])
    assert isinstance(r.exception, Reached), r.output
    c = seen["cfg"]
    assert (c.beta, c.annotators, c.proportion_empty_prompts) == (2500.0, ["judge"], 0.1)

    _stub(monkeypatch, vprefer.rl.prompt_opt, "PromptOptTrainer", seen)
    r = _invoke(["rl", "prompts", "--recipe", "grpo-prompts-tiny", "--reward", "x", "--prompts",
                 prompts, "--out", str(tmp_path / "o"), "num_generations=2", "generator.steps=9"])
    assert isinstance(r.exception, Reached), r.output
    c = seen["cfg"]
    assert c.num_generations == 2 and c.generator["steps"] == 9
    assert c.generator["pretrained"] == ".cache/tiny-sd"  # a dotted key changes one entry, not the mapping


def test_unknown_key_and_bad_value_are_one_line(tmp_path, prompts, no_stand_ins):
    base = ["rl", "refl", "--recipe", "refl-tiny", "--reward", "x", "--prompts", prompts, "--out",
            str(tmp_path / "o")]
    r = _invoke(base + ["t_low=3"])
    assert r.exit_code == 1 and "unknown key(s) ['t_low']" in r.output and "did you mean 't_lo'?" in r.output
    assert "refl-tiny.yaml" in r.output and len(r.output.strip().splitlines()) == 1, r.output
    r = _invoke(base + ["learning_rate=fast"])
    assert r.exit_code == 1 and "learning_rate='fast' (command line): expected float" in r.output, r.output
    r = _invoke(base + ["use_lora=maybe"])
    assert r.exit_code == 1 and "use_lora='maybe'" in r.output, r.output
    r = _invoke(base + ["resolution=30"])
    assert r.exit_code == 1 and "resolution" in r.output and "multiple of 8" in r.output, r.output
    assert not no_stand_ins  # every one refused before any pipeline was even looked for


def test_refl_window_is_refused_before_any_pipeline_loads(tmp_path, prompts, monkeypatch, no_stand_ins):
    import vprefer.rl

    seen = {}
    _stub(monkeypatch, vprefer.rl, "ReFLTrainer", seen)
    r = _invoke(["rl", "refl", "--recipe", "refl-tiny", "--reward", "x", "--prompts", prompts, "--out",
                 str(tmp_path / "o"), "pretrained=/nonexistent/pipeline", "t_lo=9", "t_hi=3"])
    assert r.exit_code == 1 and "t_lo <= t_hi < num_steps" in r.output and "t_lo=9" in r.output, r.output
    assert not no_stand_ins and not seen  # neither the stand-in check nor the trainer (the pipeline load) ran
    with pytest.raises(RecipeError, match="num_steps=10"):
        load_config(vprefer.rl.ReFLConfig, "refl-tiny", "rl", cli_args=["t_hi=10"], output_dir=str(tmp_path))


@pytest.mark.parametrize("over, match", [(["beta=0"], "beta must be > 0"), (["lora_rank=0"], "lora_rank must be >= 1"),
                                         (["guidance_scale=-1"], "guidance_scale must be >= 0")])
def test_dpo_checks_name_the_key(tmp_path, over, match):
    from vprefer.rl import DiffusionDPOConfig

    with pytest.raises(RecipeError, match=match):
        load_config(DiffusionDPOConfig, "dpo-tiny", "rl", cli_args=over, output_dir=str(tmp_path))


def test_grpo_generator_resolution_is_checked(tmp_path):
    from vprefer.rl.prompt_opt import PromptOptConfig

    with pytest.raises(RecipeError, match="generator.resolution must be a positive multiple of 8"):
        load_config(PromptOptConfig, "grpo-prompts-tiny", "rl", cli_args=["generator.resolution=30"],
                    output_dir=str(tmp_path))


# ------------------------------------------------------------------------------------------------- reward
def _train_reward_stub(monkeypatch):
    import vprefer.reward.train

    seen = {}

    def fake(recipe, runs, out, **kw):
        seen["recipe"] = recipe
        raise Reached

    monkeypatch.setattr(vprefer.reward.train, "train_reward", fake)
    return seen


def test_train_reward_nested_overrides_give_the_same_config_as_the_file(synth_run, tmp_path, monkeypatch,
                                                                        no_stand_ins):
    from vprefer.reward.recipe import RewardRecipe
    from vprefer.reward.train import training_config

    seen = _train_reward_stub(monkeypatch)
    r = _invoke(["train-reward", "--recipe", "vp-score-tiny", "--data", str(synth_run), "--out", str(tmp_path / "m"),
                 "training.learning_rate=5e-4", "training.gradient_accumulation_steps=2", "lora.r=8",
                 "head_hidden=32"])
    assert isinstance(r.exception, Reached), r.output
    got = seen["recipe"]
    assert got.lora.r == 8 and got.head_hidden == 32 and not got.lora.enabled  # the recipe's lora section kept
    assert "learning_rate" not in type(got).model_fields  # a nested key is not applied at the top level
    data = yaml.safe_load((Path(__file__).parents[1] / "reward" / "vp-score-tiny.yaml").read_text())
    data["training"].update(learning_rate=5e-4, gradient_accumulation_steps=2)
    data["lora"]["r"], data["head_hidden"] = 8, 32
    (tmp_path / "edited.yaml").write_text(yaml.safe_dump(data))
    edited = RewardRecipe.load(str(tmp_path / "edited.yaml"))
    a = training_config(got, tmp_path / "m", True)
    assert a.learning_rate == 5e-4 and a.gradient_accumulation_steps == 2 and a.num_train_epochs == 6
    assert a.to_dict() == training_config(edited, tmp_path / "m", True).to_dict()
    assert got.model_dump() == edited.model_dump()


def test_train_reward_unknown_and_bad_keys(synth_run, tmp_path, monkeypatch, no_stand_ins):
    seen = _train_reward_stub(monkeypatch)
    base = ["train-reward", "--recipe", "vp-score-tiny", "--data", str(synth_run), "--out", str(tmp_path / "m")]
    r = _invoke(base + ["lora.rr=8"])
    assert r.exit_code == 1 and "['lora.rr']" in r.output and "did you mean 'lora.r'?" in r.output, r.output
    r = _invoke(base + ["training.learning_rat=1e-3"])
    assert r.exit_code == 1 and "['training.learning_rat']" in r.output, r.output
    assert "did you mean 'training.learning_rate'?" in r.output and "vp-score-tiny.yaml" in r.output, r.output
    r = _invoke(base + ["training.num_train_epochs=many"])
    assert r.exit_code == 1 and "training.num_train_epochs='many' (command line)" in r.output, r.output
    r = _invoke(base + ["training.val_fraction=1.5"])
    assert r.exit_code == 1 and "training.val_fraction must be in [0, 1)" in r.output, r.output
    r = _invoke(base + ["lora.r=abc"])
    assert r.exit_code == 1 and "lora.r='abc' (command line)" in r.output, r.output
    assert not seen and not no_stand_ins  # all refused before any model or stand-in


def test_old_training_keys_still_load_and_name_the_new_key(tmp_path, synth_run, monkeypatch, no_stand_ins):
    from vprefer.reward.recipe import RewardRecipe
    from vprefer.reward.train import training_config

    old = tmp_path / "old.yaml"
    old.write_text("name: old\nbackbone: {kind: clip, name_or_path: x}\n"
                   "training: {epochs: 2, batch_size: 4, grad_accum: 3, lr_scheduler: linear, warmup_ratio: 0.1, "
                   "num_workers: 1}\n")
    with pytest.warns(RecipeDeprecation, match="training.grad_accum is now training.gradient_accumulation_steps"):
        r = RewardRecipe.load(str(old))
    c = training_config(r, tmp_path, True)
    assert (c.num_train_epochs, c.per_device_train_batch_size, c.per_device_eval_batch_size,
            c.gradient_accumulation_steps, c.warmup_steps, c.dataloader_num_workers) == (2, 4, 4, 3, 0.1, 1)
    assert getattr(c.lr_scheduler_type, "value", c.lr_scheduler_type) == "linear"
    assert r.training.epochs == 2  # the old name still reads
    both = tmp_path / "both.yaml"
    both.write_text("name: b\nbackbone: {kind: clip, name_or_path: x}\ntraining: {epochs: 2, num_train_epochs: 3}\n")
    with pytest.raises(RecipeError, match="keep training.num_train_epochs"):
        RewardRecipe.load(str(both))
    seen = _train_reward_stub(monkeypatch)
    res = _invoke(["train-reward", "--recipe", str(old), "--data", str(synth_run), "--out", str(tmp_path / "m")])
    assert isinstance(res.exception, Reached)
    assert "warning: " in res.output and "training.epochs is now training.num_train_epochs" in res.output
    assert seen["recipe"].training.settings()["num_train_epochs"] == 2


def test_shipped_reward_recipes_use_the_config_names():
    from dataclasses import fields

    from vprefer.reward.recipe import RewardRecipe
    from vprefer.reward.trainer import VPScoreConfig

    names = {f.name for f in fields(VPScoreConfig)}
    for f in sorted((Path(__file__).parents[1] / "reward").glob("*.yaml")):
        t = RewardRecipe.load(str(f)).training.settings()
        assert set(t) <= names, (f.name, set(t) - names)

"""Closing the audit loop: fine-tune a trained VP-Score on human pairs (or a weighted mix) and compare on held-out
human pairs. Tiny backbone; the judge's pairs are the reverse of the truth, the humans' pairs are the truth."""

import json

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from vprefer import schema
from vprefer.ingest import ingest
from vprefer.recipes import RecipeError
from vprefer.reward import VPScore
from vprefer.reward.build import build, init_from
from vprefer.reward.data import load_pairs
from vprefer.reward.train import train_reward
from vprefer.store import Run
from vprefer.testing.helpers import tiny_reward_recipe
from vprefer.testing.synthetic import write_dataset, write_truth_pairs


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """truth pairs as annotator human; the same pairs reversed as annotator judge."""
    d = tmp_path_factory.mktemp("audited")
    ingest(write_dataset(d / "syn", 24, 4, size=32, seed=3), d / "run")
    write_truth_pairs(d / "run", annotator=schema.HUMAN)
    run = Run(d / "run")
    human = run.read("pairs")
    judge = human.with_columns(pl.col("win_image_id").alias("lose_image_id"), pl.col("lose_image_id").alias("win_image_id"),
                               pl.lit("judge").alias("annotator"))
    run.append("pairs", judge)
    return d / "run"


recipe = tiny_reward_recipe


def test_annotator_weights_mix_and_drop(audited):
    df = load_pairs([audited], ["aesthetics"], ["human", "judge"], {"human": 3.0})
    w = dict(df.group_by("annotator").agg(pl.col("weight").max()).rows())
    assert w == {"human": 3.0, "judge": 1.0}
    df = load_pairs([audited], ["aesthetics"], None, {"judge": 0.0})
    assert set(df["annotator"]) == {"human"}
    with pytest.raises(Exception, match=">= 0"):
        load_pairs([audited], ["aesthetics"], None, {"judge": -1.0})


def test_init_from_a_trained_vp_score_scores_like_it(audited, tmp_path):
    r = recipe(tmp_path, annotators=["judge"])
    train_reward(r, [audited], tmp_path / "m0")
    m0 = VPScore.from_pretrained(tmp_path / "m0", device="cpu")
    fresh = build(recipe(tmp_path))
    imgs = Run(audited).image_paths().head(6)
    args = (imgs["prompt"].to_list(), imgs["path"].to_list())
    before = fresh.score(*args, normalize=False)
    init_from(fresh, tmp_path / "m0")
    after, want = fresh.score(*args, normalize=False), m0.score(*args, normalize=False)
    for a in want:
        assert after[a] == pytest.approx(want[a], abs=1e-5)
        assert before[a] != pytest.approx(want[a], abs=1e-5)  # the fresh model really differed
    lora = build(recipe(tmp_path, lora__enabled=True))  # a LoRA recipe starts from the same function
    init_from(lora, tmp_path / "m0")
    for a, v in lora.score(*args, normalize=False).items():
        assert v == pytest.approx(want[a], abs=1e-4)
    with pytest.raises(RecipeError, match="aspects"):
        init_from(build(recipe(tmp_path, aspects=["overall"])), tmp_path / "m0")


@pytest.mark.slow
def test_cli_fine_tune_on_human_pairs_beats_the_judge_trained_model(audited, tmp_path):
    r = recipe(tmp_path, training__max_steps=100, training__learning_rate=1e-3)
    rc = tmp_path / "tiny.yaml"
    rc.write_text(yaml.safe_dump(r.resolved()))
    run = CliRunner().invoke
    from vprefer.cli import app

    res = run(app, ["train-reward", "--recipe", str(rc), "--data", str(audited), "--out", str(tmp_path / "m0"),
                    "--annotator", "judge"])
    assert res.exit_code == 0, res.output
    res = run(app, ["train-reward", "--recipe", str(rc), "--data", str(audited), "--out", str(tmp_path / "m1"),
                    "--annotator", "human=3,judge=0", "--init", str(tmp_path / "m0")])
    assert res.exit_code == 0, res.output
    saved = yaml.safe_load((tmp_path / "m1" / "recipe.yaml").read_text())
    assert saved["init_from"] == str((tmp_path / "m0").resolve()) and saved["annotator_weights"] == {"human": 3.0,
                                                                                                     "judge": 0.0}
    held = json.loads((tmp_path / "m1" / "held_out.json").read_text())["prompt_ids"]
    assert held
    res = run(app, ["eval-reward", str(tmp_path / "m1"), "--data", str(audited), "--annotator", "human", "--held-out",
                    "--baseline", str(tmp_path / "m0"), "--n-boot", "50", "--json", str(tmp_path / "e.json")],
              env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "e.json").read_text())
    assert rep["prompts"] == len(held) and "change" in res.output
    after = {a["aspect"]: a["acc_skip_ties"] for a in rep["aspects"]}
    before = {a["aspect"]: a["acc_skip_ties"] for a in rep["baseline"]["aspects"]}
    print("held-out human accuracy before", before, "after", after)
    mean = lambda d: sum(v for v in d.values() if v == v) / sum(v == v for v in d.values())  # noqa: E731
    assert mean(after) > mean(before) + 0.1 and after["aesthetics"] > before["aesthetics"]
    res = run(app, ["train-reward", "--recipe", str(rc), "--data", str(audited), "--out", str(tmp_path / "m2"),
                    "--init", str(tmp_path / "nothing")])
    assert res.exit_code == 1 and "not a trained VP-Score" in res.output and not (tmp_path / "m2").exists()


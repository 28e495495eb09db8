"""Logs people read after the fact, outputs scripts read, and the Python API a new user types first."""

import csv
import io
import json
import logging
import re
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import vprefer
from vprefer.cli import app
from vprefer.testing.helpers import local_preset, tiny_reward_recipe

README = Path(__file__).resolve().parents[1] / "README.md"


def test_annotate_prints_plain_progress_lines_when_stderr_is_not_a_terminal(judge, synth_run, capsys):
    judge.state.faults.latency_s = 0.05
    res = vprefer.annotate(synth_run, local_preset(judge, concurrency=2), log_every_s=0.0)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "annotate local-judge:" in ln]
    assert res.ok == 12 and len(lines) >= 3, err
    assert "\r" not in err and re.search(r"\d+/12 done · ok \d+", lines[0])
    assert "12/12 done · ok 12" in lines[-1]


def test_tables_in_a_log_do_not_cut_identifiers(judge, synth_run):
    vprefer.annotate(synth_run, local_preset(judge, permutations=1), limit=1)
    r = CliRunner().invoke(app, ["info", str(synth_run)])  # not a terminal: it used to assume 80 columns
    assert r.exit_code == 0 and "local-judge:vprefer-stand-in-judge" in r.output, r.output


def test_library_notices_nobody_can_act_on_are_dropped(caplog):
    with caplog.at_level(logging.WARNING):
        logging.getLogger("transformers.utils.import_utils").warning(
            "`CLIPImageProcessor` requires torchvision (not installed); falling back to `CLIPImageProcessorPil`")
        logging.getLogger("bitsandbytes.backends.cpu.ops").warning("Please make sure you `pip install kernels`")
        logging.getLogger("transformers.utils.import_utils").warning("something that matters")
    assert [r.getMessage() for r in caplog.records] == ["something that matters"]


@pytest.mark.slow
def test_train_reward_writes_no_bars_into_a_log(tmp_path):
    """tqdm redraws its bar with \\r: in a log every redraw is kept (training, loading, saving weights)."""
    import yaml

    from vprefer.ingest import ingest
    from vprefer.testing.synthetic import write_dataset, write_truth_pairs

    ingest(write_dataset(tmp_path / "syn", 3, 3, size=32), tmp_path / "run")
    write_truth_pairs(tmp_path / "run")
    rc = tmp_path / "tiny.yaml"  # 3 prompts, half held out: too few left to train on, which is said
    rc.write_text(yaml.safe_dump(tiny_reward_recipe(tmp_path, training__val_fraction=0.5).resolved()))
    r = CliRunner().invoke(app, ["train-reward", "--recipe", str(rc), "--data", str(tmp_path / "run"),
                                 "--out", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    assert "\r" not in r.output and "it/s]" not in r.output, r.output
    assert "warning: the validation split held out" in r.output, r.output


def test_one_prompt_scores_many_images_and_score_speaks_json_and_csv(tmp_path):
    from vprefer.reward.build import build
    from vprefer.testing.helpers import write_png

    tiny_reward_recipe(tmp_path)  # builds the tiny backbone
    build(tiny_reward_recipe(tmp_path)).save_pretrained(tmp_path / "m")
    imgs = [str(write_png(tmp_path / f"{k}.png", (60 * k, 30, 200 - 50 * k))) for k in range(3)]
    rm = vprefer.VPScore.from_pretrained(tmp_path / "m")
    one = rm.score("a red square", imgs)  # one prompt, many images (a str used to be read as 12 prompts)
    assert all(len(v) == 3 for v in one.values())
    assert one == rm.score(["a red square"] * 3, imgs) == rm.score(["a red square"], imgs)
    r = CliRunner().invoke(app, ["score", str(tmp_path / "m"), *imgs, "--prompt", "a red square", "--format", "json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert [x["image"] for x in rows] == imgs
    assert rows[0]["aesthetics"] == pytest.approx(one["aesthetics"][0], abs=1e-5)
    r = CliRunner().invoke(app, ["score", str(tmp_path / "m"), *imgs, "--prompt", "a red square", "--format", "csv"])
    got = list(csv.DictReader(io.StringIO(r.stdout)))
    assert len(got) == 3 and float(got[2]["fidelity"]) == pytest.approx(one["fidelity"][2], abs=1e-5)


def test_train_config_turns_tqdm_off_without_a_terminal(tmp_path, monkeypatch):
    from vprefer.reward.train import training_config

    r = tiny_reward_recipe(tmp_path)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)  # a user's own setting wins; tested below

    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", Tty())
    assert training_config(r, tmp_path, False).disable_tqdm is False
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert training_config(r, tmp_path, False).disable_tqdm is True
    monkeypatch.setattr(sys, "stderr", Tty())
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert training_config(r, tmp_path, False).disable_tqdm is True


def test_import_vprefer_is_the_flat_api_and_the_readme_example_uses_only_it():
    import inspect

    for name in vprefer.__all__:
        assert getattr(vprefer, name) is not None
    import vprefer.annotate as mod  # whichever is imported first, vprefer.annotate(...) is the job
    assert callable(vprefer.annotate) and mod.annotate is not None and callable(vprefer.ingest)
    block = README.read_text().split("### From Python", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    used = set(re.findall(r"vprefer\.(\w+)\(", block))
    assert used >= {"ingest", "annotate", "make_pairs", "train_reward"} and used <= set(vprefer.__all__), used
    for name, kwargs in re.findall(r"vprefer\.(\w+)\(([^\n]*)\)", block):  # keywords the functions really take
        fn = getattr(vprefer, name)
        fn = getattr(fn, name, fn) if inspect.ismodule(fn) else fn
        params = inspect.signature(fn).parameters
        for kw in re.findall(r"(\w+)=", kwargs):
            assert kw in params, f"README: vprefer.{name}(... {kw}=...) is not a parameter"

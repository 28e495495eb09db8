"""A user's mistake is one clear line, checked before anything slow runs, and leaves nothing behind."""

import pytest
from typer.testing import CliRunner

from vprefer.cli import app


def _run(args):
    r = CliRunner().invoke(app, args)
    err = r.output.strip()
    return r.exit_code, err


def _one_line(code, err, *needles):
    assert code == 1, err
    assert "Traceback" not in err and err.startswith("error:") and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err


def test_import_of_a_missing_file(tmp_path):
    code, err = _run(["import", str(tmp_path / "nope.json"), "--format", "imagereward", "--out", str(tmp_path / "r")])
    _one_line(code, err, "nope.json: no such file to import")
    assert "Errno" not in err and not (tmp_path / "r").exists()


def test_missing_recipe_and_preset_are_named_plainly(tmp_path):
    code, err = _run(["rl", "refl", "--recipe", str(tmp_path / "nope.yaml"), "--reward", str(tmp_path),
                      "--prompts", str(tmp_path), "--out", str(tmp_path / "o")])
    _one_line(code, err, f"no such recipe '{tmp_path / 'nope.yaml'}'")
    assert "PosixPath" not in err
    code, err = _run(["annotate", str(tmp_path), "--annotator", "no-such-judge"])
    _one_line(code, err, "no such annotator preset 'no-such-judge'")


@pytest.fixture
def no_model_load(monkeypatch):
    from vprefer.reward import VPScore

    def boom(*a, **k):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(VPScore, "from_pretrained", boom)


def test_score_and_eval_check_inputs_before_loading(tmp_path, no_model_load):
    missing = str(tmp_path / "nodata")
    _one_line(*_run(["score", "some/model", "--run", missing]), "not a vprefer run directory")
    _one_line(*_run(["score", "some/model", str(tmp_path / "x.png"), "--prompt", "a cat"]), "no such image file")
    _one_line(*_run(["eval-reward", "some/model", "--data", missing]), "not a vprefer run directory")
    _one_line(*_run(["eval-reward", "some/model", "--data", missing, "--format", "pickapic"]), "no such pickapic file")


def test_train_reward_with_missing_data_leaves_no_output(tmp_path):
    out = tmp_path / "vp"
    code, err = _run(["train-reward", "--recipe", "vp-score-tiny", "--data", str(tmp_path / "nodata"),
                      "--out", str(out)])
    _one_line(code, err, "not a vprefer run directory")
    assert not out.exists()

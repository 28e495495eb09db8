"""One shape: Run is the data-access layer, the API records provenance, and only VpreferError is a one-line error."""

import json

import pytest
import typer
from typer.testing import CliRunner

from vprefer import schema
from vprefer.annotate import make_pairs
from vprefer.cli import app
from vprefer.cli._app import one_line_errors
from vprefer.errors import InputError, MissingError, VpreferError
from vprefer.exchange import FormatError, import_file
from vprefer.info import summarize
from vprefer.recipes import RecipeError
from vprefer.store import Run, as_run


def _frame(name, **over):
    base = {
        "pairs": {"prompt_id": "p", "win_image_id": "a", "lose_image_id": "b", "aspect": "overall", "annotator": "A",
                  "margin": 1.0, "weight": 1.0, "tie": False},
        "scores": {"model": "m", "prompt_id": "p", "image_id": "a", "aspect": "overall", "score": 0.5},
    }[name]
    return schema.frame(name, [{**base, **o} for o in (over.get("rows") or [{}])])


def test_replace_rows_replaces_one_slice_and_keeps_order(tmp_path):
    run = Run(tmp_path, create=True)
    run.write("pairs", _frame("pairs", rows=[{"annotator": "A"}, {"annotator": "human"},
                                             {"annotator": "A", "win_image_id": "c"}]))
    run.replace_rows("pairs", _frame("pairs", rows=[{"annotator": "A", "margin": 2.0}]), "annotator")
    got = run.read("pairs")
    assert got["annotator"].to_list() == ["human", "A"] and got["margin"].to_list() == [1.0, 2.0]
    # an explicit slice can be replaced by nothing
    run.replace_rows("pairs", schema.empty("pairs"), "annotator", replacing=["human"])
    assert run.read("pairs")["annotator"].to_list() == ["A"]
    # several key columns
    run.replace_rows("scores", _frame("scores", rows=[{}, {"image_id": "b"}]), ["model", "image_id"])
    run.replace_rows("scores", _frame("scores", rows=[{"score": 9.0}]), ["model", "image_id"])
    assert sorted(run.read("scores").select("image_id", "score").rows()) == [("a", 9.0), ("b", 0.5)]


def test_read_or_empty_and_image_paths(tmp_path):
    run = Run(tmp_path / "r", create=True)
    assert run.read_or_empty("scores").schema == schema.empty("scores").schema and not run.has("scores")
    run.write("prompts", schema.frame("prompts", [{"prompt_id": "p", "prompt": "a cube", "source": "t"}]))
    run.write("images", schema.frame("images", [
        {"image_id": "a", "prompt_id": "p", "uri": "images/a.png"},
        {"image_id": "u", "prompt_id": "p", "uri": "https://example.com/u.png"},
        {"image_id": "o", "prompt_id": "orphan", "uri": "images/o.png"},  # no prompt: left out
    ]))
    ip = run.image_paths().sort("image_id")
    assert ip["image_id"].to_list() == ["a", "u"] and ip["prompt"].to_list() == ["a cube"] * 2
    assert ip["path"].to_list() == [str((tmp_path / "r").resolve() / "images/a.png"), "https://example.com/u.png"]


def test_a_run_or_its_folder(tmp_path):
    run = Run(tmp_path, create=True)
    assert as_run(run) is run and as_run(tmp_path).path == tmp_path
    assert Run(run).path == tmp_path  # path-like: every function taking a folder takes a Run
    with pytest.raises(MissingError, match="not a vprefer run directory"):
        as_run(tmp_path / "nothing")


def test_results_are_typed_and_still_subscriptable(shared_data, tmp_path):
    c = import_file(shared_data / "imagereward_test.json", Run(tmp_path / "run", create=True), "imagereward")
    assert (c.rankings, c["rankings"], c.get("nope", 0)) == (466, 466, 0)
    s = summarize(tmp_path / "run")
    assert s.counts["pairs"] == 7230 and s.groups["pairs"] == [("human", "overall", 7230)] and s.commands == 1


def test_pairs_provenance_is_recorded_by_the_api(tmp_path):
    run = Run(tmp_path, create=True)
    rows = [{"run_id": "r", "request_id": "q", "annotator": "A", "rubric": "h", "prompt_id": "p", "image_id": i,
             "shown_position": k, "permutation": 0, "aspect": "aesthetics", "score": float(s), "status": "ok"}
            for k, (i, s) in enumerate((("x", 5), ("y", 2)), 1)]
    run.write("annotations", schema.frame("annotations", rows))
    r = make_pairs(tmp_path, min_margin=0.5)
    cmd = run.manifest()["commands"][-1]
    assert (cmd["command"], cmd["recipe"]["min_margin"], cmd["status"]) == ("pairs", 0.5, "ok")
    assert r.pairs.height == run.read("pairs").height == 2 and r.ties == 0


def test_only_vprefer_errors_become_one_line(capsys):
    assert issubclass(RecipeError, VpreferError) and issubclass(FormatError, ValueError)

    def user_mistake():
        raise InputError("--overall must be 'mean'")

    def bug():
        raise KeyError("prompt_id")

    user_mistake_cmd, bug_cmd = (lambda: one_line_errors(user_mistake)), (lambda: one_line_errors(bug))

    with pytest.raises(typer.Exit):
        user_mistake_cmd()
    assert "--overall must be 'mean'" in capsys.readouterr().err
    with pytest.raises(KeyError):
        bug_cmd()


def test_error_messages_never_hold_secrets(monkeypatch):
    monkeypatch.setenv("MY_API_KEY", "s3cr3t-value-123")
    assert "s3cr3t" not in str(InputError("bad key s3cr3t-value-123"))


def test_cli_info_and_error_line(shared_data, tmp_path):
    import_file(shared_data / "imagereward_test.json", tmp_path / "run", "imagereward")
    r = CliRunner().invoke(app, ["info", str(tmp_path / "run")], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "pairs: human/overall=7,230" in r.output and "1 commands recorded" in r.output
    r = CliRunner().invoke(app, ["info", str(tmp_path / "nothing")])
    assert r.exit_code == 1 and "not a vprefer run directory" in r.output and "Traceback" not in r.output
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["commands"][0]["command"] == "import imagereward"


def test_info_on_a_folder_of_runs(shared_data, tmp_path):
    import_file(shared_data / "imagereward_test.json", tmp_path / "demo" / "run", "imagereward")
    Run(tmp_path / "demo" / "heldout", create=True)
    (tmp_path / "demo" / "report_files").mkdir()
    r = CliRunner().invoke(app, ["info", str(tmp_path / "demo")], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "it holds 2" in r.output and "pairs: human/overall=7,230" in r.output and r.output.count("commands recorded") == 2
    r = CliRunner().invoke(app, ["info", str(tmp_path / "demo" / "report_files")])
    assert r.exit_code == 1 and "not a vprefer run directory" in r.output

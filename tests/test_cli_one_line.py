"""Failures the README promises as one line (naming the file and what to do) that used to be tracebacks."""

import json
import socket
import sys

import polars as pl
import pytest
from typer.testing import CliRunner

from vprefer.cli import app
from vprefer.store import Run


def _one_line(r, *must: str) -> str:
    assert r.exit_code == 1, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.output
    for m in must:
        assert m in lines[0], lines[0]
    return lines[0]


def _imagereward_json(tmp_path):
    f = tmp_path / "test.json"
    f.write_text(json.dumps([{"prompt": "a red square", "generations": ["a.png", "b.png"], "ranking": [1, 2]},
                             {"prompt": "a blue circle", "generations": ["c.png", "d.png"], "ranking": [2, 1]}]))
    return f


def test_import_with_the_wrong_format_names_the_file_and_the_right_format(tmp_path):
    f = _imagereward_json(tmp_path)
    r = CliRunner().invoke(app, ["import", str(f), "--format", "pickapic", "--out", str(tmp_path / "r")])
    _one_line(r, str(f), "not a readable parquet file", "--format imagereward")
    pq = tmp_path / "pick.parquet"
    pl.DataFrame({"caption": ["x"]}).write_parquet(pq)
    r = CliRunner().invoke(app, ["import", str(pq), "--format", "imagereward", "--out", str(tmp_path / "r")])
    _one_line(r, str(pq), "--format pickapic")


def test_a_damaged_table_file_is_named_by_info_pairs_and_annotate(judge, synth_run):
    from vprefer.annotate import annotate
    from vprefer.testing.helpers import local_preset

    annotate(synth_run, local_preset(judge, permutations=1), limit=2)
    victim = next((synth_run / "tables" / "annotations").glob("*.parquet"))
    victim.write_bytes(b"PAR1 not really" * 3)  # a torn copy
    for args in (["info", str(synth_run)], ["pairs", str(synth_run)],
                 ["annotate", str(synth_run), "--annotator", "local-judge", "--dry-run"]):
        _one_line(CliRunner().invoke(app, args), str(victim), "damaged", "restore it")


def test_a_run_imported_without_images_is_refused_before_any_model_loads(tmp_path):
    run = tmp_path / "run"
    r = CliRunner().invoke(app, ["import", str(_imagereward_json(tmp_path)), "--format", "imagereward",
                                 "--out", str(run)])
    assert r.exit_code == 0, r.output
    no_model = str(tmp_path / "no-such-model")  # were it loaded first, the error would be about the model
    for args in (["eval-reward", no_model, "--data", str(run)], ["score", no_model, "--run", str(run)]):
        _one_line(CliRunner().invoke(app, args), "4 of 4 image files are missing", "--images-root")


def test_judge_server_on_a_busy_port_is_one_line():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = CliRunner().invoke(app, ["judge-server", "--port", str(port)])
    _one_line(r, f"127.0.0.1:{port}", "--port")


def test_a_client_going_away_prints_no_traceback(judge, capsys):
    for gone in (BrokenPipeError(32, "Broken pipe"), ConnectionResetError(104, "reset")):
        try:
            raise gone
        except OSError:
            judge.handle_error(None, ("127.0.0.1", 1))
    assert capsys.readouterr().err == ""
    try:  # a real fault of the server still shows
        raise KeyError("bug")
    except KeyError:
        judge.handle_error(None, ("127.0.0.1", 1))
    assert "KeyError" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["info", "RUN"], ["rl", "sample", "--lora", "RUN", "--prompts", "P", "--out", "RUN"]])
def test_one_handler_for_every_command_and_sub_command(tmp_path, monkeypatch, args):
    """Errors become one line in one place (the root group), for top-level commands and those of a sub-app
    alike; Ctrl-C says what is kept and exits 130 (a shell's convention), never a traceback."""
    from vprefer.errors import InputError

    (tmp_path / "p.txt").write_text("a red cube\n")
    args = [str(tmp_path) if a == "RUN" else str(tmp_path / "p.txt") if a == "P" else a for a in args]
    target = ("vprefer.cli.data.summarize" if args[0] == "info" else "vprefer.rl.sample.before_after")

    def boom(*a, **k):
        raise InputError("the sky fell (a one-line cause)")

    monkeypatch.setattr(target, boom)
    _one_line(CliRunner().invoke(app, args), "the sky fell")

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(target, interrupted)
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 130 and "interrupted" in r.output and "Traceback" not in r.output, r.output

"""Conventions a new user leans on in the first hour: help for every option, --version, did-you-mean lists,
flags that accept what the help shows, mistakes reported before torch loads, honest counts, runnable next steps."""

import subprocess
import sys

import typer
from typer.testing import CliRunner

from vprefer.cli import app


def _commands(cmd, path=()):
    if hasattr(cmd, "commands"):
        for name, sub in cmd.commands.items():
            yield from _commands(sub, (*path, name))
    else:
        yield " ".join(path), cmd


# commands being written elsewhere at the time of this test (vprefer/cli/world.py): reported to their authors;
# remove an entry once its option has help (the test then covers it like every other)
IN_PROGRESS: set[str] = set()


def test_every_option_of_every_command_has_help_text():
    root = typer.main.get_command(app)
    bare = [f"vprefer {path} {p.opts[0]}" for path, c in _commands(root) for p in c.params
            if p.param_type_name == "option" and not (p.help or "").strip()]
    bare = [b for b in bare if b not in IN_PROGRESS]
    assert not bare, "options without help text:\n" + "\n".join(bare)


def test_flags_are_not_shown_as_taking_a_value():
    r = CliRunner().invoke(app, ["annotate", "--help"], env={"COLUMNS": "200"})
    line = next(ln for ln in r.output.splitlines() if "--dry-run" in ln)
    assert "<bool>" not in line and "Show requests" in line  # `--dry-run true` is refused: the help must not invite it


def test_version():
    from vprefer import __version__

    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"vprefer {__version__}"


def test_unknown_preset_lists_what_exists_and_a_bad_option_value_blames_the_option(synth_run):
    r = CliRunner().invoke(app, ["annotate", str(synth_run), "--annotator", "gpt4o", "--dry-run"])
    assert r.exit_code == 1 and "did you mean 'gpt-4o'?" in r.output and "local-judge" in r.output, r.output
    r = CliRunner().invoke(app, ["annotate", str(synth_run), "--annotator", "local-judge", "--mode", "bacth"])
    assert r.exit_code == 1 and "--mode 'bacth'" in r.output, r.output
    assert "local-judge.yaml" not in r.output  # the shipped file is fine


def test_a_recipe_typo_is_reported_before_torch_is_imported(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nbackbon: {}\n")
    code = ("import sys; from typer.testing import CliRunner; from vprefer.cli import app; "
            f"r = CliRunner().invoke(app, ['train-reward', '--recipe', {str(bad)!r}, '--data', 'x', '--out', 'y']); "
            "print(r.exit_code, 'torch' in sys.modules, r.output)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert out.startswith("1 False") and "backbon: unknown key" in out, out


def test_a_split_that_leaves_almost_nothing_to_train_on_is_named():
    from vprefer.cli.reward import split_warning

    w = split_warning({"train_prompts": 1, "val_prompts": 2}, 0.25)
    assert w and "held out 2 of 3 prompts" in w and "leaving 1" in w
    assert split_warning({"train_prompts": 30, "val_prompts": 8}, 0.2) is None
    assert split_warning({"train_prompts": 2, "val_prompts": 0}, 0.0) is None


def test_a_reingest_says_nothing_was_new(tmp_path):
    from vprefer.testing.synthetic import write_dataset

    m = write_dataset(tmp_path / "syn", 2, 2)
    first = CliRunner().invoke(app, ["ingest", str(m), "--out", str(tmp_path / "run")])
    again = CliRunner().invoke(app, ["ingest", str(m), "--out", str(tmp_path / "run")])
    assert "(2 new prompts, 4 new images)" in first.output, first.output
    assert "(0 new: all were in the run already)" in again.output, again.output


def test_a_dry_run_leaves_no_empty_journal_folder(synth_run):
    for args in (["annotate", str(synth_run), "--annotator", "local-judge", "--dry-run"],
                 ["prompts", "upsample", str(synth_run), "--annotator", "local-judge", "--dry-run"]):
        assert CliRunner().invoke(app, args).exit_code == 0
    assert not (synth_run / "journal").exists()


def test_the_demo_reports_next_steps_parse_as_pasted(tmp_path):
    """Every next-step command of the demo report is parsed by the CLI itself: required options present,
    no unknown ones (`train-reward` lacked --data and --out)."""
    import shlex

    from vprefer.demo.page import next_steps, stand_in_note

    root = typer.main.get_command(app)
    steps = next_steps(tmp_path / "demo-run")
    assert any(s.startswith("vprefer info ") for s in steps) and str(tmp_path / "demo-run" / "run") in stand_in_note(
        tmp_path / "demo-run")
    for line in steps:
        words = [w for w in shlex.split(line) if "=" not in w or w.startswith("-")]  # drop VAR=... prefixes
        words = words[words.index("vprefer") + 1:]
        cmd = root
        while hasattr(cmd, "commands"):
            name = words.pop(0)
            cmd = cmd.commands[name]
        ctx = cmd.make_context(name, words)  # raises on a missing required option or an unknown one
        assert not ctx.args, (line, ctx.args)


def test_a_caption_the_stand_in_corrupted_is_asked_again_then_marked_never_stored(judge, synth_run):
    from vprefer.caption import caption
    from vprefer.store import Run
    from vprefer.testing.helpers import local_preset, server_stats

    judge.state.faults.malformed_rate = 1.0  # every answer cut short with "... sorry, I lost track"
    r = caption(synth_run, local_preset(judge, invalid_retries=1), style="short", limit=2)
    assert (r.ok, r.invalid) == (0, 2) and server_stats(judge)["requests"] == 4  # asked, asked again, marked
    assert not Run(synth_run).has("captions")
    assert r.cost_usd > 0 and r.spent_total_usd == r.cost_usd  # paid answers are counted though not stored
    again = caption(synth_run, local_preset(judge, invalid_retries=1), style="short", limit=2)
    assert again.todo == 0  # marked: not paid for again
    judge.state.faults.malformed_rate = 0.0
    r = caption(synth_run, local_preset(judge), style="short", limit=3)
    assert r.ok == 1 and "lost track" not in " ".join(Run(synth_run).read("captions")["caption"])

"""Recaptioning (ShareGPT4V / DALL-E 3 style) through the annotation client, against the stand-in server."""

import json
import os
import signal
import subprocess
import sys
import time

import polars as pl
import pytest
from typer.testing import CliRunner

from vprefer.caption import CaptionStyle, caption, captions_to_prompts, export_captions_hf
from vprefer.cli import app
from vprefer.errors import MissingError
from vprefer.ingest import ingest
from vprefer.llm import read_journal
from vprefer.store import Run
from vprefer.testing.colours import PALETTE
from vprefer.testing.helpers import local_preset, server_stats, write_png

COLOURS = ("red", "blue", "green", "yellow", "purple", "orange")


@pytest.fixture
def colour_run(tmp_path):
    """Six plain images of known colours (one per prompt), ingested through the real path."""
    lines = []
    for i, c in enumerate(COLOURS):
        write_png(tmp_path / "src" / f"{c}.png", PALETTE[c], size=(40 + i, 32))
        lines.append({"prompt": f"picture {i}", "images": [f"{c}.png"]})
    (tmp_path / "src" / "m.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    ingest(tmp_path / "src" / "m.jsonl", tmp_path / "run")
    return tmp_path / "run"



def _truth(run):
    """image id -> its colour, from the ingest manifest order (images were written one colour each)."""
    imgs = Run(run).read("images").join(Run(run).read("prompts"), on="prompt_id")
    return {iid: COLOURS[int(p.split()[-1])] for iid, p in imgs.select("image_id", "prompt").iter_rows()}


def test_styles_are_data_and_hashed():
    short, detailed = CaptionStyle.load("short"), CaptionStyle.load("detailed")
    assert "one sentence" in short.system and "detailed" in detailed.system
    assert short.hash.startswith("short@") and short.hash != detailed.hash
    assert CaptionStyle(**{**short.resolved(), "system": short.system + " Be brief."}).hash != short.hash
    assert CaptionStyle(**{**short.resolved(), "expected_words": 99}).hash == short.hash  # estimates only


def test_online_captions_match_their_images_and_resume_for_free(judge, colour_run):
    p = local_preset(judge)
    dry = caption(colour_run, p, style="short", dry_run=True)
    assert dry.todo == 6 and dry.est_cost_usd > 0 and server_stats(judge)["requests"] == 0
    r = caption(colour_run, p, style="short")
    assert r.ok == 6 and r.error == 0
    cap = Run(colour_run).read("captions")
    assert cap.height == 6 and set(cap["style"]) == {"short"} and cap["request_id"].n_unique() == 6
    truth = _truth(colour_run)
    for iid, text in cap.select("image_id", "caption").iter_rows():
        assert truth[iid] in text.lower() and not any(c in text.lower() for c in COLOURS if c != truth[iid]), text
        assert len(text.split()) < 30  # one sentence
    # the dry-run estimate is in the right range (instruction + image + the length the instruction asks for)
    assert 0.5 < dry.est_cost_usd / r.cost_usd < 2.0
    again = caption(colour_run, p, style="short")
    assert again.already_done == 6 and again.todo == 0
    assert sorted(server_stats(judge)["answered"].values()) == [1] * 6
    detailed = caption(colour_run, p, style="detailed")
    assert detailed.ok == 6
    d = Run(colour_run).read("captions").filter(pl.col("style") == "detailed")
    assert d["caption"].str.split(" ").list.len().min() >= 60


def test_cost_matches_what_the_server_billed(judge, colour_run):
    p = local_preset(judge)
    caption(colour_run, p, style="detailed")
    billed = server_stats(judge)["billed"]
    server_usd = (billed["input_tokens"] * 2.5 + billed["output_tokens"] * 10.0) / 1e6
    cap = Run(colour_run).read("captions")
    assert cap["cost_usd"].sum() == pytest.approx(server_usd, rel=1e-9)
    assert cap["input_tokens"].sum() == billed["input_tokens"] and cap["output_tokens"].sum() == billed["output_tokens"]


def test_transient_errors_are_retried_and_never_paid_twice(judge, colour_run):
    judge.state.faults.rate_429 = 0.4
    judge.state.faults.rate_500 = 0.1
    r = caption(colour_run, local_preset(judge, max_retries=25), style="short")  # never runs out of retries
    assert r.ok == 6 and r.retries > 0, r  # the report says what happened if this ever fails
    answered = server_stats(judge)["answered"]
    assert sorted(answered.values()) == [1] * 6, (answered, r)


def test_refused_requests_are_not_waited_for_on_the_rerun(judge, colour_run):
    """Retries that all end in 500s leave nothing running on the server: the journal says so, so the rerun
    sends at once instead of waiting up to timeout_s for stored answers that cannot exist."""
    from vprefer.llm import Ledger

    judge.state.faults.rate_500 = 1.0
    p = local_preset(judge, max_retries=1)
    assert caption(colour_run, p, style="short").ok == 0
    assert Ledger(Run(colour_run), f"{p.slug}-short", kind="caption").in_flight() == set()
    judge.state.faults.rate_500 = 0.0
    assert caption(colour_run, p, style="short").ok == 6


def test_max_cost_stops_before_passing_it_and_a_rerun_continues(judge, colour_run):
    p = local_preset(judge, concurrency=1)
    one = caption(colour_run, p, style="short", limit=1).cost_usd
    r = caption(colour_run, p, style="short", max_cost=one * 3.5)
    assert r.stopped_for_budget and r.spent_total_usd <= one * 3.5 and Run(colour_run).read("captions").height < 6
    r2 = caption(colour_run, p, style="short", max_cost=1.0)
    assert not r2.stopped_for_budget and Run(colour_run).read("captions").height == 6
    assert sorted(server_stats(judge)["answered"].values()) == [1] * 6


def test_batch_mode(judge, colour_run):
    r = caption(colour_run, local_preset(judge), style="short", mode="batch", poll_s=0.05)
    assert r.ok == 6
    cap = Run(colour_run).read("captions")
    truth = _truth(colour_run)
    assert all(truth[i] in t.lower() for i, t in cap.select("image_id", "caption").iter_rows())
    stats = server_stats(judge)
    assert stats["batches"] == 1 and sorted(stats["answered"].values()) == [1] * 6
    billed = stats["billed"]  # billed at the batch discount
    assert cap["cost_usd"].sum() == pytest.approx((billed["input_tokens"] * 2.5 + billed["output_tokens"] * 10) / 2e6)
    # `vprefer batches RUN` (no annotator): every job's batches as recorded, captions included, no server asked
    from vprefer.cli import app

    out = CliRunner().invoke(app, ["batches", str(colour_run)], env={"COLUMNS": "200"})
    assert out.exit_code == 0 and "caption-" in out.output and "completed" in out.output, out.output


def test_journal_answers_are_folded_after_a_crash(judge, colour_run):
    caption(colour_run, local_preset(judge), style="short", limit=3)
    Run(colour_run).write("captions", Run(colour_run).read("captions").head(0))  # table lost, journal kept
    r = caption(colour_run, local_preset(judge), style="short")
    assert r.already_done == 3 and r.ok == 3 and Run(colour_run).read("captions").height == 6
    assert sorted(server_stats(judge)["answered"].values()) == [1] * 6


def test_captions_become_prompts_and_an_hf_dataset(judge, colour_run, tmp_path):
    import datasets

    caption(colour_run, local_preset(judge), style="short")
    assert captions_to_prompts(colour_run, style="short") == 6
    assert captions_to_prompts(colour_run, style="short") == 0  # idempotent
    pr = Run(colour_run).read("prompts").filter(pl.col("source") == "caption:short")
    cap = Run(colour_run).read("captions")
    linked = {json.loads(m)["image_id"]: t for t, m in pr.select("prompt", "meta").iter_rows()}
    assert linked == dict(cap.select("image_id", "caption").iter_rows())
    n = export_captions_hf(colour_run, tmp_path / "hf")
    ds = datasets.load_dataset(str(tmp_path / "hf"), split="train")
    assert n == len(ds) == 6
    truth = _truth(colour_run)
    for row in ds:
        im = row["image"].convert("RGB")
        assert im.getpixel((5, 5)) == PALETTE[truth[row["image_id"]]]  # the image is the one captioned
        assert truth[row["image_id"]] in row["caption"].lower()
    with pytest.raises(MissingError):
        export_captions_hf(colour_run, tmp_path / "hf2", style="detailed")


def test_cli(judge, colour_run, tmp_path):
    base = ["caption", str(colour_run), "--annotator", "local-judge", "--base-url", judge.base_url, "--style", "short"]
    r = CliRunner().invoke(app, [*base, "--dry-run"])
    assert r.exit_code == 0 and "6 to send" in r.output and "nothing was sent" in r.output
    r = CliRunner().invoke(app, [*base, "--to-prompts"])
    assert r.exit_code == 0 and "6 new" in r.output and "added 6 prompts" in r.output, r.output
    r = CliRunner().invoke(app, ["export", str(colour_run), "--format", "hf-captions", "--out", str(tmp_path / "hf")])
    assert r.exit_code == 0 and "exported 6 rows" in r.output
    from vprefer.prompts import sample_prompts

    (tmp_path / "p.txt").write_text("a red circle\n")
    sample_prompts(tmp_path / "p.txt", tmp_path / "prompts-only")  # a run without images
    r = CliRunner().invoke(app, ["caption", str(tmp_path / "prompts-only"), "--annotator", "local-judge",
                                 "--base-url", judge.base_url])
    assert r.exit_code == 1 and "no images to caption" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1


@pytest.mark.slow
def test_sigkill_then_resume_pays_nothing_twice(judge, synth_run):
    judge.state.faults.latency_s = 0.25
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("VPREFER_JUDGE_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "vprefer", "caption", str(synth_run), "--annotator", "local-judge",
                             "--base-url", judge.base_url, "--concurrency", "4"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    journal = synth_run / "journal"

    def done():
        return sum(1 for f in journal.glob("caption-*.jsonl") for r in read_journal(f)
                   if r.get("event") == "done") if journal.exists() else 0

    t0 = time.monotonic()
    while done() < 5:
        assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
        assert time.monotonic() - t0 < 60
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    judge.state.faults.latency_s = 0.0
    r = caption(synth_run, local_preset(judge))
    cap = Run(synth_run).read("captions")
    n = Run(synth_run).read("images")["image_id"].n_unique()
    assert cap.height == n and cap["image_id"].n_unique() == n and r.already_done >= 5
    answered = server_stats(judge)["answered"]
    assert len(answered) == n and max(answered.values()) == 1, answered  # in-flight ones fetched back, not re-paid

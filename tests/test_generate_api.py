"""API image generators (``kind: openai-images``) in ``vprefer generate``, against the stand-in server."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import polars as pl
import pytest
import yaml
from PIL import Image
from pydantic import ValidationError
from typer.testing import CliRunner

from vprefer.cli import app
from vprefer.generate import GenerateRecipe, GeneratorSpec, generate
from vprefer.llm import read_journal
from vprefer.prompts import sample_prompts
from vprefer.recipes import RecipeError
from vprefer.store import Run
from vprefer.testing.colours import PALETTE
from vprefer.testing.helpers import server_stats

PROMPTS = ["a red circle", "a blue square on paper", "a green triangle", "a yellow circle", "a purple square"]


@pytest.fixture
def api_recipe(judge, monkeypatch):
    """The two stand-in API generators of rl/generators-api-tiny.yaml (DALL-E-3-priced, gpt-image-1-priced)."""
    monkeypatch.setenv("VPREFER_JUDGE_URL", judge.base_url)
    rec = GenerateRecipe.load("generators-api-tiny")
    rec.generators = [g for g in rec.generators if g.kind == "openai-images"]
    return rec


@pytest.fixture
def prompt_run(tmp_path):
    (tmp_path / "p.txt").write_text("\n".join(PROMPTS) + "\n")
    sample_prompts(tmp_path / "p.txt", tmp_path / "run")
    return tmp_path / "run"


def _paid(run) -> float:
    return sum(r.get("cost_usd") or 0.0 for f in (run / "journal").glob("generate-*.jsonl") for r in read_journal(f)
               if r.get("event") == "done")


def test_spec_needs_the_fields_of_its_kind():
    with pytest.raises(ValidationError, match="needs 'api'"):
        GeneratorSpec(name="x", kind="openai-images")
    with pytest.raises(ValidationError, match="needs 'pretrained'"):
        GeneratorSpec(name="x")
    with pytest.raises(ValidationError):
        GeneratorSpec(name="x", kind="openai-images", api={"model": "dall-e-3"})  # no price: never a silent $0


def test_request_ids_are_content_hashes():
    ep = GenerateRecipe.load("generators-api-tiny").generators[1].endpoint()
    assert ep.request_id("a red circle", 0) == ep.request_id("a red circle", 0)
    assert ep.request_id("a red circle", 0) != ep.request_id("a red circle", 1)
    assert ep.request_id("a red circle", 0) != ep.request_id("a red circles", 0)
    bigger = type(ep)(ep.name, ep.spec.model_copy(update={"size": "128x128"}))
    assert bigger.request_id("a red circle", 0) != ep.request_id("a red circle", 0)
    renamed = type(ep)("other-name", ep.spec)
    assert renamed.request_id("a red circle", 0) == ep.request_id("a red circle", 0)


def test_generates_records_and_pays_exactly_once(judge, api_recipe, prompt_run):
    dry = generate(prompt_run, api_recipe, dry_run=True)
    assert dry.todo == 10 and server_stats(judge)["requests"] == 0 and not Run(prompt_run).has("images")
    res = generate(prompt_run, api_recipe)
    assert res.generated == 10 and res.errors == 0
    imgs = Run(prompt_run).image_paths()
    assert imgs.height == 10 and set(imgs["generator"]) == {"standin-dalle", "standin-gpt-image"}
    for text, path in imgs.select("prompt", "path").iter_rows():  # each image is the one drawn for its prompt
        a = np.asarray(Image.open(path).convert("RGB"), dtype=int).reshape(-1, 3)
        want = next(c for c in ("red", "blue", "green", "yellow", "purple") if c in text)
        near = np.abs(a - np.array(PALETTE[want])).sum(1) < 30
        assert near.mean() > 0.2, text
    stats = server_stats(judge)
    assert stats["billed"]["images"] == 10 and sorted(stats["answered"].values()) == [1] * 10
    # cost accounting: per image for one generator, per token for the other, as the server billed
    journal_usd = _paid(prompt_run)
    gpt_in = sum(len(p) // 4 + 1 for p in PROMPTS)
    server_usd = 5 * 0.04 + (gpt_in * 5.0 + 5 * 1056 * 40.0) / 1e6
    assert res.cost_usd == pytest.approx(journal_usd) == pytest.approx(server_usd, rel=1e-9)
    assert 0.9 < dry.est_cost_usd / res.cost_usd < 1.1
    again = generate(prompt_run, api_recipe)
    assert again.generated == 0 and again.skipped == 10 and server_stats(judge)["requests"] == 10


def test_max_cost_stops_and_a_rerun_continues(judge, api_recipe, prompt_run):
    api_recipe.generators = api_recipe.generators[:1]  # $0.04 an image
    for g in api_recipe.generators:
        g.api.concurrency = 1
    res = generate(prompt_run, api_recipe, max_cost=0.1)
    assert res.stopped_for_budget and res.generated == 2 and _paid(prompt_run) <= 0.1
    res = generate(prompt_run, api_recipe, max_cost=0.13)  # the cap is on the run's total, not this call's
    assert res.generated == 1 and _paid(prompt_run) == pytest.approx(0.12)
    res = generate(prompt_run, api_recipe)
    assert res.generated == 2 and Run(prompt_run).read("images").height == 5
    assert sorted(server_stats(judge)["answered"].values()) == [1] * 5


def test_transient_errors_are_retried(judge, api_recipe, prompt_run):
    judge.state.faults.rate_429 = 0.4
    judge.state.faults.rate_500 = 0.1
    for g in api_recipe.generators:
        g.api.max_retries = 25  # never runs out of retries
    res = generate(prompt_run, api_recipe)
    assert res.generated == 10 and res.errors == 0 and Run(prompt_run).read("images").height == 10
    assert sorted(server_stats(judge)["answered"].values()) == [1] * 10


def test_key_only_from_the_environment(judge, api_recipe, prompt_run, monkeypatch):
    judge.state.faults.api_key = "sk-test-secret-123"
    for g in api_recipe.generators:
        g.api.api_key_required = True
    monkeypatch.delenv("VPREFER_JUDGE_KEY", raising=False)
    with pytest.raises(RecipeError, match="VPREFER_JUDGE_KEY"):
        generate(prompt_run, api_recipe)
    assert server_stats(judge)["requests"] == 0
    monkeypatch.setenv("VPREFER_JUDGE_KEY", "sk-test-secret-123")
    assert generate(prompt_run, api_recipe).generated == 10
    for f in [prompt_run / "manifest.json", *(prompt_run / "journal").glob("*.jsonl")]:
        assert "sk-test-secret-123" not in f.read_text()


def test_bad_answer_is_an_error_not_an_image(judge, api_recipe, prompt_run, monkeypatch):
    import vprefer.judge_server.server as js

    monkeypatch.setattr(js, "generations", lambda body: {"created": 0, "data": [{"b64_json": "bm90IGFuIGltYWdl"}],
                                                          "usage": {"input_tokens": 1, "output_tokens": 1}})
    res = generate(prompt_run, api_recipe)
    assert res.generated == 0 and res.errors == 10 and not Run(prompt_run).has("images")


def test_mixed_with_a_diffusers_pipeline_and_the_cli(judge, prompt_run, monkeypatch):
    monkeypatch.setenv("VPREFER_JUDGE_URL", judge.base_url)
    r = CliRunner().invoke(app, ["generate", str(prompt_run), "--recipe", "generators-api-tiny",
                                 "--limit", "2", "--dry-run"])
    assert r.exit_code == 0 and "6 images to make" in r.output and "nothing was generated" in r.output, r.output
    r = CliRunner().invoke(app, ["generate", str(prompt_run), "--recipe", "generators-api-tiny", "--limit", "2"])
    assert r.exit_code == 0 and "generated 6 images" in r.output and "paid to API generators" in r.output, r.output
    imgs = Run(prompt_run).read("images")
    assert imgs.group_by("generator").len().sort("generator")["len"].to_list() == [2, 2, 2]
    assert imgs.filter(pl.col("generator") == "tiny-ddim")["width"].to_list() == [32, 32]


@pytest.mark.slow
def test_sigkill_then_resume(judge, prompt_run, tmp_path):
    judge.state.faults.latency_s = 0.3
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "VPREFER_JUDGE_URL": judge.base_url}
    rec = GenerateRecipe.load("generators-api-tiny")
    rec.generators = [g for g in rec.generators if g.kind == "openai-images"]
    (tmp_path / "api.yaml").write_text(yaml.safe_dump(rec.resolved()))
    cmd = [sys.executable, "-m", "vprefer", "generate", str(prompt_run), "--recipe", str(tmp_path / "api.yaml")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    journal = prompt_run / "journal"

    def events(kind):
        return [r for f in journal.glob("generate-*.jsonl") for r in read_journal(f)
                if r.get("event") == kind] if journal.exists() else []

    t0 = time.monotonic()
    while len(events("done")) < 3:
        assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
        assert time.monotonic() - t0 < 60
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = {r["request_id"] for r in events("done")}
    for r in events("done"):  # every recorded image was on disk before its record
        assert (prompt_run / r["uri"]).exists()
    in_flight = {r["request_id"] for r in events("sent")} - done
    judge.state.faults.latency_s = 0.0
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    imgs = Run(prompt_run).read("images")
    assert imgs.height == 10 and imgs.select("prompt_id", "generator", "seed").n_unique() == 10
    answered = server_stats(judge)["answered"]
    assert len(answered) == 10
    assert all(answered[rid] == 1 for rid in done)  # nothing answered before the kill was paid again
    twice = {rid for rid, n in answered.items() if n > 1}
    assert twice <= in_flight and len(in_flight) <= 8  # only requests in flight at the kill (the API keeps no copy)
    if in_flight:
        assert f"{len(in_flight)} re-sent" in " ".join(out.stdout.split())

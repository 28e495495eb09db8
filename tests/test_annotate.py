"""Annotation through the real openai client against the embedded judge server (real HTTP)."""

import json

import polars as pl
import pytest

from vprefer.annotate import annotate, build_pairs
from vprefer.annotate.records import ledger_for
from vprefer.annotate.requests import plan
from vprefer.annotate.rubric import Rubric
from vprefer.llm import FatalAPIError
from vprefer.recipes import RecipeError
from vprefer.store import Run
from vprefer.testing.helpers import local_preset, server_stats

N_SETS, N_IMG, N_ASPECTS = 6, 3, 4


def test_online_happy_path(judge, synth_run):
    res = annotate(synth_run, local_preset(judge))
    assert (res.planned, res.ok, res.invalid, res.error) == (12, 12, 0, 0)
    ann = Run(synth_run).read("annotations")
    assert ann.height == 12 * N_IMG * N_ASPECTS
    assert set(ann["status"]) == {"ok"} and ann["score"].is_between(1, 5).all()
    assert ann["rubric"].unique().to_list() == [Rubric.load("visionprefer-v1").hash]
    assert ann["rationale"].str.contains("Stand-in judge").all()
    # totals ride on one row per request: sums are the server's usage, cost > 0
    per_req = ann.group_by("request_id").agg(pl.col("input_tokens").sum(), pl.col("cost_usd").sum())
    assert (per_req["input_tokens"] > 0).all() and (per_req["cost_usd"] > 0).all()
    # two permutations per set, recorded and different
    orders = ann.filter(pl.col("aspect") == "aesthetics").sort("shown_position").group_by(
        "prompt_id", "permutation").agg(pl.col("image_id"))
    for (pid,), g in orders.group_by(["prompt_id"]):
        a, b = g.sort("permutation")["image_id"].to_list()
        assert sorted(a) == sorted(b) and a != b
    # each request answered exactly once at the server; rerun sends nothing
    stats = server_stats(judge)
    assert sorted(stats["answered"].values()) == [1] * 12
    before = stats["requests"]
    again = annotate(synth_run, local_preset(judge))
    assert again.todo == 0 and server_stats(judge)["requests"] == before


def test_scores_follow_the_documented_rule(judge, synth_run):
    """The stand-in judge is not random: on prompt-following it agrees with the synthetic truth."""
    annotate(synth_run, local_preset(judge, permutations=1))
    run = Run(synth_run)
    _, pairs = build_pairs(run)
    imgs = run.read("images").join(run.read("prompts"), on="prompt_id")
    truth = {}
    for r in imgs.iter_rows(named=True):
        k = r["seed"] % 31  # synthetic seeds are prompt*31 + position in the manifest
        truth[r["image_id"]] = json.loads(r["meta"])["truth"][k]["prompt_following"]
    pf = pairs.filter(pl.col("aspect") == "prompt_following", ~pl.col("tie"))
    decided = [(truth[w], truth[l]) for w, l in pf.select("win_image_id", "lose_image_id").rows()
               if abs(truth[w] - truth[l]) >= 2]  # colour right vs wrong
    assert len(decided) >= 3
    assert sum(w > l for w, l in decided) / len(decided) >= 0.8


def test_dry_run_sends_nothing_and_estimates(judge, synth_run):
    res = annotate(synth_run, local_preset(judge), dry_run=True)
    assert res.dry_run and res.todo == 12 and res.est_input_tokens > 12 * N_IMG * 85
    assert res.est_cost_usd > 0
    assert server_stats(judge)["requests"] == 0
    assert not Run(synth_run).has("annotations")


def test_max_cost_holds_and_resumes(judge, synth_run):
    p = local_preset(judge, concurrency=1)
    one = annotate(synth_run, p, dry_run=True).est_cost_usd / 12
    cap = one * 4.5
    res = annotate(synth_run, p, max_cost=cap)
    assert res.stopped_for_budget and 0 < res.ok < 12
    assert res.spent_total_usd <= cap
    # same cap again: nothing more is spent
    again = annotate(synth_run, p, max_cost=cap)
    assert again.ok <= 1 and again.spent_total_usd <= cap
    # no cap: finishes, nothing asked twice
    annotate(synth_run, p)
    assert sorted(server_stats(judge)["answered"].values()) == [1] * 12


def test_429_500_and_stalls_are_retried(judge, synth_run):
    judge.state.faults.rate_429 = 0.3
    judge.state.faults.rate_500 = 0.2
    judge.state.faults.stall_rate = 0.15
    judge.state.faults.stall_s = 1.5
    res = annotate(synth_run, local_preset(judge, timeout_s=0.7, max_retries=12))
    assert res.ok == 12 and res.retries > 0
    assert server_stats(judge)["requests"] > 12


def test_retries_exhausted_leave_requests_pending_not_zero(judge, synth_run):
    judge.state.faults.rate_500 = 1.0
    res = annotate(synth_run, local_preset(judge, max_retries=1))
    assert res.ok == 0
    assert not Run(synth_run).has("annotations")  # nothing recorded as a fake score
    # the server refused every attempt (500): nothing of them runs there, so the rerun does not wait up to
    # timeout_s for their stored answers (it did, 30 s here, as if they were in flight at a crash)
    p = local_preset(judge)
    assert ledger_for(Run(synth_run), p.slug, p.annotator_id).in_flight() == set()
    judge.state.faults.rate_500 = 0.0
    assert annotate(synth_run, local_preset(judge)).ok == 12


def test_malformed_answers_end_invalid_with_raw_text(judge, synth_run):
    judge.state.faults.malformed_rate = 1.0
    res = annotate(synth_run, local_preset(judge, invalid_retries=2))
    assert res.invalid == 12 and res.ok == 0
    ann = Run(synth_run).read("annotations")
    assert set(ann["status"]) == {"invalid"} and ann["score"].is_null().all()
    assert ann["raw"].str.contains("lost track").all()
    assert server_stats(judge)["requests"] == 12 * 3  # asked, then re-asked twice
    with pytest.raises(ValueError, match="no successful annotations"):
        build_pairs(Run(synth_run))


def test_without_structured_outputs_the_tolerant_parser_reads_fenced_json(judge, synth_run):
    res = annotate(synth_run, local_preset(judge, structured_output=False))
    assert res.ok == 12


def test_wrong_key_stops_with_one_clear_line_and_no_secret(judge, synth_run, monkeypatch):
    judge.state.faults.api_key = "right-key-123456"
    monkeypatch.setenv("VPREFER_JUDGE_KEY", "sk-wrong-SECRET-abcdef123456")
    with pytest.raises(FatalAPIError) as e:
        annotate(synth_run, local_preset(judge))
    assert "401" in str(e.value) and "VPREFER_JUDGE_KEY" in str(e.value)
    assert "SECRET" not in str(e.value)


def test_missing_required_key(judge, synth_run, monkeypatch):
    monkeypatch.delenv("VPREFER_JUDGE_KEY", raising=False)
    with pytest.raises(RecipeError, match="set the environment variable VPREFER_JUDGE_KEY"):
        annotate(synth_run, local_preset(judge, api_key_required=True))


def test_api_key_never_lands_in_the_run_directory(judge, synth_run, monkeypatch, capsys):
    key = "sk-live-TOPSECRET-9876543210abcdef"
    judge.state.faults.api_key = key
    monkeypatch.setenv("VPREFER_JUDGE_KEY", key)
    from typer.testing import CliRunner

    from vprefer.cli import app
    r = CliRunner().invoke(app, ["annotate", str(synth_run), "--annotator", "local-judge",
                                 "--base-url", judge.base_url, "--mode", "batch"])
    assert r.exit_code == 0, r.output
    r2 = CliRunner().invoke(app, ["annotate", str(synth_run), "--annotator", "local-judge",
                                  "--base-url", judge.base_url, "--permutations", "3"])
    assert r2.exit_code == 0, r2.output
    for f in synth_run.rglob("*"):
        if f.is_file():
            assert b"TOPSECRET" not in f.read_bytes(), f
    assert "TOPSECRET" not in r.output + r2.output + capsys.readouterr().err


def test_missing_image_file_is_a_recorded_error_not_a_crash(judge, synth_run):
    run = Run(synth_run)
    victim = run.read("images").row(0, named=True)
    (run.path / victim["uri"]).unlink()
    sets = run.read("images").filter(pl.col("uri") == victim["uri"])["prompt_id"].n_unique()
    res = annotate(synth_run, local_preset(judge))  # 2 permutations per set
    assert res.error == 2 * sets and res.ok == 12 - 2 * sets
    err = run.read("annotations").filter(pl.col("status") == "error")
    assert err["raw"].str.contains("No such file").all()


def test_batch_mode_happy_path_and_error_file_lines_are_resubmitted(judge, synth_run):
    judge.state.faults.batch_error_rate = 0.3
    res = annotate(synth_run, local_preset(judge, mode="batch"), poll_s=0.05)
    assert res.ok == 12
    ann = Run(synth_run).read("annotations")
    assert ann["request_id"].n_unique() == 12
    # every custom_id answered exactly once across all batches
    assert sorted(server_stats(judge)["answered"].values()) == [1] * 12
    assert server_stats(judge)["batches"] >= 2  # the error-file lines went into a second batch
    # batch pricing: half of the online price for the same tokens
    per = ann.select(pl.col("input_tokens").sum(), pl.col("output_tokens").sum(), pl.col("cost_usd").sum()).row(0)
    online = (per[0] * 2.5 + per[1] * 10.0) / 1e6
    assert per[2] == pytest.approx(online * 0.5)


def test_batch_lost_batch_id_is_found_by_metadata_not_created_twice(judge, synth_run):
    from vprefer.annotate.job import AnnotationJob
    from vprefer.annotate.records import ledger_for
    from vprefer.llm import JobBatches

    p = local_preset(judge, mode="batch")
    run = Run(synth_run)
    job = AnnotationJob(run, p, run_id="x")
    reqs = job.plan(run, None, dry_run=False)
    with ledger_for(run, p.slug, p.annotator_id) as ledger:
        JobBatches(run, job, ledger).submit(reqs)
    state = synth_run / "state" / f"batches-{p.slug}.json"
    entries = json.loads(state.read_text())
    assert len(entries) == 1 and entries[0]["batch_id"]
    entries[0]["batch_id"] = None  # as if killed between batches.create and saving its id
    state.write_text(json.dumps(entries))
    res = annotate(synth_run, p, poll_s=0.05)
    assert res.ok == 12 and server_stats(judge)["batches"] == 1


def test_position_bias_is_measured(judge, synth_run):
    judge.state.faults.position_bias = 1.5
    res = annotate(synth_run, local_preset(judge, permutations=3))
    first = res.bias.filter(pl.col("shown_position") == 1, pl.col("aspect") == "aesthetics")["bias"].item()
    rest = res.bias.filter(pl.col("shown_position") > 1, pl.col("aspect") == "aesthetics")["bias"]
    assert first > 0.5 and (rest < first).all()


def test_batch_mode_reasks_invalid_answers_in_the_next_batch(judge, synth_run):
    """Malformed answers from a batch are asked again in a later batch (up to invalid_retries), as online;
    each request is answered by the server exactly as often as the journal says it was paid for."""
    from vprefer.llm import read_journal

    judge.state.faults.malformed_rate = 0.4
    p = local_preset(judge, mode="batch", invalid_retries=2)
    res = annotate(synth_run, p, poll_s=0.05)
    journal = list(read_journal(synth_run / "journal" / f"annotate-{p.slug}.jsonl"))
    reasks = {}
    for r in journal:
        if r["event"] == "reask":
            reasks[r["request_id"]] = reasks.get(r["request_id"], 0) + 1
    assert sum(reasks.values()) >= 3 and res.retries == sum(reasks.values())  # some answers were re-asked
    assert max(reasks.values()) <= 2
    done = {r["request_id"]: r for r in journal if r["event"] == "done"}
    answered = server_stats(judge)["answered"]
    assert set(done) == set(answered) and len(done) == 12
    for rid, rec in done.items():
        assert answered[rid] == rec["attempts"] == 1 + reasks.get(rid, 0)  # nothing paid twice beyond re-asks
        assert rec["status"] == "ok" or rec["attempts"] == 3  # invalid only after every re-ask failed
    assert res.ok + res.invalid == 12 and res.ok > 12 - len(reasks)  # re-asks turned invalid answers into ok
    ann = Run(synth_run).read("annotations")
    per_req = ann.group_by("request_id").agg(pl.col("cost_usd").sum(), pl.col("output_tokens").sum())
    # the table carries what every answer cost, re-asks included: the server's usage at the batch price
    assert per_req["cost_usd"].sum() == pytest.approx(res.cost_usd)
    assert server_stats(judge)["batches"] >= 2
    assert annotate(synth_run, p, poll_s=0.05).todo == 0  # a rerun sends nothing


def test_batch_reask_of_the_same_request_twice_gets_a_new_batch_then_is_stored_invalid(judge, synth_run):
    """Every answer malformed: the one request is asked 1 + invalid_retries times, each time in a new batch
    (the same id set must not find the earlier batch again by its metadata), then stored as invalid."""
    judge.state.faults.malformed_rate = 1.0
    p = local_preset(judge, mode="batch", invalid_retries=2, permutations=1)
    res = annotate(synth_run, p, limit=1, poll_s=0.05)
    assert (res.ok, res.invalid, res.retries) == (0, 1, 2)
    stats = server_stats(judge)
    assert list(stats["answered"].values()) == [3] and stats["batches"] == 3
    ann = Run(synth_run).read("annotations")
    assert set(ann["status"]) == {"invalid"} and ann["raw"].str.contains("lost track").all()


def test_batch_reasks_stay_within_the_cap(judge, synth_run):
    """A re-ask is paid like any request: with every answer malformed and a cap that fits one round, the
    re-ask batches that would overrun it are not submitted (they were, on top of the cap)."""
    from vprefer.annotate.estimate import Estimator
    from vprefer.annotate.requests import plan
    from vprefer.annotate.rubric import Rubric
    from vprefer.llm import read_journal

    judge.state.faults.malformed_rate = 1.0
    p = local_preset(judge, mode="batch", invalid_retries=2)
    rubric = Rubric.load(p.rubric)
    est = Estimator.for_run(Run(synth_run), p, rubric)
    cap = sum(est.cost(r, batch=True, upper=True) for r in plan(Run(synth_run), p, rubric, pin=False)) * 1.01
    res = annotate(synth_run, p, poll_s=0.05, max_cost=cap)
    journal = list(read_journal(synth_run / "journal" / f"annotate-{p.slug}.jsonl"))
    done = {r["request_id"]: r["cost_usd"] for r in journal if r["event"] == "done"}  # re-asks included
    paid = sum(done.values()) + sum(r["cost_usd"] for r in journal
                                    if r["event"] == "reask" and r["request_id"] not in done)
    assert res.stopped_for_budget and server_stats(judge)["batches"] >= 2  # some re-asks fitted, not all
    assert 0 < paid <= cap and res.ok == 0 and len(done) < 12


def test_reasks_paid_by_a_dead_process_count_against_the_first_batch(judge, synth_run):
    """A process paid re-asks, then died before their answers: the next process's first batch must
    reserve that money too (it used to check the cap against the answered spend alone)."""
    import json

    from vprefer.annotate.estimate import Estimator
    from vprefer.annotate.requests import plan
    from vprefer.annotate.rubric import Rubric
    from vprefer.llm import read_journal

    p = local_preset(judge, mode="batch", invalid_retries=2)
    rubric = Rubric.load(p.rubric)
    reqs = plan(Run(synth_run), p, rubric, pin=False)
    full = sum(Estimator.for_run(Run(synth_run), p, rubric).cost(r, batch=True, upper=True) for r in reqs)
    path = synth_run / "journal" / f"annotate-{p.slug}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    dead = [{"event": "reask", "request_id": r.request_id, "response_id": f"old-{k}", "input_tokens": 1000,
             "output_tokens": 100, "cost_usd": full / 4, "error": "invalid answer: earlier"}
            for k, r in enumerate(reqs[:2])]  # half the full cost already paid
    path.write_text("".join(json.dumps(r) + "\n" for r in dead))
    cap = full * 1.01
    res = annotate(synth_run, p, poll_s=0.05, max_cost=cap)
    done = {r["request_id"]: r["cost_usd"] for r in read_journal(path) if r["event"] == "done"}
    paid = sum(done.values()) + sum(r["cost_usd"] for r in dead if r["request_id"] not in done)
    assert res.stopped_for_budget and 0 < len(done) < len(reqs)
    assert paid <= cap


def test_the_wait_for_answers_left_in_flight_shows_in_progress(judge, synth_run):
    """A request the last process sent a moment ago may still be running: the resume waits for its stored
    answer (up to timeout_s) rather than pay again, and the progress line says so while it waits (it used
    to stand still with no word)."""
    import time

    from vprefer.annotate.job import AnnotationJob
    from vprefer.annotate.runner import progress_note
    from vprefer.llm import Report, run_job

    p = local_preset(judge, store_completions=True, timeout_s=2.5, permutations=1)
    rubric, run = Rubric.load(p.rubric), Run(synth_run)
    reqs = plan(run, p, rubric, limit=1)
    path = synth_run / "journal" / f"annotate-{p.slug}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"event": "sent", "request_id": reqs[0].request_id, "attempt": 1,
                                "at": time.time()}) + "\n")
    report, notes = Report(), []
    run_job(run, AnnotationJob(run, p, run_id="t"), limit=1, report=report,
            on_update=lambda s: notes.append(progress_note(s, p)))
    assert any(n.startswith("waiting for 1 answer in flight") for n in notes), notes
    assert notes[-1] == "" and report.recovering == 0 and report.ok == 1

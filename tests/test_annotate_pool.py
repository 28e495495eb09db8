"""Judge pools (several servers behind one client) and offline vLLM batches, against real loopback servers."""

import json
import threading
import time

import openai
import polars as pl
import pytest

from vprefer.annotate import annotate
from vprefer.errors import InputError
from vprefer.llm.pool import Pool, Server, label_for
from vprefer.store import Run
from vprefer.testing.helpers import local_preset, server_stats
from vprefer.judge_server.server import JudgeServer
from vprefer.testing.vllm_batch import run_batch


@pytest.fixture
def judge2():
    srv = JudgeServer().start()
    yield srv
    srv.stop()


def _pool(n=2):
    return Pool([Server(f"s{i}", [openai.AsyncOpenAI(api_key="x", base_url="http://127.0.0.1:9/v1")])
                 for i in range(n)], cooldown_base_s=1.0, cooldown_max_s=8.0)


def test_least_outstanding_routing_and_cooldown():
    pool = _pool()
    a, b = pool.servers
    assert pool.pick() is a  # tie: fewest outstanding, then fewest served
    pool.begin(a)
    assert pool.pick() is b  # a has one in flight
    pool.begin(b)
    pool.begin(b)
    assert pool.pick() is a
    now = time.monotonic()
    pool.failed(b)  # b: one left in flight, and out for 1 s
    assert pool.stats["s1"]["down"] and pool.stats["s1"]["failed"] == 1
    pool.begin(a)
    pool.begin(a)  # a has 3 in flight, b only 1, but b is out
    assert pool.pick(now + 0.5) is a
    assert pool.pick(now + 1.5) is b  # cooldown over: back in
    pool.failed(b)
    assert b.down_until - time.monotonic() > 1.5  # second failure in a row: cooldown doubled
    pool.succeeded(a)
    pool.failed(a)  # every server out: the one back first is tried, never none
    assert pool.pick() is (a if a.down_until < b.down_until else b)
    pool.begin(b)
    pool.succeeded(b)
    assert b.down_until == 0 and b.fails_in_row == 0


def test_labels_never_carry_credentials():
    assert label_for("https://user:sk-secret@api.example.com:8443/v1?token=abc", 0) == "api.example.com:8443"
    assert label_for(None, 1) == "server2"


def test_two_servers_share_the_work_each_request_answered_once(judge, judge2, synth_run):
    judge.state.faults.latency_s = judge2.state.faults.latency_s = 0.05
    res = annotate(synth_run, local_preset(judge, base_urls=[judge.base_url, judge2.base_url], concurrency=4))
    assert res.ok == 12 and res.error == 0
    s1, s2 = server_stats(judge), server_stats(judge2)
    assert s1["answered"] and s2["answered"]  # both got work
    counts = {}
    for s in (s1, s2):
        for rid, k in s["answered"].items():
            counts[rid] = counts.get(rid, 0) + k
    assert sorted(counts.values()) == [1] * 12
    assert {k: v["ok"] for k, v in res.servers.items()} == {
        judge.base_url.split("/")[2]: len(s1["answered"]), judge2.base_url.split("/")[2]: len(s2["answered"])}


def test_a_failing_server_is_taken_out_then_back_after_it_recovers(judge, judge2, synth_run):
    judge.state.faults.latency_s = judge2.state.faults.latency_s = 0.1
    judge2.state.faults.rate_500 = 1.0  # the second replica is broken at the start ...
    threading.Timer(0.35, lambda: setattr(judge2.state.faults, "rate_500", 0.0)).start()  # ... then recovers
    preset = local_preset(judge, base_urls=[judge.base_url, judge2.base_url], concurrency=2, max_retries=3,
                          backoff_base_s=0.05, backoff_max_s=0.1)
    res = annotate(synth_run, preset)
    assert res.ok == 12 and res.error == 0  # no request lost to the broken server: retried on the other
    bad = res.servers[judge2.base_url.split("/")[2]]
    assert bad["failed"] >= 1 and bad["ok"] >= 1  # it failed, was taken out, and served again after recovering
    # taken out: while broken it got far fewer attempts than the requests sent in that time
    assert bad["failed"] <= 6
    answered = {**server_stats(judge)["answered"]}
    for rid, k in server_stats(judge2)["answered"].items():
        answered[rid] = answered.get(rid, 0) + k
    assert sorted(answered.values()) == [1] * 12


def test_pool_urls_from_the_environment(monkeypatch, judge):
    monkeypatch.setenv("MY_POOL", f"{judge.base_url}, http://127.0.0.1:9/v1")
    p = local_preset(judge, base_urls_env="MY_POOL")
    assert p.resolved_base_urls() == [judge.base_url, "http://127.0.0.1:9/v1"]


# ---------------------------------------------------------------------------------------------- offline mode
def _chunks(run_dir):
    return sorted((run_dir / "offline").rglob("chunk-*.jsonl"))


def test_offline_chunks_fold_back_failed_and_missing_stay_pending(judge, synth_run, tmp_path):
    preset = local_preset(judge, mode="offline", base_url="http://127.0.0.1:9/v1")  # no server is needed
    res = annotate(synth_run, preset)
    files = _chunks(synth_run)
    assert [str(f) for f in files] == res.chunk_files and len(files) == 1
    lines = [json.loads(x) for x in files[0].read_text().splitlines()]
    assert len(lines) == 12 and {ln["url"] for ln in lines} == {"/v1/chat/completions"}
    assert all(ln["method"] == "POST" and ln["body"]["model"] == preset.model for ln in lines)
    # a rerun before the fold writes nothing new: the requests are in a chunk already
    again = annotate(synth_run, preset)
    assert again.chunk_files == [] and again.waiting_files == res.chunk_files and _chunks(synth_run) == files
    ids = [ln["custom_id"] for ln in lines]
    out = tmp_path / "out.jsonl"
    n = run_batch(files[0], out, fail_ids=frozenset(ids[:2]), drop_ids=frozenset(ids[2:3]))
    assert n == {"answered": 9, "failed": 2, "dropped": 1}
    folded = annotate(synth_run, preset, results=[out])
    assert (folded.ok, folded.error) == (9, 2) and folded.todo == 3
    assert folded.folded["answered"] == 9 and folded.folded["chunks_closed"] == 1
    ann = Run(synth_run).read("annotations")
    assert set(ann["request_id"]) == set(ids[3:]) and ann.height == 9 * 3 * 4
    # the stand-in judge's scores arrived intact: same as asking it online would give
    assert ann["score"].is_between(1, 5).all() and (ann["status"] == "ok").all()
    # a second fold of the same file is a no-op: nothing journalled, nothing added
    journal = next((synth_run / "journal").glob("annotate-*.jsonl"))
    size = journal.stat().st_size
    twice = annotate(synth_run, preset, results=[out])
    assert (twice.ok, twice.folded["already"], twice.folded["answered"]) == (0, 9, 0)
    assert journal.stat().st_size == size and Run(synth_run).read("annotations").height == ann.height
    # the failed and missing lines go into a new chunk on the next offline run
    third = annotate(synth_run, preset)
    assert len(third.chunk_files) == 1
    new_ids = {json.loads(x)["custom_id"] for x in open(third.chunk_files[0])}
    assert new_ids == set(ids[:3])
    out2 = tmp_path / "out2.jsonl"
    run_batch(third.chunk_files[0], out2)
    last = annotate(synth_run, preset, results=[out2])
    assert last.ok == 3 and last.todo == 0
    per_req = Run(synth_run).read("annotations").group_by("request_id").agg(pl.len())
    assert per_req.height == 12 and (per_req["len"] == 12).all()


def test_fold_of_a_file_that_is_not_vllm_output_is_one_clear_error(judge, synth_run, tmp_path):
    preset = local_preset(judge, mode="offline")
    annotate(synth_run, preset)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"custom_id": "x", "response": null}\nnot json\n')
    with pytest.raises(InputError, match=r"bad.jsonl:2: not a JSON line"):
        annotate(synth_run, preset, results=[bad])
    with pytest.raises(InputError, match="not found"):
        annotate(synth_run, preset, results=[tmp_path / "nope.jsonl"])


def test_cli_offline_round_trip(judge, synth_run, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from vprefer.cli import app

    monkeypatch.setenv("VPREFER_JUDGE_URL", judge.base_url)
    r = CliRunner().invoke(app, ["annotate", str(synth_run), "--annotator", "local-judge", "--mode", "offline"],
                           env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "vllm run-batch -i" in r.output and "--results" in r.output
    (chunk,) = _chunks(synth_run)
    out = tmp_path / "o.jsonl"
    run_batch(chunk, out)
    r = CliRunner().invoke(app, ["annotate", str(synth_run), "--annotator", "local-judge", "--results", str(out)],
                           env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert Run(synth_run).read("annotations")["request_id"].n_unique() == 12
    r = CliRunner().invoke(app, ["annotate", str(synth_run), "--annotator", "local-judge", "--results",
                                 str(tmp_path / "missing.jsonl")], env={"COLUMNS": "200"})
    assert r.exit_code != 0 and "not found" in r.output and "Traceback" not in r.output

"""kill -9 in the middle of a run, then the same command again: nothing lost, nothing paid twice."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from vprefer.annotate import annotate
from vprefer.llm import read_journal as read
from vprefer.store import Run
from vprefer.testing.helpers import local_preset, server_stats

pytestmark = pytest.mark.slow  # kill -9 of subprocesses, then resume


def _spawn(run, judge, *extra):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("VPREFER_JUDGE_URL", None)
    return subprocess.Popen([sys.executable, "-m", "vprefer", "annotate", str(run), "--annotator", "local-judge",
                             "--base-url", judge.base_url, *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait_for(cond, proc, timeout=60.0):
    t0 = time.monotonic()
    while not cond():
        if proc.poll() is not None:
            pytest.fail(f"process ended before the kill point: {proc.stdout.read().decode()[-2000:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail("kill point never reached")
        time.sleep(0.01)


def _done_lines(run):
    j = run / "journal"
    return sum(1 for f in j.glob("*.jsonl") for r in read(f) if r.get("event") == "done") if j.exists() else 0


def _inside_server(judge) -> bool:
    st = server_stats(judge)
    return st["requests"] > sum(st["answered"].values())


@pytest.mark.parametrize("kill_after", [1, 6])
def test_sigkill_online_then_resume(judge, synth_run, kill_after):
    # killed while requests are inside the server (2 s each): the resume starts before they are answered, so
    # it must wait for their stored answers (up to the preset's timeout after they were sent), not pay again
    judge.state.faults.latency_s = 2.0
    proc = _spawn(synth_run, judge, "--concurrency", "4")
    _wait_for(lambda: _done_lines(synth_run) >= kill_after and _inside_server(judge), proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    judge.state.faults.latency_s = 0.0
    res = annotate(synth_run, local_preset(judge, concurrency=4, timeout_s=5))
    ann = Run(synth_run).read("annotations")
    assert ann["request_id"].n_unique() == 12  # every request present ...
    assert ann.group_by("request_id", "image_id", "aspect").len()["len"].max() == 1  # ... exactly once
    answered = server_stats(judge)["answered"]
    assert len(answered) == 12 and max(answered.values()) == 1, answered  # no request paid twice
    assert res.already_done >= kill_after and res.recovered >= 1


def test_sigkill_while_waiting_for_a_batch_then_resume(judge, synth_run):
    judge.state.faults.batch_delay_s = 1.5
    proc = _spawn(synth_run, judge, "--mode", "batch")
    state = synth_run / "state"

    def submitted():
        files = list(state.glob("batches-*.json")) if state.exists() else []
        return bool(files) and any(e.get("batch_id") for e in json.loads(files[0].read_text()))

    _wait_for(submitted, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    res = annotate(synth_run, local_preset(judge, mode="batch"), poll_s=0.05)
    assert res.ok == 12
    stats = server_stats(judge)
    assert stats["batches"] == 1  # the batch in flight was found again, not created twice
    assert sorted(stats["answered"].values()) == [1] * 12
    assert Run(synth_run).read("annotations")["request_id"].n_unique() == 12


def test_torn_last_journal_line_is_ignored(judge, synth_run):
    annotate(synth_run, local_preset(judge), limit=2)
    jfile = next((synth_run / "journal").glob("*.jsonl"))
    with open(jfile, "ab") as f:
        f.write(b'{"event": "done", "request_id": "abc", "sta')  # crash mid-write
    res = annotate(synth_run, local_preset(judge))
    assert res.ok == 8 and Run(synth_run).read("annotations")["request_id"].n_unique() == 12

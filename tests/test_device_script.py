"""benchmarks/device.py rehearsed with --tiny on CPU, so the script is known to work before a GPU is lent:
every figure is recorded with a number, a failing figure and one over its budget are recorded as such
while the others still run, and a run killed midway leaves the figures it had measured (the device
machine kills a command at its limit: whatever was not written by then is lost).

The two end-to-end tests are slow: each figure is a fresh interpreter importing torch, transformers and
diffusers (~20 s of CPU each on the 2-core machine): 30 min for both there on 2026-12-02 under a load
average of 7-14 (four other agents); the three fast ones ~40 s there, a few seconds on a quiet machine.
The runner itself (a failure, a missing module, an overrun with its children) is checked fast.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "device.py"
FIGURES = ["score-clip-l", "cache-clip-l", "reward-full", "reward-lora", "reward-qlora-4bit", "refl-sdxl", "dpo-sdxl",
           "annotate", "generate-sd15", "flow-sd35m", "fsdp"]

sys.path.insert(0, str(REPO / "benchmarks"))
import device  # noqa: E402


def command(tmp: Path, *args: str) -> list[str]:
    return [sys.executable, str(SCRIPT), "--tiny", "--out", str(tmp / "out"), "--work", str(tmp / "work"), *args]


def number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def test_the_figures_fit_eight_minutes_most_important_first():
    figs = device.catalogue(Path("/cache"), Path("/work"), 16)
    assert [f.name for f in figs] == FIGURES
    assert sum(f.budget for f in figs) <= 450
    assert all(f.needs in FIGURES[:i] for i, f in enumerate(figs) if f.needs)


def test_the_runner_records_a_failure_a_missing_module_and_an_overrun_with_its_children(tmp_path):
    env = dict(os.environ)
    py = [sys.executable, "-c"]
    r = device.run_figure(py + ["import json, sys; print(json.dumps({'x': 1})); sys.exit('bad input')"], env, 60,
                          tmp_path, "f")
    assert r["status"] == "failed" and "bad input" in r["error"]
    r = device.run_figure(py + ["import no_such_module_here"], env, 60, tmp_path, "m")
    assert r["status"] == "missing" and "no_such_module_here" in r["error"].splitlines()[0]
    r = device.run_figure(py + ["print('not json')"], env, 60, tmp_path, "n")
    assert r["status"] == "failed" and "no result line" in r["error"]
    assert device.run_figure(py + ["import json; print(json.dumps({'x': 2.5}))"], env, 60, tmp_path, "ok")["values"] \
        == {"x": 2.5}
    child = tmp_path / "child.pid"
    code = (f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            f"open({str(child)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    r = device.run_figure(py + [code], env, 3, tmp_path, "t")
    assert r["status"] == "timeout" and r["returncode"] is None
    pid = int(child.read_text())
    for _ in range(100):
        if not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]:
            break
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_a_bundle_of_packages_is_unpacked_first_on_the_figures_path(tmp_path):
    import tarfile

    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "probe_pkg_here.py").write_text("WHERE = 'bundle'\n")
    (tmp_path / "whl").mkdir()
    with tarfile.open(tmp_path / "whl" / "site.tar.xz", "w:xz") as tar:
        tar.add(tmp_path / "site", arcname="site")
    site = device.install_wheels(tmp_path / "whl", tmp_path / "work")
    env = {**os.environ, "PYTHONPATH": str(site)}
    r = device.run_figure([sys.executable, "-c", "import json, probe_pkg_here as p; print(json.dumps({'w': p.WHERE}))"],
                          env, 60, tmp_path, "probe")
    assert r["values"] == {"w": "bundle"}


@pytest.mark.slow
def test_every_figure_is_recorded_and_a_failure_or_an_overrun_does_not_stop_the_rest(tmp_path):
    p = subprocess.run(command(tmp_path, "--inject-failure", "score-clip-l", "--figure-budget", "annotate=2"),
                       cwd=REPO, capture_output=True, text=True, timeout=3600)
    assert p.returncode == 0, p.stderr[-3000:]
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [f["name"] for f in doc["figures"]] == FIGURES
    res = doc["results"]
    assert set(res) == set(FIGURES)
    # the first figure failed (a bad argument) and the rest still ran
    assert res["score-clip-l"]["status"] == "failed"
    assert "--no-such-option" in res["score-clip-l"]["error"]
    # killed at its budget, with its judge processes
    assert res["annotate"]["status"] == "timeout", res["annotate"]
    for f in doc["figures"]:
        if f["name"] in ("score-clip-l", "annotate"):
            continue
        r = res[f["name"]]
        assert r["status"] == "ok", (f["name"], r.get("error"))
        assert number(r["values"].get(f["metric"])), (f["name"], r["values"])
        assert number(r["seconds"]) and r["command"].startswith("python benchmarks/")
    v = doc["versions"]
    assert v["python"] and v["packages"]["torch"] and v["cpus"] >= 1 and "gpu" in v
    assert doc["commit"]
    md = (tmp_path / "out" / "results.md").read_text()
    for n in FIGURES:
        assert f"| {n} | `python benchmarks/" in md
    assert "| annotate |" in md and "| timeout |" in md


@pytest.mark.slow
def test_a_run_killed_midway_keeps_what_it_measured(tmp_path):
    """The two cheap figures that the test above does not see succeed, then one killed with the script."""
    p = subprocess.Popen(command(tmp_path, "--only", "score-clip-l,annotate,generate-sd15"), cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        for line in p.stdout:
            if line.startswith("[2/3] annotate:"):
                break
        time.sleep(1)  # the third figure is starting
    finally:
        os.killpg(p.pid, signal.SIGKILL)  # as the device's limit does: no chance to write anything more
        p.wait()
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    res = doc["results"]
    for n in ("score-clip-l", "annotate"):
        assert res[n]["status"] == "ok", (n, res[n].get("error"))
        assert number(res[n]["values"][next(f["metric"] for f in doc["figures"] if f["name"] == n)])
    third = res.get("generate-sd15", {})
    assert third.get("status") == "running"
    for _ in range(300):  # the figure dies with the script (it runs in a process group of its own)
        if not Path(f"/proc/{third['pid']}").exists():
            break
        time.sleep(0.1)
    assert not Path(f"/proc/{third['pid']}").exists()
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| score-clip-l |" in md and "| ok |" in md and "| generate-sd15 |" in md

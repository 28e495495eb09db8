"""Every GPU figure the project has, in one short run: for the few minutes a GPU is at hand.

    python benchmarks/device.py --out DIR [--tiny] [--budget-s 480] [--only NAME,...] [--wheels DIR]

Each figure runs one benchmark script (full-size architecture, random weights) in a process of its own,
under its own time budget (killed with its children on overrun: "timeout"), most important first, so a
run cut short still returns the figures that matter most; a figure that fails is recorded with the last
lines of its stderr ("missing" when a module is not installed) and the rest go on. ``DIR/results.json``
and ``DIR/results.md`` (a table for BENCHMARKS.md) are rewritten after every figure, so a killed run
leaves what it measured; ``DIR/log.txt`` has each figure's output tail. The budgets are sized for one
H200 and add up to 450 s (``--budget-s`` caps the whole run, versions check included).

``--tiny``: the same figures on CPU with the tiny models (the test suite runs it); times there say nothing,
and each budget is a generous cap (shared 2-core machines import slowly).

A machine without the packages the figures import (the lent device's image lacks diffusers, polars, trl,
pydantic, openai, bitsandbytes...) and without network: ``python benchmarks/device_bundle.py`` packs them
into ``.whl/site.tar.xz`` here; ``--wheels .whl`` there unpacks it (or installs ``*.whl``) first on the path.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
B = "benchmarks/"
CLIP_L = "openai/clip-vit-large-patch14"
TINY_BUDGET = 300.0  # per figure with --tiny: a cap against hangs, not a GPU figure
VERSIONS_BUDGET = 60.0


@dataclass
class Figure:
    name: str
    budget: float  # seconds on one H200
    what: str
    full: list[str]
    tiny: list[str]
    metric: str  # the value a test and the table look for first
    needs: str | None = None  # a figure that must have succeeded first


def catalogue(cache: Path, work: Path, cpus: int) -> list[Figure]:
    """The figures in order of importance. Score throughput with the preparation pool, then reward training
    memory (LoRA / 4-bit vs full), the SDXL steps, annotation on this machine's cores, generation, SD 3.5
    Medium's LoRA-vs-full memory ratio (DPO, ReFL), and the FSDP configuration last."""
    py, dev = [sys.executable], [sys.executable, B + "device.py"]
    tiny_clip = str(cache / "tiny-clip")
    judges = max(2, min(8, cpus // 2))  # the rest of the cores are the client's and the system's
    f = [Figure("score-clip-l", 40, "VP-Score `score()` img/s vs the bare CLIP-L forward (preparation pool)",
                py + [B + "score_throughput.py", "--arch", "clip-l", "--n", "512", "--batch", "64"],
                py + [B + "score_throughput.py", "--arch", "clip-tiny", "--n", "32", "--batch", "8", "--loop-sample", "4"],
                "score_img_per_s"),
         Figure("cache-clip-l", 30, "CLIP ViT-L/14 with random weights in the offline HF cache (rehearse.py build)",
                dev + ["_build", "--cache", str(cache)], dev + ["_build", "--tiny", "--cache", str(cache)], "gib")]
    for v, budget in (("full", 35), ("lora", 30), ("qlora-4bit", 25)):
        f.append(Figure(f"reward-{v}", budget, f"CLIP-L VP-Score training, {v}: peak GPU memory",
                        py + [B + "train_reward.py", "--variant", v, "--backbone", CLIP_L, "--steps", "4", "--batch", "16"],
                        py + [B + "train_reward.py", "--variant", v, "--backbone", tiny_clip, "--steps", "2", "--batch", "4"],
                        "peak_mib", needs="cache-clip-l"))
    for loop, budget, steps in (("refl", 60, "2"), ("dpo", 40, "3")):
        f.append(Figure(f"{loop}-sdxl", budget, f"SDXL {loop.upper()} at 1024 px, LoRA + grad. checkpointing",
                        py + [B + f"{loop}_step.py", "--arch", "sdxl", "--variant", "lora+ckpt", "--steps", steps],
                        py + [B + f"{loop}_step.py", "--arch", "tiny-sdxl", "--variant", "lora+ckpt", "--steps", "1"],
                        "step_s"))
    f.append(Figure("annotate", 45, f"annotation throughput, {judges}-process stand-in judge, 200 ms latency",
                    py + [B + "annotate_throughput.py", "--judge-workers", str(judges), "--sets", "1000",
                          "--concurrency", "32", "64", "--pool-sets", "200", "--sequential-sample", "10",
                          "--bare-seconds", "4"],
                    py + [B + "annotate_throughput.py", "--judge-workers", "2", "--sets", "30", "--concurrency", "8",
                          "--latency", "0.05", "--pool-sets", "12", "--capacity", "4", "--sequential-sample", "3",
                          "--bare-seconds", "1"],
                    "ratio"))
    f.append(Figure("generate-sd15", 30, "SD 1.5 generation img/s, 512 px, 30 steps, CFG 7.5, fp16",
                    py + [B + "generate_throughput.py", "--arch", "sd15", "--n", "16", "--batch", "8"],
                    py + [B + "generate_throughput.py", "--arch", "tiny", "--n", "4", "--batch", "2", "--steps", "4"],
                    "img_per_s"))
    # SD 3.5 Medium (T5-XXL whole, bf16, 512 px): DPO and ReFL, LoRA + checkpointing vs full fine-tuning, each
    # variant a process of its own (four in all). It took the SD 1.5 LoRA-vs-full figures' 90 s: those ratios
    # were measured on an H100 already (BENCHMARKS.md, "ReFL and Diffusion-DPO steps").
    f.append(Figure("flow-sd35m", 90, "SD 3.5 Medium DPO and ReFL at 512 px: peak memory LoRA + ckpt ÷ full, s/update",
                    py + [B + "flow_memory.py", "--arch", "sd35m", "--steps", "1"],
                    py + [B + "flow_memory.py", "--arch", "tiny-sd3", "--steps", "1"],
                    "dpo_ratio"))
    f.append(Figure("fsdp", 25, "rl/accelerate-fsdp.yaml under accelerate launch (1 process), tiny DPO",
                    dev + ["_fsdp", "--work", str(work / "fsdp")], dev + ["_fsdp", "--work", str(work / "fsdp")],
                    "s_per_update"))
    return f


# ------------------------------------------------------------------ helpers run as figures
def build_cache(cache: Path, tiny: bool) -> dict:
    t = time.time()
    if tiny:
        from vprefer.testing.tiny_models import make_tiny_backbone

        out = make_tiny_backbone("clip", cache / "tiny-clip")
    else:
        sys.path.insert(0, str(REPO / "benchmarks"))
        from rehearse import build, snapshot

        import yaml

        build(cache, [CLIP_L])
        out = snapshot(cache, CLIP_L, yaml.safe_load((REPO / B / "hub_configs.yaml").read_text())[CLIP_L])
    size = sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file()) / 2**30
    return {"gib": round(size, 3), "seconds": round(time.time() - t, 1), "path": str(out)}


def fsdp_check(work: Path) -> dict:
    """The FSDP launcher config run for real: a few DPO updates of the tiny pipeline, 1 process."""
    import yaml

    sys.path.insert(0, str(REPO / "benchmarks"))
    from rehearse import data_runs

    work.mkdir(parents=True, exist_ok=True)
    data = data_runs(work, 32)
    r = yaml.safe_load((REPO / "rl" / "dpo-tiny.yaml").read_text())
    r.update(pretrained=str(work / "tiny-sd"), max_steps=3, eval_every=0, eval_prompts=[], logging_steps=1,
             save_steps=0, report_to=[])
    (work / "dpo.yaml").write_text(yaml.safe_dump(r))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "rl/accelerate-fsdp.yaml"),
           "--num_processes", "1", "-m", "vprefer", "rl", "dpo", "--recipe", str(work / "dpo.yaml"),
           "--data", str(data), "--out", str(work / "out")]
    t = time.time()
    subprocess.run(cmd, check=True, cwd=REPO)
    rows = [json.loads(x) for x in (work / "out" / "metrics.jsonl").read_text().splitlines()]
    times = [x["time"] for x in rows if "time" in x and "phase" not in x]
    per = (times[-1] - times[0]) / (len(times) - 1) if len(times) >= 2 else None
    return {"s_per_update": None if per is None else round(per, 3), "updates": len(times),
            "wall_s": round(time.time() - t, 1)}


# ------------------------------------------------------------------ running and recording
def versions() -> dict:
    """What ran: interpreter, libraries, GPU (imports torch, so it runs in a process of its own)."""
    import importlib.metadata as md
    import platform

    import torch

    pk = {}
    for n in ("torch", "transformers", "diffusers", "peft", "accelerate", "trl", "bitsandbytes", "polars",
              "pydantic", "openai", "orjson", "krippendorff", "safetensors", "numpy"):
        try:
            pk[n] = md.version(n)
        except md.PackageNotFoundError:
            pk[n] = None
    gpu = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        gpu = {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1), "count": torch.cuda.device_count()}
    return {"python": platform.python_version(), "packages": pk, "missing": [n for n, v in pk.items() if v is None],
            "cuda": torch.version.cuda, "gpu": gpu, "cpus": os.cpu_count(), "platform": platform.platform()}


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha, dirty = "", ""
    return (sha + (" (uncommitted changes)" if dirty else "")) if sha else os.environ.get("VPREFER_COMMIT", "unknown")


def install_wheels(folder: Path, work: Path) -> Path:
    """The wheels of ``folder``, or benchmarks/device_bundle.py's archive of them, unpacked in ``work/site``."""
    site, whl = work / "site", sorted(str(w) for w in folder.glob("*.whl"))
    if whl:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--upgrade", "--target", str(site), *whl], check=False)
    for arc in sorted(folder.glob("*.tar.xz")):
        with tarfile.open(arc) as tar:
            tar.extractall(work, filter="data")  # holds site/
    return site


def _die_with_parent() -> None:
    """A figure dies with this script even when it is killed outright (the device's limit)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


RUNNING: list[subprocess.Popen] = []


def _stop(signum, _frame) -> None:
    for p in RUNNING:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except OSError:
            pass
    sys.exit(128 + signum)


def run_figure(argv: list[str], env: dict, timeout: float, logs: Path, name: str, started=None) -> dict:
    """Run one figure in its own process group (killed as a whole on overrun) and read its last JSON line;
    ``started(pid)`` is called once it runs."""
    out, err = logs / f"{name}.out", logs / f"{name}.err"
    t0 = time.monotonic()
    with out.open("w") as o, err.open("w") as e:
        p = subprocess.Popen(argv, stdout=o, stderr=e, cwd=REPO, env=env, process_group=0,
                             preexec_fn=_die_with_parent)
        RUNNING.append(p)
        if started:
            started(p.pid)
        try:
            rc, status = p.wait(timeout=timeout), None
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            rc, status = None, "timeout"
        finally:
            RUNNING.remove(p)
    res = {"seconds": round(time.monotonic() - t0, 1), "returncode": rc}
    stdout, stderr = out.read_text(errors="replace"), err.read_text(errors="replace")
    lines = [x for x in stdout.splitlines() if x.startswith("{")]
    if status is None and rc == 0:
        try:
            res["values"], status = json.loads(lines[-1]), "ok"
        except (IndexError, json.JSONDecodeError):
            status, res["error"] = "failed", "no result line (a JSON object) on stdout"
    elif status is None:
        missing = re.findall(r"No module named '([\w.]+)'", stderr)
        status = "missing" if missing else "failed"
        tail = [x for x in stderr.strip().splitlines() if x.strip()][-12:]
        res["error"] = (f"missing module {missing[-1]}: install it or pass --wheels" if missing else "") + \
            ("\n" if missing else "") + "\n".join(tail)[-2000:]
    else:
        res["error"] = f"killed after its budget of {timeout:.0f} s"
    res["status"], res["stdout_tail"] = status, "\n".join(stdout.splitlines()[-8:])[-2000:]
    return res


def show(name: str, v: dict, results: dict) -> str:
    """The figure's values in a table cell; LoRA / 4-bit / SD 1.5 LoRA against their full fine-tune."""
    def ratio(base: str, key: str) -> str:
        b = results.get(base, {}).get("values", {}).get(key)
        return f" ({v[key] / b:.2f}x full)" if b and base != name else ""
    if name.startswith("score"):
        return (f"score {v['score_img_per_s']} img/s, bare {v['bare_img_per_s']} img/s, ratio {v['ratio']}; "
                f"one-at-a-time {v['loop_img_per_s']} img/s; preparing {v['prep_img_per_s']} img/s with "
                f"{v['workers']} threads ({v['prep_ratio']}x one)")
    if name.startswith("reward"):
        return (f"peak {v['peak_mib']} MiB{ratio('reward-full', 'peak_mib')}, {v['pairs_per_s']:.2f} pairs/s, "
                f"trainable {v['trainable']:,}")
    if name.startswith(("refl", "dpo")):
        base = re.sub(r"-lora$", "-full", name)
        return (f"{v['step_s'] * 1000:.0f} ms/update, peak {v['peak_mib']} MiB{ratio(base, 'peak_mib')}, "
                f"trainable {v['trainable']:,}")
    if name.startswith("flow"):
        return "; ".join(f"{loop.upper()} LoRA + ckpt {v[f'{loop}_lora_s']:.2f} s/update, peak "
                         f"{v[f'{loop}_lora_peak_mib']} MiB = **{v[f'{loop}_ratio']}x full** ({v[f'{loop}_full_s']:.2f} s, "
                         f"{v[f'{loop}_full_peak_mib']} MiB)" for loop in ("dpo", "refl") if f"{loop}_ratio" in v)
    if name == "annotate":
        cs = [k[1:-6] for k in v if re.fullmatch(r"c\d+_ratio", k)]
        return "; ".join(f"c{c}: {v[f'c{c}_rps']} req/s = {v[f'c{c}_ratio']} of the bound (bare sender "
                         f"{v[f'c{c}_bare_ratio']})" for c in cs) + \
            f"; pool 2 vs 1 server {v['pool_ratio']}x; {v['sequential_speedup']}x one at a time"
    if name.startswith("generate"):
        peak = f", peak {v['peak_gpu_mib']} MiB" if v.get("peak_gpu_mib") else ""
        return (f"{v['img_per_s']} img/s ({v['images']} images, batch {v['batch']}, {v['steps']} steps){peak}; "
                f"PNG + check {v['png_check_img_per_s']} img/s")
    return ", ".join(f"{k} {x}" for k, x in v.items() if isinstance(x, (int, float)))


def write(out: Path, doc: dict) -> None:
    """results.json and results.md, each replaced atomically (a run killed mid-write leaves the last ones)."""
    def put(path: Path, text: str) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)

    put(out / "results.json", json.dumps(doc, indent=1))
    v, gpu = doc.get("versions") or {}, (doc.get("versions") or {}).get("gpu")
    pk = v.get("packages", {})
    lines = [f"Prepared GPU run, {doc['started']}: `{doc['command']}`",
             f"on {gpu['name'] + ' (' + str(gpu['memory_gib']) + ' GiB)' if gpu else 'CPU (no GPU)'}, "
             f"{v.get('cpus', '?')} CPUs; Python {v.get('python', '?')}, torch {pk.get('torch')} (CUDA {v.get('cuda')}), "
             f"transformers {pk.get('transformers')}, diffusers {pk.get('diffusers')}, peft {pk.get('peft')}, "
             f"accelerate {pk.get('accelerate')}, bitsandbytes {pk.get('bitsandbytes')}; commit {doc['commit']}; "
             f"{doc['elapsed_s']} s of the {doc['budget_s']:.0f} s budget. "
             + ("--tiny: tiny models on CPU (checks the script, measures nothing)." if doc["tiny"] else
                "Full-size architectures, random weights."), "",
             "| figure | command | status | seconds (budget) | result |", "|---|---|---|---|---|"]
    for fig in doc["figures"]:
        r = doc["results"].get(fig["name"], {"status": "pending"})
        err = (r.get("error") or "").splitlines() or [""]
        cell = show(fig["name"], r["values"], doc["results"]) if r["status"] == "ok" else \
            (err[-1] if r["status"] == "failed" else err[0])[:200]
        lines.append(f"| {fig['name']} | `{fig['command']}` | {r['status']} | {r.get('seconds', '—')} "
                     f"({fig['budget']:.0f}) | {cell.replace('|', '/')} |")
    put(out / "results.md", "\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("helper", nargs="?", choices=["_build", "_fsdp", "_versions"], help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--tiny", action="store_true", help="tiny models on CPU: checks the script, not the GPU")
    ap.add_argument("--budget-s", type=float, help="the whole run (default 480; --tiny: 1800)")
    ap.add_argument("--only", help="comma-separated figure names (default: all, in order of importance)")
    ap.add_argument("--figure-budget", action="append", default=[], metavar="NAME=SECONDS",
                    help="another budget for one figure (repeatable)")
    ap.add_argument("--inject-failure", action="append", default=[], metavar="NAME",
                    help="give this figure a bad argument (checks that a failure is recorded and the rest run)")
    ap.add_argument("--wheels", type=Path, help="a folder of wheels to install for the figures (no network)")
    ap.add_argument("--cache", type=Path, help="offline HF cache (default .cache/rehearsal; --tiny: the work folder)")
    ap.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    a = ap.parse_args()
    if a.helper == "_versions":
        print(json.dumps(versions()))
        return
    if a.helper:
        res = build_cache(a.cache, a.tiny) if a.helper == "_build" else fsdp_check(a.work)
        print(json.dumps(res))
        return
    if a.out is None:
        ap.error("--out DIR is required")
    work = (a.work or Path(tempfile.mkdtemp(prefix="vprefer-device-"))).resolve()
    cache = (a.cache or (work / "cache" if a.tiny else REPO / ".cache" / "rehearsal")).resolve()
    figs = catalogue(cache, work, os.cpu_count() or 1)
    names = [f.name for f in figs]
    only = [x for x in (a.only or "").split(",") if x]
    budgets = dict(x.split("=", 1) for x in a.figure_budget)
    for n in [*only, *budgets, *a.inject_failure]:
        if n not in names:
            ap.error(f"unknown figure {n!r}; figures: {', '.join(names)}")
    figs = [f for f in figs if not only or f.name in only]
    total = a.budget_s or (1800.0 if a.tiny else 480.0)
    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _stop)
    t_start = time.monotonic()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    path = [str(REPO)]
    if a.wheels:
        path.insert(0, str(install_wheels(a.wheels, work)))
    env.update(PYTHONPATH=os.pathsep.join(path + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               PYTHONUNBUFFERED="1", TQDM_DISABLE="1", HF_HOME=str(cache), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1")
    if a.tiny:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the tiny rehearsal is a CPU run even on a GPU machine
    argv0 = "python benchmarks/device.py " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    rel = lambda cmd: " ".join(["python"] + [shlex.quote(x.replace(str(REPO) + "/", "")) for x in cmd[1:]])  # noqa: E731
    doc = {"command": argv0, "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "tiny": a.tiny,
           "budget_s": total, "commit": git_commit(), "versions": None, "elapsed_s": 0.0,
           "figures": [{"name": f.name, "what": f.what, "h200_budget": f.budget,
                        "budget": float(budgets.get(f.name, TINY_BUDGET if a.tiny else f.budget)),
                        "command": rel(f.tiny if a.tiny else f.full), "metric": f.metric} for f in figs],
           "results": {}}
    write(out, doc)
    v = run_figure([sys.executable, B + "device.py", "_versions"], env, VERSIONS_BUDGET, logs, "_versions")
    doc["versions"] = v.get("values") or {"error": v.get("error")}
    log = []
    for k, f in enumerate(figs):
        left = total - (time.monotonic() - t_start)
        own = doc["figures"][k]["budget"]
        cmd = list(f.tiny if a.tiny else f.full) + (["--no-such-option"] if f.name in a.inject_failure else [])
        if f.needs and doc["results"].get(f.needs, {}).get("status") != "ok":
            r = {"status": "skipped", "error": f"needs {f.needs}, which did not succeed", "seconds": 0.0}
        elif left < min(own, 10.0):
            r = {"status": "skipped", "error": f"the run's budget of {total:.0f} s is spent", "seconds": 0.0}
        else:
            def started(pid: int, name: str = f.name) -> None:
                doc["results"][name] = {"status": "running", "pid": pid}
                write(out, doc)

            r = run_figure(cmd, env, min(own, left), logs, f.name, started)
        r["command"] = rel(cmd)
        doc["results"][f.name] = r
        doc["elapsed_s"] = round(time.monotonic() - t_start, 1)
        write(out, doc)
        log.append(f"== {f.name}: {r['status']} ({r.get('seconds')} s)\n{r.get('stdout_tail', '')}\n{r.get('error', '')}\n")
        (out / "log.txt").write_text("\n".join(log))
        print(f"[{k + 1}/{len(figs)}] {f.name}: {r['status']} in {r.get('seconds')} s"
              + (f" - {(r.get('error') or '').splitlines()[0]}" if r["status"] != "ok" else ""), flush=True)
    bad = [n for n, r in doc["results"].items() if r["status"] != "ok"]
    print(f"{len(figs) - len(bad)}/{len(figs)} figures ok in {doc['elapsed_s']} s; results in {out}/results.md"
          + (f"; not ok: {', '.join(bad)}" if bad else ""))


if __name__ == "__main__":
    main()

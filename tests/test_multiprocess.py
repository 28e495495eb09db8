"""Multi-process runs on two CPU processes (gloo), started by ``torchrun`` as a launcher does: tested, not assumed.

``accelerate launch --cpu --num_processes 2`` starts one process in accelerate 1.15 (multi-CPU there means MPI),
so the tests use ``torchrun --nproc_per_node 2``; vprefer's entry points ask accelerate for CPU explicitly
(``vprefer.dist.state``), which makes the two processes one gloo job.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vprefer.testing.helpers import free_port

pytestmark = pytest.mark.slow  # each launch starts two Python processes

TORCHRUN = Path(sys.executable).parent / "torchrun"

def launch(args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    p = subprocess.run([str(TORCHRUN), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "vprefer", *args],
                       cwd=cwd, env=env, capture_output=True, text=True, timeout=500)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    return p


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from vprefer.ingest import ingest
    from vprefer.testing.synthetic import write_dataset, write_truth_pairs

    d = tmp_path_factory.mktemp("mp")
    ingest(write_dataset(d / "syn", 8, 3, size=32), d / "run")
    write_truth_pairs(d / "run")
    return d


def metrics(folder):
    return [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this Python")
def test_dpo_on_two_processes_stays_in_sync_writes_once_and_resumes(world):
    import yaml

    from vprefer.recipes import REPO

    r = yaml.safe_load((REPO / "rl" / "dpo-tiny.yaml").read_text())
    r.update(save_steps=2, eval_every=0)
    (world / "dpo.yaml").write_text(yaml.safe_dump(r))
    launch(["rl", "dpo", "--recipe", "dpo.yaml", "--data", "run", "--out", "o", "--max-steps", "4"], world)
    m = metrics(world / "o")
    after = [x for x in m if x.get("phase") == "after"]
    assert len(after) == 1, "metrics written by more than one process"
    assert after[0]["distributed/processes"] == 2 and after[0]["distributed/params_in_sync"] is True
    assert (world / "o" / "pytorch_lora_weights.safetensors").exists()
    # each rank draws its own noise and timesteps (seed + rank), and the logged loss is the mean over ranks
    steps = [x for x in m if "loss/dpo" in x]
    assert steps and all(len(set(x["per_rank"]["draw/noise"])) == 2 for x in steps)
    assert any(len(set(x["per_rank"]["draw/t"])) == 2 for x in steps)
    assert all(abs(x["loss/dpo"] - sum(x["per_rank"]["loss/dpo"]) / 2) < 1e-6 for x in steps)
    assert sorted(p.name for p in (world / "o" / "checkpoints" / "step-000002").glob("rng-rank*.json")) == \
        ["rng-rank0.json", "rng-rank1.json"]
    assert sorted(p.name for p in (world / "o" / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
    launch(["rl", "dpo", "--recipe", "dpo.yaml", "--data", "run", "--out", "o", "--max-steps", "6", "--resume"], world)
    m = metrics(world / "o")
    assert [x["step"] for x in m if x.get("phase") == "after"] == [4, 6]  # continued from update 4, not from 0
    assert [x for x in m if x.get("phase") == "after"][-1]["distributed/params_in_sync"] is True


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this Python")
def test_generate_splits_prompts_with_nothing_twice_or_missing(world):
    from vprefer.store import Run

    launch(["generate", "run", "--recipe", "rl/generators-tiny.yaml", "--limit", "6"], world)
    imgs = Run(world / "run").read("images").filter(__import__("polars").col("generator").str.starts_with("tiny"))
    keys = list(zip(imgs["prompt_id"], imgs["generator"], imgs["seed"]))
    assert len(keys) == len(set(keys)) == 6 * 2 * 2  # 6 prompts x 2 generators x 2 images, each exactly once


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this Python")
def test_train_reward_on_two_processes_writes_once_and_stays_in_sync(world):
    import yaml

    from vprefer.recipes import REPO

    r = yaml.safe_load((REPO / "reward" / "vp-score-tiny.yaml").read_text())
    r["backbone"]["name_or_path"] = str(world / "tiny-clip")
    r["training"].update(max_steps=3, save_steps=3, eval_steps=3, val_fraction=0.25)
    (world / "rm.yaml").write_text(yaml.safe_dump(r))
    p = launch(["train-reward", "--recipe", "rm.yaml", "--data", "run", "--out", "vps"], world)
    assert p.stdout.count("trained vp-score-tiny") == 1, p.stdout  # reported once, not once per process
    s = json.loads((world / "vps" / "train_summary.json").read_text())
    assert s["steps"] == 3 and s["distributed/processes"] == 2 and s["distributed/params_in_sync"] is True
    assert (world / "vps" / "vpscore_config.json").exists()
    assert [p.name for p in (world / "vps" / "checkpoints").glob("checkpoint-*")] == ["checkpoint-3"]


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this Python")
def test_refl_on_two_processes_stays_in_sync_writes_once_and_resumes(world):
    import yaml

    from vprefer.recipes import REPO
    from vprefer.reward.build import build
    from vprefer.reward.recipe import RewardRecipe
    from vprefer.testing.stand_ins import ensure_backbone

    rr = RewardRecipe.load("vp-score-tiny")
    rr.backbone.name_or_path = str(world / "tiny-clip-refl")
    ensure_backbone(rr)
    build(rr).save_pretrained(world / "reward")  # untrained: still a differentiable reward
    r = yaml.safe_load((REPO / "rl" / "refl-tiny.yaml").read_text())
    r.update(save_steps=2, eval_every=0)
    (world / "refl.yaml").write_text(yaml.safe_dump(r))
    (world / "p.txt").write_text("a red circle\na blue square\na green triangle\na yellow circle\n")
    args = ["rl", "refl", "--recipe", "refl.yaml", "--reward", "reward", "--prompts", "p.txt",
            "--pretrain-data", "run", "--out", "refl"]
    launch([*args, "--max-steps", "2"], world)
    after = [x for x in metrics(world / "refl") if x.get("phase") == "after"]
    assert len(after) == 1 and after[0]["distributed/processes"] == 2 and after[0]["distributed/params_in_sync"] is True
    assert (world / "refl" / "pytorch_lora_weights.safetensors").exists()
    launch([*args, "--max-steps", "4", "--resume"], world)
    after = [x for x in metrics(world / "refl") if x.get("phase") == "after"]
    assert [x["step"] for x in after] == [2, 4] and after[-1]["distributed/params_in_sync"] is True

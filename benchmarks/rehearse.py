"""Full-size rehearsal: every shipped recipe run unchanged, offline, on the real architectures.

    python benchmarks/rehearse.py build --cache .cache/rehearsal            # random weights, hub cache layout
    python benchmarks/rehearse.py run --cache .cache/rehearsal reward/vp-score-clip-lora.yaml --steps 2
    python benchmarks/rehearse.py run --cache .cache/rehearsal all --steps 1 --cpu-batch
    python benchmarks/rehearse.py run rl/refl-sdxl.yaml --steps 1 --cpu-batch --resolution 512 --rollout 8
    python benchmarks/rehearse.py run flow --steps 1 --cpu-batch --resolution 256 --rollout 4   # SD 3.5 M, FLUX

``build`` writes each architecture of ``benchmarks/hub_configs.yaml`` with random weights into
``CACHE/hub/models--ORG--NAME/snapshots/SHA`` (plus ``refs/main``), the layout ``huggingface_hub``
reads, so ``from_pretrained("ORG/NAME")`` under ``HF_HUB_OFFLINE=1`` resolves exactly as it does for
a user who downloaded the weights. ``run`` executes the vprefer command a recipe is for, in its own
process with ``HF_HOME=CACHE`` and ``HF_HUB_OFFLINE=1``, on a copy of the recipe whose only changes
are step counts (``max_steps``, sampling steps of the before/after grids, ``logging_steps`` so each
update is timed); ``--cpu-batch`` also sets the batch to 2 pairs (reward) or 1 (RL) and accumulation to one, said in the output,
because a full-size update at the recipe's batch takes many minutes on a 2-core CPU (GRPO: one group of 2
images, one inner epoch). A hub config's ``rehearsal`` key (T5-XXL and FLUX.1-dev's transformer with
fewer layers, see hub_configs.yaml) is what ``build`` makes smaller than the hub's. It prints seconds
per update (from the trainer's own log) and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "benchmarks" / "hub_configs.yaml"
CHARS = "abcdefghijklmnopqrstuvwxyz0123456789,.-'"


def snapshot(cache: Path, hub_id: str, spec: dict) -> Path:
    sha = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    repo = cache / "hub" / ("models--" + hub_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(sha)
    return repo / "snapshots" / sha


def clip_tokenizer(out: Path, spec: dict) -> None:
    """Char-level BPE vocabulary with CLIP's real special-token ids (49406/49407)."""
    from transformers import CLIPTokenizer

    out.mkdir(parents=True, exist_ok=True)
    vocab = {"!": 0}
    for c in CHARS:
        vocab.setdefault(c, len(vocab))
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = 49406, 49407
    (out / "vocab.json").write_text(json.dumps(vocab))
    (out / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(out / "vocab.json"), str(out / "merges.txt"), model_max_length=spec["model_max_length"],
                        pad_token=spec.get("pad", "<|endoftext|>"))
    tok.save_pretrained(out)


def t5_tokenizer(out: Path, spec: dict) -> None:
    """The tiny pipelines' character-level Unigram T5 tokenizer (built in memory; T5's pad/eos/unk ids 0/1/2)."""
    from vprefer.testing.tiny_pipelines import char_t5_tokenizer

    char_t5_tokenizer(spec["model_max_length"]).save_pretrained(out)


def reduced(spec: dict) -> dict:
    """The spec with its ``rehearsal`` reductions applied (each part's keys replace the hub config's)."""
    spec = {k: (dict(v) if isinstance(v, dict) else v) for k, v in spec.items()}
    for part, keys in (spec.pop("rehearsal", None) or {}).items():
        spec[part].update(keys)
    return spec


def words_tokenizer(out: Path, spec: dict) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    from transformers import PreTrainedTokenizerFast
    from vprefer.testing.synthetic import COLOURS, SHAPES
    from vprefer.testing.tiny_models import WORDS

    specials = spec["specials"]
    words = sorted(set(WORDS) | set(COLOURS) | set(SHAPES) | set(CHARS))
    start = max(specials.values()) + 1
    vocab = {**{w: start + i for i, w in enumerate(words)}, **specials}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=[k for k in specials if "unk" in k.lower()][0]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    names = {k.strip("[]<>/").lower(): k for k in specials}
    kw = {f"{role}_token": names[key] for role, key in (("pad", "pad"), ("unk", "unk"), ("cls", "cls"), ("sep", "sep"),
                                                         ("eos", "s")) if key in names}
    PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=spec["model_max_length"], **kw).save_pretrained(out)


def build_pipeline(snap: Path, spec: dict) -> None:
    import diffusers
    import torch
    import transformers

    if spec.get("rehearsal"):
        print(f"  reduced for the rehearsal: {json.dumps(spec['rehearsal'])}", flush=True)
    spec = reduced(spec)
    index = {"_class_name": spec["pipeline"], "_diffusers_version": diffusers.__version__}
    for part in ("text_encoder", "text_encoder_2", "text_encoder_3", "transformer", "unet", "vae"):
        if part not in spec:
            continue
        cfg = dict(spec[part])
        torch.manual_seed(0)
        if part.startswith("text_encoder"):
            cls = getattr(transformers, cfg.pop("class"))
            model = cls(cls.config_class(**cfg))
            index[part] = ["transformers", cls.__name__]
        else:
            cls = getattr(diffusers, cfg.pop("class", "UNet2DConditionModel" if part == "unet" else "AutoencoderKL"))
            model = cls(**cfg)
            index[part] = ["diffusers", cls.__name__]
        n = sum(p.numel() for p in model.parameters())
        model.save_pretrained(snap / part, safe_serialization=True)
        del model
        print(f"  {part}: {n / 1e6:.1f}M parameters, saved", flush=True)
    for part in ("tokenizer", "tokenizer_2", "tokenizer_3"):
        if part in spec:
            if spec[part]["kind"] == "t5":
                t5_tokenizer(snap / part, spec[part])
                index[part] = ["transformers", "T5TokenizerFast"]
            else:
                clip_tokenizer(snap / part, spec[part])
                index[part] = ["transformers", "CLIPTokenizer"]
    sch = dict(spec["scheduler"])
    cls = getattr(diffusers, sch.pop("class"))
    cls(**sch).save_pretrained(snap / "scheduler")
    index["scheduler"] = ["diffusers", cls.__name__]
    if spec["pipeline"] == "StableDiffusionPipeline":
        index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    elif spec["pipeline"] == "StableDiffusionXLPipeline":
        index["force_zeros_for_empty_prompt"] = True
    (snap / "model_index.json").write_text(json.dumps(index, indent=2))


def build_model(snap: Path, spec: dict) -> None:
    import torch
    import transformers

    cls = getattr(transformers, spec["model"])
    cfg_cls = getattr(transformers, spec["model"].replace("ForImageTextRetrieval", "Model").replace("Model", "Config"))
    torch.manual_seed(0)
    cls(cfg_cls(**spec["config"])).save_pretrained(snap, safe_serialization=True)
    (clip_tokenizer if spec["tokenizer"]["kind"] == "clip" else words_tokenizer)(snap, spec["tokenizer"])
    proc = dict(spec["image_processor"])
    getattr(transformers, proc.pop("class"))(**proc).save_pretrained(snap)


def build(cache: Path, only: list[str] | None) -> None:
    specs = yaml.safe_load(CONFIGS.read_text())
    for hub_id, spec in specs.items():
        if "/" not in hub_id or (only and hub_id not in only):  # YAML anchors (t5_xxl, flow_vae) are not hub ids
            continue
        snap = snapshot(cache, hub_id, spec)
        if (snap / ".complete").exists():
            print(f"{hub_id}: present")
            continue
        t = time.time()
        print(f"{hub_id}: building", flush=True)
        snap.mkdir(parents=True, exist_ok=True)
        (build_pipeline if "pipeline" in spec else build_model)(snap, spec)
        (snap / ".complete").write_text("")
        size = sum(f.stat().st_size for f in snap.rglob("*") if f.is_file()) / 2**30
        print(f"{hub_id}: {size:.1f} GiB in {time.time() - t:.0f} s", flush=True)


# ------------------------------------------------------------------ run
def override(recipe: dict, kind: str, steps: int, cpu_batch: bool, resolution: int | None = None,
             rollout: int | None = None) -> tuple[dict, list[str]]:
    """The recipe with only its step counts changed (and, with --cpu-batch, batch and accumulation; with
    --resolution the image size, with --rollout the ReFL rollout length: each printed with the result)."""
    r, changed = json.loads(json.dumps(recipe)), []

    def put(d: dict, k: str, v) -> None:
        if d.get(k) != v:
            changed.append(f"{k}={v}")
            d[k] = v

    if kind == "reward":
        t = r.setdefault("training", {})
        put(t, "max_steps", steps)
        put(t, "save_steps", steps)
        put(t, "eval_steps", 10 * steps)  # the validation pass runs once, after training, not inside the timing
        put(t, "dataloader_num_workers", 0)  # a data-loader pool is not what is measured
        if cpu_batch:
            put(t, "per_device_train_batch_size", 2)
            put(t, "gradient_accumulation_steps", 1)
    elif kind == "generate":
        for g in r["generators"]:
            put(g, "steps", steps)
            if resolution:
                put(g, "resolution", min(resolution, g["resolution"]))
        if cpu_batch:
            put(r, "batch_size", 1)
    else:
        put(r, "max_steps", steps)
        put(r, "save_steps", steps)
        put(r, "logging_steps", 1)
        put(r, "eval_steps_sampling", 2)
        put(r, "eval_prompts", r.get("eval_prompts", [])[:1])
        if cpu_batch:
            put(r, "per_device_train_batch_size", 1)
            put(r, "gradient_accumulation_steps", 1)
        if resolution:
            put(r, "resolution", resolution)
        if cpu_batch and kind == "grpo":  # the smallest group (2 images of one prompt), one inner epoch
            put(r, "group_size", 2)
            put(r, "groups_per_step", 1)
            put(r, "inner_epochs", 1)
        if rollout and kind == "grpo":
            put(r, "num_steps", rollout)
        if rollout and kind == "refl":  # the gradient window keeps its share of the rollout, at the same end
            n = r["num_steps"]
            put(r, "num_steps", rollout)
            put(r, "t_lo", round(r["t_lo"] * rollout / n))
            put(r, "t_hi", rollout - (n - r["t_hi"]))
    return r, changed


def data_runs(work: Path, size: int) -> Path:
    """A small synthetic run with images of ``size`` px and truth pairs (every recipe's data needs)."""
    run = work / f"data-{size}"
    if (run / "manifest.json").exists():
        return run
    from vprefer.ingest import ingest
    from vprefer.testing.synthetic import write_dataset, write_truth_pairs

    manifest = write_dataset(work / f"src-{size}", 4, 4, size=size)
    ingest(manifest, run)
    write_truth_pairs(run, annotator="gpt-4o")
    return run


def command(recipe_path: Path, kind: str, recipe: dict, work: Path, out: Path) -> list[str]:
    vp = [sys.executable, "-m", "vprefer"]
    data = data_runs(work, 256)
    if kind == "reward":
        return vp + ["train-reward", "--recipe", str(recipe_path), "--data", str(data), "--out", str(out)]
    if kind == "generate":
        return vp + ["generate", str(data), "--recipe", str(recipe_path), "--limit", "1"]
    if kind in ("refl", "grpo"):
        reward = work / "vp-score-clip-lora"
        if not (reward / "vpscore_config.json").exists():
            raise SystemExit(f"rehearse reward/vp-score-clip-lora.yaml first: ReFL and GRPO use its output {reward}")
        if kind == "grpo":
            return vp + ["rl", "grpo", "--recipe", str(recipe_path), "--reward", str(reward), "--prompts", str(data),
                         "--out", str(out)]
        return vp + ["rl", "refl", "--recipe", str(recipe_path), "--reward", str(reward), "--prompts", str(data),
                     "--pretrain-data", str(data), "--out", str(out)]
    return vp + ["rl", "dpo", "--recipe", str(recipe_path), "--data", str(data), "--out", str(out)]


def run_one(cache: Path, recipe_file: str, steps: int, cpu_batch: bool, work: Path,
            resolution: int | None = None, rollout: int | None = None) -> dict:
    path = (REPO / recipe_file) if not Path(recipe_file).exists() else Path(recipe_file)
    recipe = yaml.safe_load(path.read_text())
    kind = ("reward" if path.parent.name == "reward" else "generate" if "generators" in recipe
            else "refl" if "t_lo" in recipe else "grpo" if "group_size" in recipe else "dpo")
    r, changed = override(recipe, kind, steps, cpu_batch, resolution, rollout)
    tmp = work / "recipes" / path.name
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(yaml.safe_dump(r, sort_keys=False))
    out = work / path.stem
    env = {**os.environ, "HF_HOME": str(cache), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TQDM_DISABLE": "1"}
    cmd = command(tmp, kind, r, work, out)
    probe = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
             "print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")
    t = time.time()
    p = subprocess.run([sys.executable, "-c", probe, *cmd], env=env, cwd=REPO, capture_output=True, text=True)
    wall = time.time() - t
    peak = next((int(x.split()[1]) for x in p.stdout.splitlines() if x.startswith("PEAK_RSS_KIB")), 0)
    res = {"recipe": recipe_file, "kind": kind, "ok": p.returncode == 0, "wall_s": round(wall, 1),
           "peak_rss_gib": round(peak / 2**20, 2), "overrides": changed}
    log = out / "metrics.jsonl"
    if kind in ("refl", "dpo", "grpo") and log.exists():
        rows = [json.loads(x) for x in log.read_text().splitlines()]
        starts = [i for i, x in enumerate(rows) if x.get("phase") == "before"]
        rows = rows[starts[-1]:] if starts else rows  # this run's rows (an earlier, stopped one may precede)
        times = [x["time"] for x in rows if "phase" not in x or x.get("phase") == "before"]
        if len(times) >= 2:
            res["s_per_update"] = round((times[-1] - times[0]) / (len(times) - 1), 1)
    summary = out / "train_summary.json"
    if kind == "reward" and summary.exists():
        sm = json.loads(summary.read_text())
        if sm.get("train_runtime_s"):
            res["s_per_update"] = round(sm["train_runtime_s"] / max(1, sm["steps"]), 1)
        res["trainable_params"], res["total_params"] = sm["trainable_params"], sm["total_params"]
    if not res["ok"]:
        res["error"] = (p.stderr.strip().splitlines() or ["?"])[-1][:400]
        (work / f"{path.stem}.stderr.txt").write_text(p.stderr)
    return res


ALL = ["reward/vp-score-clip-lora.yaml", "reward/vp-score-blip.yaml", "reward/vp-score-siglip-qlora.yaml",
       "rl/dpo-sd15.yaml", "rl/refl-sd15.yaml", "rl/dpo-sdxl.yaml", "rl/refl-sdxl.yaml",
       "rl/generators-visionprefer.yaml"]
FLOW = ["rl/dpo-sd35m.yaml", "rl/refl-sd35m.yaml", "rl/grpo-sd35m.yaml", "rl/dpo-flux-dev.yaml", "rl/refl-flux-dev.yaml",
        "rl/grpo-flux-dev.yaml", "rl/generators-flow.yaml"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write the architectures with random weights into the cache")
    b.add_argument("--cache", type=Path, default=REPO / ".cache" / "rehearsal")
    b.add_argument("--only", nargs="*", help="hub ids to build (default: all)")
    r = sub.add_parser("run", help="run recipes against the cache, offline")
    r.add_argument("recipes", nargs="+", help="recipe files, 'all' (reward, SD, SDXL) or 'flow' (SD 3.5 M, FLUX)")
    r.add_argument("--cache", type=Path, default=REPO / ".cache" / "rehearsal")
    r.add_argument("--work", type=Path, default=None, help="outputs (default: a temporary folder)")
    r.add_argument("--steps", type=int, default=2)
    r.add_argument("--cpu-batch", action="store_true", help="reward: batch 2, RL: batch 1; no accumulation (CPU)")
    r.add_argument("--resolution", type=int, help="RL: train at this size; generate: at most this size (CPU)")
    r.add_argument("--rollout", type=int, help="ReFL: scheduler steps of the rollout (the gradient window "
                                              "keeps its share, at the end); GRPO: its rollout's num_steps")
    a = ap.parse_args()
    if a.cmd == "build":
        build(a.cache.resolve(), a.only)
        return
    recipes = {"all": ALL, "flow": FLOW}.get(a.recipes[0], a.recipes) if len(a.recipes) == 1 else a.recipes
    work = a.work or Path(tempfile.mkdtemp(prefix="rehearse-"))
    work.mkdir(parents=True, exist_ok=True)
    for rf in recipes:
        res = run_one(a.cache.resolve(), rf, a.steps, a.cpu_batch, work.resolve(), a.resolution, a.rollout)
        print(json.dumps(res), flush=True)
    print(f"peak RSS: max resident set of the command's process; machine: {os.cpu_count()} CPUs, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB")


if __name__ == "__main__":
    main()

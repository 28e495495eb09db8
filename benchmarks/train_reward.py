"""VP-Score training cost: pairs/s and peak memory, full fine-tune vs LoRA vs 4-bit LoRA (QLoRA).

Each variant runs in its own process (so peak memory is its own) on a mid-size
random CLIP (6 layers, 384 wide, 224 px) and the synthetic world. Peak memory
is the process's max RSS on CPU (and, separately, the peak while training alone, less the libraries'
resident memory: what the variant changes), ``torch.cuda.max_memory_allocated`` on GPU. On CPU,
``--allocator returning`` tells glibc to give freed blocks back, so the peak is the memory training holds;
with glibc's defaults (what the trainer gets) much of LoRA's peak is memory freed and kept for reuse.
Also runs the learning check at a larger size when ``--learning`` is given.

    python benchmarks/train_reward.py [--steps 12] [--batch 8] [--learning]
    HF_HOME=.cache/rehearsal HF_HUB_OFFLINE=1 python benchmarks/train_reward.py \
        --backbone openai/clip-vit-large-patch14 --steps 2 --batch 4     # full size (benchmarks/rehearse.py build)
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _variants import run_variants  # noqa: E402

VARIANTS = {"full": dict(lora=False, quant="none"), "lora": dict(lora=True, quant="none"),
            "qlora-4bit": dict(lora=True, quant="4bit")}


def _status_mib(key: str) -> float | None:
    """A memory line of ``/proc/self/status`` in MiB (``VmHWM``: peak resident since the last reset; ``VmRSS``)."""
    try:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(key + ":"))
    except (OSError, StopIteration):
        return None
    return int(line.split()[1]) / 1024


def _train_phase_peak() -> dict:
    """Patch the trainer so the peak is also read for training alone: on CPU the process peak may come from
    loading the checkpoint, which no variant changes. Linux resets
    ``VmHWM`` when ``5`` is written to ``/proc/self/clear_refs``; the training peak still holds the weights."""
    from vprefer.reward.trainer import VPScoreTrainer

    out, train = {}, VPScoreTrainer.train

    def wrapped(self, *a, **k):
        import gc

        gc.collect()
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            return train(self, *a, **k)
        r = train(self, *a, **k)
        out["train_peak_mib"] = _status_mib("VmHWM")
        return r

    VPScoreTrainer.train = wrapped
    return out


def one(variant: str, steps: int, batch: int, tmp: Path, backbone: str | None = None) -> dict:
    import torch

    from vprefer.ingest import ingest
    from vprefer.reward.recipe import RewardRecipe
    from vprefer.testing.tiny_models import make_tiny_backbone
    from vprefer.reward.train import train_reward
    from vprefer.testing.synthetic import write_dataset, write_truth_pairs

    v = VARIANTS[variant]
    ingest(write_dataset(tmp / "syn", 60 if backbone is None else 8, 4, size=64), tmp / "run")
    write_truth_pairs(tmp / "run")
    if backbone is None:
        make_tiny_backbone("clip", tmp / "bb", hidden=384, layers=6, image_size=224, patch=16, proj=256)
    r = RewardRecipe.load("vp-score-tiny")
    r.backbone.name_or_path, r.backbone.tiny = backbone or str(tmp / "bb"), None
    r.training.gradient_checkpointing = backbone is not None  # as the full-size recipes do
    r.lora.enabled, r.quantization = v["lora"], v["quant"]
    r.training.max_steps, r.training.per_device_train_batch_size, r.training.val_fraction = steps, batch, 0.0
    r.training.logging_steps, r.training.save_steps = 10_000, 10_000
    phase = _train_phase_peak()
    import gc

    gc.collect()
    libs = _status_mib("VmRSS")  # libraries and data, before any model exists
    t0 = time.perf_counter()
    s = train_reward(r, [tmp / "run"], tmp / "out")
    el = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available()
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"variant": variant, "pairs_per_s": s["train_pairs_per_s"], "peak_mib": round(peak),
            "wall_s": round(el, 1), "trainable": s["trainable_params"], "state_mib": s["train_state_mib"],
            "train_peak_mib": None if torch.cuda.is_available() else phase.get("train_peak_mib"),
            "libs_mib": libs}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--backbone", help="a hub id or folder instead of the mid-size random CLIP")
    ap.add_argument("--learning", action="store_true", help="also run the larger learning check")
    ap.add_argument("--allocator", choices=["glibc", "returning"], default="glibc",
                    help="CPU only. glibc (default, what `vprefer train-reward` gets): its defaults, which keep "
                         "freed memory for reuse (on CLIP-L LoRA 2.5 GB of the peak); returning: glibc hands every "
                         "freed block over 128 KiB back to the system (MALLOC_MMAP_THRESHOLD_=131072), so peak "
                         "RSS is the memory training holds (slightly slower)")
    a = ap.parse_args()
    if a.variant:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(one(a.variant, a.steps, a.batch, Path(tmp), a.backbone)))
        return
    import torch

    env = {"MALLOC_MMAP_THRESHOLD_": "131072"} if a.allocator == "returning" and not torch.cuda.is_available() else {}
    print(f"allocator: {a.allocator} {env or '(glibc defaults)'}")
    rows = run_variants(__file__, VARIANTS, ["--steps", str(a.steps), "--batch", str(a.batch)]
                        + (["--backbone", a.backbone] if a.backbone else []), env)
    base = next((r for r in rows if r["variant"] == "full"), None)
    for r in rows:
        rel = (f" | vs full: {r['pairs_per_s'] / base['pairs_per_s']:.2f}x pairs/s, "
               f"{r['state_mib'] / base['state_mib']:.2f}x training state") if base else ""
        if base:
            rel += f", {r['peak_mib'] / base['peak_mib']:.2f}x peak memory"
            if r.get("train_peak_mib") and base.get("train_peak_mib"):
                rel += (f", {(r['train_peak_mib'] - r['libs_mib']) / (base['train_peak_mib'] - base['libs_mib']):.2f}x "
                        "peak while training, libraries left out")
        tp = (f" (training alone {r['train_peak_mib']:.0f} MiB, of which libraries {r['libs_mib']:.0f})"
              if r.get("train_peak_mib") else "")
        print(f"{r['variant']:>11}: {r['pairs_per_s']:.2f} pairs/s, peak RSS {r['peak_mib']} MiB{tp}, "
              f"trainable {r['trainable']:,} params, weights+grads+Adam {r['state_mib']} MiB{rel}")
    if a.learning:
        learning()


def learning() -> None:
    from vprefer.ingest import ingest
    from vprefer.reward import VPScore
    from vprefer.reward.evaluate import evaluate_run
    from vprefer.reward.recipe import RewardRecipe
    from vprefer.reward.train import train_reward
    from vprefer.testing.stand_ins import ensure_backbone
    from vprefer.testing.synthetic import write_dataset, write_truth_pairs

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, n, seed in (("train", 600, 0), ("held", 150, 11)):
            ingest(write_dataset(tmp / f"syn-{name}", n, 4, size=32, seed=seed), tmp / name)
            write_truth_pairs(tmp / name)
        r = RewardRecipe.load("vp-score-tiny")
        r.backbone.name_or_path = str(tmp / "tiny")
        ensure_backbone(r)
        r.training.val_fraction, r.training.logging_steps = 0.0, 10_000
        s = train_reward(r, [tmp / "train"], tmp / "m")
        rep = evaluate_run(VPScore.from_pretrained(tmp / "m"), tmp / "held", annotator="truth", n_boot=200)
    print(f"learning check: {s['train_pairs']} training pairs at {s['train_pairs_per_s']:.0f} pairs/s; held-out accuracy:")
    for a in rep["aspects"]:
        if a["pairs"] > a["gold_ties"]:
            print(f"  {a['aspect']:>16}: {a['acc_skip_ties']:.3f} [{a['ci_skip_lo']:.3f}, {a['ci_skip_hi']:.3f}]")


if __name__ == "__main__":
    main()

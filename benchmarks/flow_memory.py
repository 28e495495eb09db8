"""SD 3.5 Medium: peak memory of a Diffusion-DPO and a ReFL update with LoRA + gradient checkpointing ÷ full
fine-tuning (issue 30's goal: <= 0.4), and seconds per update, measured in one run.

    python benchmarks/flow_memory.py --arch sd35m-cpu --steps 1      # CPU: fewer layers, 256 px (see below)
    python benchmarks/flow_memory.py --arch sd35m --steps 1          # a GPU: the real SD 3.5 Medium, 512 px, bf16
    python benchmarks/flow_memory.py --arch tiny-sd3 --steps 1       # the script itself, in seconds

The approach of the SD 1.5 figures (``benchmarks/refl_step.py`` / ``dpo_step.py``, harness ``rl_steps.py``):
the architecture of ``benchmarks/hub_configs.yaml`` with random weights, made in memory, each variant in a
process of its own so its peak is its own (``torch.cuda.max_memory_allocated`` on a GPU, the process's peak
RSS on a CPU), one warm-up update, then ``--steps`` timed ones at batch 1 (a pair for DPO), rollouts without
CFG. On a GPU: the pipeline in bf16 (T5-XXL whole), trainable weights in fp32, the recipes' LoRA targets at
the harness's r; ReFL's rollout 40 steps with the gradient at 30-39. ``sd35m-cpu`` (24 GB, fp32): the
transformer's first 4 of its 24 layers, T5-XXL 2 of 24 layers (real widths), 256 px, a 10-step ReFL rollout
with the gradient at 7-9: the frozen text encoders then weigh more against the transformer than on a GPU,
which pushes the CPU ratio up.

Prints one line per variant and a JSON line (the last on stdout) with the ratios.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _variants import run_variants  # noqa: E402

VARIANTS = ["lora+ckpt", "full"]
GOAL = 0.4


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="sd35m-cpu", choices=["sd35m", "sd35m-cpu", "tiny-sd3"])
    ap.add_argument("--steps", type=int, default=1, help="timed updates per variant (after one warm-up)")
    ap.add_argument("--loops", default="dpo,refl")
    a = ap.parse_args()
    out = {"arch": a.arch, "steps": a.steps, "goal": GOAL}
    for loop in a.loops.split(","):
        rows = {r["variant"]: r for r in run_variants(str(HERE / f"{loop}_step.py"), VARIANTS,
                                                      ["--arch", a.arch, "--steps", str(a.steps)])}
        for v, r in rows.items():
            print(f"{loop} {v:>9}: {r['step_s']:8.2f} s/update, peak {r['peak_mib']:7d} MiB, "
                  f"trainable {r['trainable']:,}", flush=True)
            out[f"{loop}_{v.split('+')[0]}_s"] = round(r["step_s"], 3)
            out[f"{loop}_{v.split('+')[0]}_peak_mib"] = r["peak_mib"]
            out[f"{loop}_{v.split('+')[0]}_trainable"] = r["trainable"]
            out["resolution"] = r.get("resolution")
            if "rollout" in r:
                out["refl_rollout"] = r["rollout"]
        if len(rows) == 2:
            ratio = rows["lora+ckpt"]["peak_mib"] / rows["full"]["peak_mib"]
            out[f"{loop}_ratio"] = round(ratio, 3)
            print(f"{loop}: LoRA + checkpointing ÷ full = {ratio:.3f} of the peak memory "
                  f"(goal <= {GOAL}: {'met' if ratio <= GOAL else 'not met'})", flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()

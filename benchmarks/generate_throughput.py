"""Generation throughput: images/s of the diffusers call ``vprefer generate`` makes, and what storing costs.

``generate()`` calls the pipeline with a batch of prompts, one CPU generator per seed, the recipe's steps,
guidance and resolution, then encodes each image as PNG and checks it before storing. This times that
call at full size with random weights (the pipeline in fp16 on a GPU, as ``load_generator`` loads it;
SDXL's VAE kept in fp32 as there), after one warm-up batch, and the PNG encoding + check per image apart,
since on a GPU the CPU side is what could bound a long generation run.

    python benchmarks/generate_throughput.py [--arch tiny|sd15|sdxl] [--n 16] [--batch 8] [--steps 30]

One JSON line last (for ``benchmarks/device.py``).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

DEFAULTS = {"tiny": 32, "sd15": 512, "sdxl": 1024}  # each generator's resolution in the shipped recipe


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="tiny", choices=list(DEFAULTS))
    ap.add_argument("--n", type=int, default=16, help="images timed (after one warm-up batch)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=30, help="sampling steps (the generators recipe: 30)")
    ap.add_argument("--guidance", type=float, default=7.5)
    a = ap.parse_args()
    from rl_steps import build_pipe

    from vprefer.diffusion import upcast_vae
    from vprefer.images import check_bytes

    gpu = torch.cuda.is_available()
    res = DEFAULTS[a.arch]
    with tempfile.TemporaryDirectory() as tmp:
        pipe = build_pipe(a.arch, Path(tmp) / "pipe")
        if gpu:
            pipe.to(torch.float16)
            upcast_vae(pipe)
        pipe.set_progress_bar_config(disable=True)

        def batch(k: int, steps: int):
            gens = [torch.Generator("cpu").manual_seed(s) for s in range(k)]
            return pipe(["a red bicycle leaning against a brick wall"] * k, num_inference_steps=steps,
                        guidance_scale=a.guidance, height=res, width=res, generator=gens).images

        batch(a.batch, 2)  # warm-up: kernels, allocator
        if gpu:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0, images = time.perf_counter(), []
        for i in range(0, a.n, a.batch):
            images += batch(min(a.batch, a.n - i), a.steps)
        if gpu:
            torch.cuda.synchronize()
        gen_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for k, im in enumerate(images):
            buf = io.BytesIO()
            im.save(buf, format="PNG")
            check_bytes(buf.getvalue(), f"image {k}")
        store_s = time.perf_counter() - t0
    row = {"arch": a.arch, "resolution": res, "steps": a.steps, "batch": a.batch, "images": len(images),
           "img_per_s": round(len(images) / gen_s, 3), "png_check_img_per_s": round(len(images) / store_s, 1),
           "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20) if gpu else None,
           "device": torch.cuda.get_device_name() if gpu else "CPU"}
    print(f"{a.arch} at {res} px, {a.steps} steps, guidance {a.guidance}, batch {a.batch}: {row['img_per_s']} img/s "
          f"({len(images)} images); PNG encoding + check {row['png_check_img_per_s']} img/s on one core")
    print(json.dumps(row))


if __name__ == "__main__":
    main()

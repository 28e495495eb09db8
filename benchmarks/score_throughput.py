"""VPScore.score throughput vs the bare backbone forward at the same batch, and vs a one-image loop.

Ratio 1 = ``score`` images/s / bare backbone forward images/s (preprocessing of
already-decoded images included in ours; target >= 0.9). Ratio 2 = ``score``
vs calling it one image at a time — the ImageReward/HPSv2 inference pattern.
Ratio 3 = preparing the pixels alone (``pixel_batches``) with one thread per
core vs one thread: on a GPU, preparation is what bounds ``score``.

    python benchmarks/score_throughput.py [--arch clip-tiny|clip-mid|clip-l|blip-l] [--n 256] [--batch 32]

On CPU the default is a mid-size random CLIP (random weights are fine for timing);
``--arch clip-l`` / ``blip-l`` build the full-size architectures from configs (GPU).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from vprefer.reward.model import VPScore, default_workers, load_backbone
from vprefer.testing.tiny_models import make_tiny_backbone

ARCH = {"clip-tiny": ("clip", dict(hidden=32, layers=2, image_size=32, patch=8, proj=16)),
        "clip-mid": ("clip", dict(hidden=384, layers=6, image_size=224, patch=16, proj=256)),
        "clip-l": ("clip", dict(hidden=1024, layers=24, image_size=224, patch=14, proj=768)),
        "blip-l": ("blip", dict(hidden=1024, layers=24, image_size=384, patch=16, proj=256))}


def build(arch: str, folder: Path) -> VPScore:
    kind, kw = ARCH[arch]
    make_tiny_backbone(kind if kind == "blip" else "clip", folder, **kw)
    dtype = torch.bfloat16 if torch.cuda.is_available() else None
    bb, tok, proc = load_backbone(kind, str(folder), dtype=dtype)
    m = VPScore(bb, tok, proc, kind=kind, base=str(folder), aspects=["prompt_following", "aesthetics", "fidelity",
                                                                     "harmlessness", "overall"])
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    return m.to(dev).eval()


def timed(fn, reps: int = 5) -> float:
    fn()  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="clip-mid", choices=list(ARCH))
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--loop-sample", type=int, default=16)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        m = build(a.arch, Path(tmp) / "bb")
        size = m.pixel_size
        images = [Image.new("RGB", (size[1] + 32, size[0] + 32), (i % 255, 80, 160)) for i in range(a.n)]
        prompts = ["a red circle on a plain background"] * a.n
        dtype = next(p.dtype for p in m.backbone.parameters())
        px = m.image_processor(images=images[: a.batch], return_tensors="pt")["pixel_values"].to(m.device, dtype)
        ids, mask = m.tokenize(prompts[: a.batch], m.device)

        @torch.inference_mode()
        def bare():
            for _ in range(0, a.n, a.batch):
                if m.kind == "blip":
                    m.backbone.vision_model(pixel_values=px)
                else:
                    m.backbone.get_image_features(pixel_values=px)
                    m.backbone.get_text_features(input_ids=ids, attention_mask=mask)

        t_bare = timed(bare)
        t_ours = timed(lambda: m.score(prompts, images, batch_size=a.batch))
        k = a.loop_sample
        t_loop = timed(lambda: [m.score(prompts[i:i + 1], images[i:i + 1]) for i in range(k)], reps=1) * a.n / k
        # preparing the pixels alone: the default thread pool vs one thread (what bounds score() on a GPU)
        t_prep1 = timed(lambda: list(m.pixel_batches(images, a.batch, workers=1)))
        t_prepn = timed(lambda: list(m.pixel_batches(images, a.batch)))
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"{a.arch} on {dev}, {a.n} images, batch {a.batch}")
    print(f"VPScore.score: {a.n / t_ours:.1f} img/s; bare backbone forward: {a.n / t_bare:.1f} img/s; "
          f"one-at-a-time loop: {a.n / t_loop:.1f} img/s")
    print(f"preparing pixels: {a.n / t_prepn:.1f} img/s with {default_workers()} threads, "
          f"{a.n / t_prep1:.1f} img/s with one; ratio {t_prep1 / t_prepn:.2f}x")
    print(f"ratio score/bare = {t_bare / t_ours:.3f} (target >= 0.9); speed-up vs one-at-a-time = {t_loop / t_ours:.1f}x")
    print(json.dumps({"arch": a.arch, "device": dev, "n": a.n, "batch": a.batch, "score_img_per_s": round(a.n / t_ours, 1),
                      "bare_img_per_s": round(a.n / t_bare, 1), "ratio": round(t_bare / t_ours, 3),
                      "loop_img_per_s": round(a.n / t_loop, 1), "speedup_vs_loop": round(t_loop / t_ours, 1),
                      "prep_img_per_s": round(a.n / t_prepn, 1), "workers": default_workers(),
                      "prep_ratio": round(t_prep1 / t_prepn, 2)}))  # for benchmarks/device.py


if __name__ == "__main__":
    main()

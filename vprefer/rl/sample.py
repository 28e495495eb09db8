"""Before/after sampling: the same prompts and seeds, with the LoRA off and on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from vprefer.diffusion import grid, load_pipeline
from vprefer.errors import InputError


@torch.no_grad()
def before_after(lora_dir: str | Path, prompts: Sequence[str], out: str | Path, *, base: str | None = None,
                 steps: int = 30, guidance: float = 7.5, seed: int = 0, resolution: int | None = None) -> dict:
    lora_dir, out = Path(lora_dir), Path(out)
    meta = json.loads((lora_dir / "vprefer_rl.json").read_text()) if (lora_dir / "vprefer_rl.json").exists() else {}
    base = base or meta.get("pretrained")
    if base is None:
        raise InputError(f"{lora_dir} does not say which base pipeline it was trained on; pass --base")
    res = resolution or meta.get("resolution", 512)
    pipe = load_pipeline(base, device="cuda" if torch.cuda.is_available() else "cpu")

    def run():
        g = torch.Generator("cpu").manual_seed(seed)
        return pipe(list(prompts), num_inference_steps=steps, guidance_scale=guidance, height=res, width=res,
                    generator=g, output_type="pt").images.float().clamp(0, 1)

    before = run()
    pipe.load_lora_weights(str(lora_dir))
    after = run()
    out.mkdir(parents=True, exist_ok=True)
    cols = min(4, len(prompts))
    up = max(1, 128 // res)  # tiny test images are upscaled (nearest) so a person can see them

    def save(t: torch.Tensor, c: int, name: str) -> None:
        g = grid(t, c)
        g.resize((g.width * up, g.height * up), resample=0).save(out / name)

    save(before, cols, "before.png")
    save(after, cols, "after.png")
    save(torch.cat([before, after]), len(prompts), "before_after.png")
    return {"before": out / "before.png", "after": out / "after.png", "pair": out / "before_after.png",
            "changed": float((after - before).abs().mean())}

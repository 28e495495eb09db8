"""Shared timing harness for benchmarks/refl_step.py and benchmarks/dpo_step.py."""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from _variants import run_variants

VARIANTS = [("lora", True, False), ("lora+ckpt", True, True), ("full", False, False), ("full+ckpt", False, True)]




SD35M = "stabilityai/stable-diffusion-3.5-medium"
# SD 3.5 Medium on a 24 GB CPU machine in fp32 (full fine-tuning's AdamW state included): the transformer's first
# 4 of 24 layers (all four with its dual attention, as the real layers 0-12) and T5-XXL's 2 of 24 layers, both
# at their real widths; CLIP-L, CLIP-G and the VAE whole.
SD35M_CPU = {"transformer": {"num_layers": 4, "dual_attention_layers": [0, 1, 2, 3]}, "text_encoder_3": {"num_layers": 2}}
ARCHS = ["tiny", "tiny-sdxl", "tiny-sd3", "sd15", "sdxl", "sd35m", "sd35m-cpu"]


def build_pipe(arch: str, folder: Path):
    from vprefer.diffusion import load_pipeline
    from vprefer.testing.tiny_pipelines import make_tiny_sd, make_tiny_sd3, make_tiny_sdxl

    if arch.startswith("tiny"):
        {"tiny": make_tiny_sd, "tiny-sdxl": make_tiny_sdxl, "tiny-sd3": make_tiny_sd3}[arch](folder)
        return load_pipeline(str(folder), device="cuda" if torch.cuda.is_available() else "cpu")
    if arch == "sdxl":
        return sdxl_pipe(folder)
    if arch.startswith("sd35m"):
        return sdxl_pipe(folder, SD35M, SD35M_CPU if arch == "sd35m-cpu" else None)
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from vprefer.testing.tiny_pipelines import make_tiny_sd as _tok_source

    _tok_source(folder / "tok")  # reuse its local tokenizer files
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(folder / "tok", subfolder="tokenizer")
    te = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=768, intermediate_size=3072,
                                      num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77))
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # the defaults are SD 1.x's UNet
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2, sample_size=512)
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=te, tokenizer=tok,
                                   scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                                           beta_end=0.012, clip_sample=False, steps_offset=1),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return pipe.to("cuda" if torch.cuda.is_available() else "cpu", dtype)


def sdxl_pipe(folder: Path, hub_id: str = "stabilityai/stable-diffusion-xl-base-1.0", reduce: dict | None = None):
    """The architecture ``hub_id`` of ``benchmarks/hub_configs.yaml`` (SDXL base, SD 3.5 Medium) with random
    weights, made in memory (on the GPU when there is one: writing and reading back its fp32 weights would take
    longer than the updates timed), in bf16 there, with the rehearsal's char-level tokenizers. ``reduce``
    replaces config keys per part (fewer layers on a CPU), and is printed; the hub config's own ``rehearsal``
    reductions apply only on a CPU (on a GPU, T5-XXL is built whole)."""
    import diffusers
    import transformers
    import yaml

    from rehearse import CONFIGS, clip_tokenizer, t5_tokenizer

    spec = yaml.safe_load(CONFIGS.read_text())[hub_id]
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    cuts = {} if dev == "cuda" else dict(spec.get("rehearsal") or {})
    for part, keys in (reduce or {}).items():
        cuts[part] = {**cuts.get(part, {}), **keys}
    spec.pop("rehearsal", None)
    for part, keys in cuts.items():
        spec[part] = {**spec[part], **keys}
    if cuts:
        print(f"reduced: {json.dumps(cuts)}", file=sys.stderr)
    parts = {}
    with torch.device(dev):
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3", "transformer", "unet", "vae"):
            if name not in spec:
                continue
            cfg = dict(spec[name])
            if name.startswith("text_encoder"):
                cls = getattr(transformers, cfg.pop("class"))
                parts[name] = cls(cls.config_class(**cfg))
                if dev == "cuda":  # frozen: bf16 before the next part is built (T5-XXL is 19 GB in fp32)
                    parts[name].to(torch.bfloat16)
            else:
                cls = getattr(diffusers, cfg.pop("class", "UNet2DConditionModel" if name == "unet" else "AutoencoderKL"))
                parts[name] = cls(**cfg)
    for name in ("tokenizer", "tokenizer_2", "tokenizer_3"):
        if name in spec:
            if spec[name]["kind"] == "t5":
                t5_tokenizer(folder / name, spec[name])
                parts[name] = transformers.T5TokenizerFast.from_pretrained(folder / name)
            else:
                clip_tokenizer(folder / name, spec[name])
                parts[name] = transformers.CLIPTokenizer.from_pretrained(folder / name)
    sch = dict(spec["scheduler"])
    parts["scheduler"] = getattr(diffusers, sch.pop("class"))(**sch)
    pipe = getattr(diffusers, spec["pipeline"])(**parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(dev, torch.bfloat16 if torch.cuda.is_available() else torch.float32)


def run_variant(loop: str, arch: str, variant: str, steps: int) -> dict:
    from vprefer.rl import DiffusionDPOConfig, DiffusionDPOTrainer, ReFLConfig, ReFLTrainer
    from vprefer.testing.toy_rewards import RednessReward

    _, lora, ckpt = next(v for v in VARIANTS if v[0] == variant)
    tiny = arch.startswith("tiny")
    res = 32 if tiny else 1024 if arch == "sdxl" else 256 if arch == "sd35m-cpu" else 512
    # rollout of the ReFL update: 40 steps, gradient at 30-39 (the recipes'); tiny and the CPU SD 3.5 M: 10, at 7-9
    n, lo, hi = (10, 6, 9) if tiny else (10, 7, 9) if arch == "sd35m-cpu" else (40, 30, 39)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pipe = build_pipe(arch, tmp / "pipe")
        common = dict(output_dir=str(tmp / "out"), pretrained=str(tmp / "pipe"), resolution=res, max_steps=steps,
                      use_lora=lora, gradient_checkpointing=ckpt, learning_rate=1e-4, per_device_train_batch_size=2 if tiny else 1,
                      eval_prompts=[], logging_steps=1, save_steps=0, report_to=[], bf16=torch.cuda.is_available())
        if loop == "refl":
            cfg = ReFLConfig(**common, num_steps=n, t_lo=lo, t_hi=hi, train_guidance_scale=1.0,
                             reward_aspects={"redness": 1.0})
            tr = ReFLTrainer(cfg, pipe=pipe, prompts=["a red cube"], reward=RednessReward())
        else:
            for k in range(4):
                Image.new("RGB", (res, res), (220, 20 * k, 20)).save(tmp / f"w{k}.png")
                Image.new("RGB", (res, res), (20, 20 * k, 220)).save(tmp / f"l{k}.png")
            pairs = [{"prompt": "a square", "win": str(tmp / f"w{k}.png"), "lose": str(tmp / f"l{k}.png"), "margin": 1.0}
                     for k in range(4)]
            tr = DiffusionDPOTrainer(DiffusionDPOConfig(**common, beta=5000.0), pipe=pipe, pairs=pairs)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        tr.update()  # warm-up
        t0 = time.perf_counter()
        for _ in range(steps):
            tr.update()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / steps
        peak = (torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available()
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        trainable = sum(p.numel() for p in tr.params)
    return {"variant": variant, "step_s": dt, "peak_mib": round(peak), "trainable": trainable,
            "resolution": res, **({"rollout": [n, lo, hi]} if loop == "refl" else {})}


def main(loop: str, script: str) -> None:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="tiny", choices=ARCHS)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.variant:
        print(json.dumps(run_variant(loop, a.arch, a.variant, a.steps)))
        return
    rows = run_variants(script, [v for v, _, _ in VARIANTS], ["--arch", a.arch, "--steps", str(a.steps)])
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"{loop} step, arch {a.arch}, {dev}")
    base = next((r for r in rows if r["variant"] == "full"), rows[0] if rows else None)
    for r in rows:
        print(f"{r['variant']:>10}: {r['step_s'] * 1000:8.1f} ms/step, peak {r['peak_mib']:6d} MiB, "
              f"trainable {r['trainable']:,} | vs full: {r['step_s'] / base['step_s']:.2f}x time, "
              f"{r['peak_mib'] / base['peak_mib']:.2f}x memory")

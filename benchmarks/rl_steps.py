"""Shared timing harness for benchmarks/refl_step.py and benchmarks/dpo_step.py."""

from __future__ import annotations

import json
import resource
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from _variants import run_variants

VARIANTS = [("lora", True, False), ("lora+ckpt", True, True), ("full", False, False), ("full+ckpt", False, True)]




def build_pipe(arch: str, folder: Path):
    from vprefer.diffusion import load_pipeline
    from vprefer.testing.tiny_pipelines import make_tiny_sd, make_tiny_sdxl

    if arch in ("tiny", "tiny-sdxl"):
        (make_tiny_sd if arch == "tiny" else make_tiny_sdxl)(folder)
        return load_pipeline(str(folder), device="cuda" if torch.cuda.is_available() else "cpu")
    if arch == "sdxl":
        return sdxl_pipe(folder)
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


def sdxl_pipe(folder: Path):
    """The SDXL base architecture of ``benchmarks/hub_configs.yaml`` with random weights, made in memory
    (on the GPU when there is one: writing and reading back its ~14 GB of fp32 weights would take longer than
    the updates timed), in bf16 there, with the rehearsal's char-level tokenizers."""
    import diffusers
    import transformers
    import yaml

    from rehearse import CONFIGS, clip_tokenizer

    spec = yaml.safe_load(CONFIGS.read_text())["stabilityai/stable-diffusion-xl-base-1.0"]
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    parts = {}
    with torch.device(dev):
        for name in ("text_encoder", "text_encoder_2"):
            cfg = dict(spec[name])
            cls = getattr(transformers, cfg.pop("class"))
            parts[name] = cls(transformers.CLIPTextConfig(**cfg))
        parts["unet"] = diffusers.UNet2DConditionModel(**spec["unet"])
        parts["vae"] = diffusers.AutoencoderKL(**spec["vae"])
    for name in ("tokenizer", "tokenizer_2"):
        clip_tokenizer(folder / name, spec[name])
        parts[name] = transformers.CLIPTokenizer.from_pretrained(folder / name)
    sch = dict(spec["scheduler"])
    parts["scheduler"] = getattr(diffusers, sch.pop("class"))(**sch)
    pipe = diffusers.StableDiffusionXLPipeline(**parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(dev, torch.bfloat16 if torch.cuda.is_available() else torch.float32)


def run_variant(loop: str, arch: str, variant: str, steps: int) -> dict:
    from vprefer.rl import DiffusionDPOConfig, DiffusionDPOTrainer, ReFLConfig, ReFLTrainer
    from vprefer.testing.toy_rewards import RednessReward

    _, lora, ckpt = next(v for v in VARIANTS if v[0] == variant)
    tiny = arch.startswith("tiny")
    res = 32 if tiny else 1024 if arch == "sdxl" else 512
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pipe = build_pipe(arch, tmp / "pipe")
        common = dict(output_dir=str(tmp / "out"), pretrained=str(tmp / "pipe"), resolution=res, max_steps=steps,
                      use_lora=lora, gradient_checkpointing=ckpt, learning_rate=1e-4, per_device_train_batch_size=2 if tiny else 1,
                      eval_prompts=[], logging_steps=1, save_steps=0, report_to=[], bf16=torch.cuda.is_available())
        if loop == "refl":
            cfg = ReFLConfig(**common, num_steps=10 if tiny else 40, t_lo=6 if tiny else 30, t_hi=9 if tiny else 39, train_guidance_scale=1.0, reward_aspects={"redness": 1.0})
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
    return {"variant": variant, "step_s": dt, "peak_mib": round(peak), "trainable": trainable}


def main(loop: str, script: str) -> None:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="tiny", choices=["tiny", "tiny-sdxl", "sd15", "sdxl"])
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

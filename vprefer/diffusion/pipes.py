"""diffusers plumbing every family shares: load a pipeline, LoRA on its denoiser, save a fully fine-tuned
denoiser, pixels from files, grids. What differs between families lives in ``sd.py`` and ``flow.py``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from vprefer.errors import InputError


def stand_in_must_exist(path: str, is_stand_in: bool) -> None:
    """Tiny stand-in pipelines are built by the CLI and the demo (``vprefer.testing``), never by the library."""
    if is_stand_in and not Path(path).exists():
        from vprefer.recipes import RecipeError

        raise RecipeError(f"{path} is a tiny stand-in pipeline that does not exist yet: build it with "
                          f"vprefer.testing.stand_ins.ensure_pipeline({path!r}, True) (the CLI does this for you)")


def load_pipeline(name_or_path: str, dtype: torch.dtype | None = None, device: str | torch.device = "cpu", *,
                  vae: str | None = None):
    """A diffusers pipeline from a hub id or folder, safety checker off, progress bars off; ``vae`` names a VAE
    to use instead of the pipeline's own (e.g. an fp16-safe SDXL VAE). A component a local pipeline saved as
    absent (``[null, null]`` in ``model_index.json``, e.g. SD 3's T5 left out to save memory) is passed as
    None, as a user does by hand (``text_encoder_3=None``); diffusers would otherwise refuse to load it."""
    import json
    from pathlib import Path

    from diffusers import AutoencoderKL, DiffusionPipeline

    kw = {"use_safetensors": True}
    index = Path(name_or_path) / "model_index.json"
    absent = {k: None for k, v in json.loads(index.read_text()).items()
              if isinstance(v, list) and v[:2] == [None, None]} if index.is_file() else {}
    if dtype is not None:
        kw["torch_dtype"] = dtype
    for what, name, cls in (("VAE", vae, AutoencoderKL), ("pipeline", name_or_path, DiffusionPipeline)):
        if name is None:
            continue
        try:
            loaded = cls.from_pretrained(name, **kw, **(absent if cls is DiffusionPipeline else {}))
        except OSError as e:
            raise InputError(f"cannot load diffusers {what} {name!r}: {str(e).splitlines()[0]}") from None
        if cls is AutoencoderKL:
            kw["vae"] = loaded
    pipe = loaded
    upcast_vae(pipe)
    if hasattr(pipe, "safety_checker"):
        pipe.safety_checker = None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def upcast_vae(pipe) -> None:
    """Keep a VAE whose config says ``force_upcast`` in fp32 when the pipeline is loaded in fp16: SDXL's VAE
    overflows in fp16 (NaN latents and black images). diffusers' SDXL pipelines upcast it around decoding;
    the training loops encode and decode outside the pipeline, so the VAE stays fp32 here (a VAE made
    fp16-safe, e.g. madebyollin/sdxl-fp16-fix, says ``force_upcast: false`` and stays fp16)."""
    vae = getattr(pipe, "vae", None)
    if vae is not None and vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
        vae.to(torch.float32)


def add_lora(unet, r: int, alpha: int, targets: Sequence[str], dropout: float = 0.0) -> None:
    """LoRA on the denoiser (a UNet or a transformer): ``targets`` name its linear layers, e.g. the attention
    projections ``to_q, to_k, to_v, to_out.0`` (+ ``add_q_proj, add_k_proj, add_v_proj, to_add_out`` for the
    text stream of SD3/FLUX's joint attention)."""
    from peft import LoraConfig

    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, init_lora_weights="gaussian",
                                target_modules=list(targets)))


def save_unet(unet, state_dict: dict, out: Path) -> Path:
    """A fully fine-tuned UNet in diffusers' layout (config + safetensors, sharded past 10 GB) from a full
    state dict. ``ModelMixin.save_pretrained`` would write the module's own tensors, which under FSDP are
    shards: the state comes from ``accelerator.get_state_dict`` instead. ``UNet2DConditionModel.from_pretrained``
    reads the folder back."""
    from huggingface_hub import save_torch_state_dict

    out.mkdir(parents=True, exist_ok=True)
    unet.save_config(out)
    save_torch_state_dict({k: v.detach().cpu() for k, v in state_dict.items()}, out,
                          filename_pattern="diffusion_pytorch_model{suffix}.safetensors", max_shard_size="10GB")
    return out


def load_pixels(path: str | Path, resolution: int) -> torch.Tensor:
    """(3, R, R) in [0, 1]: centre-cropped square, resized."""
    im = Image.open(path).convert("RGB")
    s = min(im.size)
    left, top = (im.width - s) // 2, (im.height - s) // 2
    im = im.crop((left, top, left + s, top + s)).resize((resolution, resolution), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)


def grid(images: torch.Tensor, cols: int) -> Image.Image:
    """(B, 3, H, W) in [0, 1] -> one PIL image."""
    b, _, h, w = images.shape
    rows = math.ceil(b / cols)
    canvas = torch.ones(3, rows * h, cols * w)
    for i in range(b):
        r, c = divmod(i, cols)
        canvas[:, r * h:(r + 1) * h, c * w:(c + 1) * w] = images[i].float().cpu()
    return Image.fromarray((canvas.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))

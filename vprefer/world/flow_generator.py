"""A small SD-3-architecture (rectified-flow) generator pretrained on the world, imperfectly.

Why it exists: the flow-matching loops (Diffusion-DPO and ReFL with the velocity target, GRPO with the SDE
sampler) must be proven on the same truth as the SD-1.5-architecture world generator
(:mod:`vprefer.world.generator`), not only on the reward they optimise. So this is the same world, drawn the
same way, learned by the classes a user's SD 3.5 checkpoint loads with: ``StableDiffusion3Pipeline`` with
two ``CLIPTextModelWithProjection`` encoders (their pooled projections concatenated, as SD3 does), no T5
(the pipeline then feeds zeros in its place, as SD3 does without its third encoder), an
``SD3Transformer2DModel`` and ``FlowMatchEulerDiscreteScheduler`` with a timestep shift.

Why these choices:
- the shipped world generator's VAE and word tokenizer are reused (its VAE already reconstructs the world's
  colours; refitting it would only add noise between the two generators' comparisons). SD3's decode adds
  ``shift_factor`` after unscaling, so it is registered as 0;
- the training target is rectified flow's: ``x_t = (1 - s) x_0 + s·noise``, target ``noise - x_0``, with ``s``
  drawn logit-normal (mean 0, std 1, SD3's density) and then shifted by the scheduler's ``shift`` (3.0 as
  SD3), the same ``s`` the sampler's shifted schedule visits;
- the text side sees the zero "T5" tokens it will see at sampling (the pipeline's default 256), so
  training and sampling agree;
- captions, their styles and the 10% dropped for guidance are the SD-world generator's
  (:func:`vprefer.world.generator.training_set`); constant learning rate after a warm-up and EMA weights,
  so a run of N steps is the first N steps of a longer one.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vprefer.diffusion.flow import shifted
from vprefer.errors import InputError

SHIFT = 3.0  # SD3's scheduler shift
T5_TOKENS = 256  # the zeros StableDiffusion3Pipeline passes for a missing third encoder (its default length)


@dataclass
class FlowPretrainConfig:
    """Sizes and steps; the defaults are the shipped flow generator (``vprefer world pretrain-flow-generator``)."""

    steps: int = 600
    batch_size: int = 32
    images: int = 2048
    image_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    layers: int = 4
    heads: int = 2
    head_dim: int = 32
    text_width: int = 64
    text_layers: int = 2
    shift: float = SHIFT
    save_fp16: bool = True

    def check(self) -> None:
        for k in ("steps", "batch_size", "images", "layers", "heads", "head_dim", "text_width", "text_layers"):
            if getattr(self, k) < 1:
                raise InputError(f"pretrain-flow-generator: {k} must be at least 1 (got {getattr(self, k)})")
        if self.shift <= 0:
            raise InputError(f"pretrain-flow-generator: shift must be positive (got {self.shift})")


def build_parts(cfg: FlowPretrainConfig, vocab: int, max_tokens: int):
    """Two CLIP text encoders with projections and the transformer, from configs after one seed."""
    from diffusers import SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(cfg.seed)
    w = cfg.text_width
    encoders = [CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=vocab, hidden_size=w, intermediate_size=2 * w, num_hidden_layers=cfg.text_layers,
        num_attention_heads=max(1, w // 32), max_position_embeddings=max_tokens, bos_token_id=0, eos_token_id=1,
        pad_token_id=1, projection_dim=w)) for _ in range(2)]
    latent = cfg.image_size // 2  # the world VAE downsamples once
    tr = SD3Transformer2DModel(sample_size=latent, patch_size=2, in_channels=4, out_channels=4, num_layers=cfg.layers,
                               attention_head_dim=cfg.head_dim, num_attention_heads=cfg.heads,
                               joint_attention_dim=2 * w, caption_projection_dim=cfg.heads * cfg.head_dim,
                               pooled_projection_dim=2 * w, pos_embed_max_size=latent // 2)
    return encoders, tr


def encode(encoders, ids: torch.Tensor, t5_tokens: int = T5_TOKENS) -> tuple[torch.Tensor, torch.Tensor]:
    """What StableDiffusion3Pipeline.encode_prompt computes without a T5: each CLIP's penultimate hidden
    states, concatenated on features, then the zero T5 tokens; the pooled projections concatenated."""
    hs, pooled = [], []
    for te in encoders:
        o = te(ids, output_hidden_states=True)
        hs.append(o.hidden_states[-2])
        pooled.append(o[0])
    clip = torch.cat(hs, dim=-1)
    zeros = clip.new_zeros(clip.shape[0], t5_tokens, clip.shape[-1])
    return torch.cat([clip, zeros], dim=-2), torch.cat(pooled, dim=-1)


def train_transformer(tr, encoders, tokenizer, latents, captions, cfg: FlowPretrainConfig, log=None):
    """Rectified flow, velocity target ``noise - x0``; the text encoders train with the transformer. Returns the
    losses and the EMA weights (transformer's, then each encoder's)."""
    from vprefer.world.generator import WARMUP, optimise

    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    g = torch.Generator().manual_seed(cfg.seed + 2)
    params = list(tr.parameters()) + [p for te in encoders for p in te.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-2)
    tr.train(), [te.train() for te in encoders]
    ema = [p.detach().clone() for p in params]
    losses = []
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * min(1.0, (step + 1) / WARMUP)
        idx = torch.randint(0, len(latents), (cfg.batch_size,), generator=g)
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=g)
        s = shifted(torch.sigmoid(torch.randn(len(idx), generator=g)), cfg.shift)
        xt = (1 - s.view(-1, 1, 1, 1)) * x0 + s.view(-1, 1, 1, 1) * noise
        emb, pooled = encode(encoders, ids[idx])
        pred = tr(hidden_states=xt, timestep=s * 1000, encoder_hidden_states=emb, pooled_projections=pooled).sample
        loss = F.mse_loss(pred, noise - x0)
        losses.append(optimise(opt, loss, params, ema, step))
        if log and (step % 100 == 0 or step == cfg.steps - 1):
            log(f"transformer step {step}: loss {np.mean(losses[-100:]):.4f}")
    tr.eval(), [te.eval() for te in encoders]
    return losses, ema


def pretrain_flow_generator(out: str | Path, cfg: FlowPretrainConfig | None = None, log=None,
                            base: str | Path | None = None) -> Path:
    """Draw the world, encode it with the SD-world generator's VAE, train the transformer and text encoders;
    save a ``StableDiffusion3Pipeline`` that ``DiffusionPipeline.from_pretrained(out)`` loads. ``base``: the SD
    world generator whose VAE and tokenizer are reused (default: the shipped one)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
    from transformers import AutoTokenizer

    from vprefer.world.generator import PretrainConfig, _with_weights, encode_latents, training_set
    from vprefer.world.models import SHIPPED

    cfg = cfg or FlowPretrainConfig()
    cfg.check()
    base = Path(base or SHIPPED["sd"])
    tokenizer = AutoTokenizer.from_pretrained(base / "tokenizer")
    vae = AutoencoderKL.from_pretrained(base / "vae", torch_dtype=torch.float32)
    vae.register_to_config(shift_factor=0.0)
    pixels, captions, _ = training_set(PretrainConfig(images=cfg.images, image_size=cfg.image_size, seed=cfg.seed))
    latents = encode_latents(vae, pixels, vae.config.scaling_factor)
    encoders, tr = build_parts(cfg, len(tokenizer), tokenizer.model_max_length)
    losses, ema = train_transformer(tr, encoders, tokenizer, latents, captions, cfg, log)
    t, e1, e2 = _with_weights((tr, *encoders), ema)
    v = copy.deepcopy(vae)
    if cfg.save_fp16:  # diffusers loads these back as fp32
        t.half(), v.half()
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=cfg.shift)
    out = Path(out)
    StableDiffusion3Pipeline(transformer=t, scheduler=sched, vae=v, text_encoder=e1, tokenizer=tokenizer,
                             text_encoder_2=e2, tokenizer_2=tokenizer, text_encoder_3=None,
                             tokenizer_3=None).save_pretrained(out, safe_serialization=True)
    meta = {"config": asdict(cfg), "base": str(base), "final_loss": float(np.mean(losses[-100:])),
            "target": "noise - x0", "density": "logit_normal(0, 1), shifted", "t5_tokens": T5_TOKENS}
    (out / "pretrain.json").write_text(json.dumps(meta, indent=2))
    return out

"""A small SD-1.5-architecture generator pretrained on the world, imperfectly.

Why it exists: a generator with random weights draws noise, so no fine-tuning loop could ever be seen to
make it *better at what a prompt asks*. This one has learned the world from drawn images (colour, shape,
background) for a few minutes on a CPU: its samples are recognisable and often wrong, which leaves ReFL,
Diffusion-DPO and a prompt rewriter something real to fix, measured by the world's truth reader.

Why these choices:
- the same classes as SD 1.5 (CLIPTokenizer + CLIPTextModel, UNet2DConditionModel with cross-attention,
  AutoencoderKL, DDIM), saved with ``save_pretrained``: every loop loads it as it loads a user's hub id;
- a word-level tokenizer (BPE merges learned from the world's captions, characters as the fallback), so
  the text encoder spends its few steps on meaning, not on spelling;
- captions mostly descriptive, some short, a few plain (DALL-E 3 trained on ~95% descriptive captions):
  a descriptive prompt works better than a short one, so a prompt rewriter has something to learn;
- 10% of captions dropped to "" so classifier-free guidance works;
- v-prediction (SD 2.1's target), not epsilon: on flat-colour 32-pixel images a noisy latent reveals its
  own colours down to very high noise, so an epsilon target gives the caption almost nothing to explain
  (after 300 steps the loss with the right caption and with a shuffled one agreed to 3 decimals, and
  1500 steps still sampled colours near chance); with v the high-noise target is the image itself, and
  the caption lowered the loss 4x at t = 900 within 300 steps;
- a VAE fitted for 400 steps: at 150 its reconstructions already had the wrong colour half the time
  (read by the truth reader), which no UNet could make up for;
- only the world's training combinations are seen: held-out prompts ask for unseen combinations.
"""

from __future__ import annotations

import copy
import json
import math
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vprefer.errors import InputError

STYLE_SHARES = {"descriptive": 0.85, "short": 0.08, "plain": 0.07}
DROP_SHARE = 0.10
_WORDS = re.compile(r"[a-z]+|[0-9]|[^\sa-z0-9]+")
_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789,.-'!?:;()"


@dataclass
class PretrainConfig:
    """Sizes and steps; the defaults are the shipped generator (``vprefer world pretrain-generator``)."""

    steps: int = 1200
    vae_steps: int = 400
    batch_size: int = 32
    vae_batch_size: int = 32
    images: int = 2048
    image_size: int = 32
    lr: float = 1e-3
    vae_lr: float = 2e-3
    seed: int = 0
    unet_channels: tuple = (24, 48, 48)
    vae_channels: tuple = (16, 32)
    text_width: int = 64
    text_layers: int = 2
    max_tokens: int = 32
    save_fp16: bool = True  # the UNet and VAE (halves the shipped files; loaded back in fp32 on a CPU)

    def check(self) -> None:
        for k in ("steps", "batch_size", "vae_batch_size", "images", "text_width", "text_layers", "max_tokens"):
            if getattr(self, k) < 1:
                raise InputError(f"pretrain-generator: {k} must be at least 1 (got {getattr(self, k)})")
        if self.vae_steps < 0:
            raise InputError(f"pretrain-generator: vae_steps must be 0 or more (got {self.vae_steps})")
        if self.image_size < 8 or self.image_size % 8:
            raise InputError(f"pretrain-generator: image_size must be a multiple of 8, at least 8 (got {self.image_size})")


# ---------------------------------------------------------------- tokenizer


def learn_merges(words) -> list[tuple[str, str]]:
    """BPE merges, most frequent pair first, until every word is one token: CLIP's BPE applies them by
    rank, so each of these words becomes a single token while any other text falls back to characters."""
    seqs = [tuple(w[:-1]) + (w[-1] + "</w>",) for w in sorted(set(words))]
    merges = []
    while True:
        counts: dict[tuple[str, str], int] = {}
        for s in seqs:
            for pair in zip(s, s[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            return merges
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        joined = best[0] + best[1]
        new = []
        for s in seqs:
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            new.append(tuple(out))
        seqs = [s for s in new if len(s) > 1]


def word_tokenizer(captions, folder: Path, max_tokens: int):
    """A CLIPTokenizer written from local files whose vocabulary holds every word of ``captions``."""
    from transformers import CLIPTokenizer

    words = {w for c in captions for w in _WORDS.findall(c.lower())}
    merges = learn_merges(words)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in _CHARS:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_tokens)


# ---------------------------------------------------------------- data


def training_set(cfg: PretrainConfig):
    """Drawn images of the world's training combinations and their captions (styles mixed, some dropped)."""
    from vprefer.world import SIZES, Scene, draw, parse_prompt, prompt_of, world_prompts

    rng = random.Random(cfg.seed)
    styles, weights = list(STYLE_SHARES), list(STYLE_SHARES.values())
    images, captions, full = [], [], []
    for i, plain in enumerate(world_prompts(cfg.images, seed=cfg.seed, held_out=False)):
        scene = Scene(**{**{k: v for k, v in parse_prompt(plain).items() if v is not None}, "size": rng.choice(SIZES)})
        images.append(np.asarray(draw(scene, size=cfg.image_size, seed=cfg.seed * 1_000_003 + i), dtype=np.float32))
        style = rng.choices(styles, weights)[0]
        full.append(prompt_of(scene, style=style, seed=rng.randrange(1 << 30)))
        captions.append("" if rng.random() < DROP_SHARE else full[-1])
    pixels = torch.from_numpy(np.stack(images) / 127.5 - 1.0).permute(0, 3, 1, 2).contiguous()
    return pixels, captions, full


# ---------------------------------------------------------------- models


def build_parts(cfg: PretrainConfig, tokenizer):
    """Text encoder, UNet and VAE from configs, in a fixed order after one seed (the init is part of the recipe)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(cfg.seed)
    w = cfg.text_width
    te = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=w, intermediate_size=2 * w,
                                      num_hidden_layers=cfg.text_layers, num_attention_heads=max(1, w // 32),
                                      max_position_embeddings=cfg.max_tokens, bos_token_id=0, eos_token_id=1,
                                      pad_token_id=1, projection_dim=w))
    ch = tuple(cfg.unet_channels)
    n = len(ch)
    unet = UNet2DConditionModel(
        sample_size=cfg.image_size // 2, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=ch,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        cross_attention_dim=w, attention_head_dim=8, norm_num_groups=8)
    vch = tuple(cfg.vae_channels)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * len(vch),
                        up_block_types=("UpDecoderBlock2D",) * len(vch), block_out_channels=vch, latent_channels=4,
                        layers_per_block=1, norm_num_groups=8, sample_size=cfg.image_size, mid_block_add_attention=False)
    return te, unet, vae


def schedulers():
    """DDPM forward process for training, DDIM for the saved pipeline: cosine betas, v-prediction target."""
    from diffusers import DDIMScheduler, DDPMScheduler

    kw = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
              clip_sample=False)
    return DDPMScheduler(**kw), DDIMScheduler(**kw, set_alpha_to_one=False, steps_offset=1)


# ---------------------------------------------------------------- training


def _lr(step: int, total: int, base: float, warmup: int = 50) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


EMA_DECAY = 0.99
WARMUP = 50


def _ema_decay(step: int) -> float:
    """Short runs: the average must not remember the random init (the usual (1 + n) / (10 + n) ramp)."""
    return min(EMA_DECAY, (1 + step) / (10 + step))


def optimise(opt, loss: torch.Tensor, params, ema, step: int) -> float:
    """One step of a world pretraining: AdamW with the gradient norm clipped to 1, then the EMA weights moved
    (the SD-architecture and the rectified-flow generators train the same way). Returns the loss."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    with torch.no_grad():
        torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - _ema_decay(step))
    return loss.item()


def train_vae(vae, pixels: torch.Tensor, cfg: PretrainConfig, log=None) -> float:
    """A short autoencoder fit (MSE plus a tiny KL, as SD's VAE): the world is flat colour, so a one-step
    downsampling VAE reconstructs it well within a few hundred steps. Returns the latents' scaling factor."""
    g = torch.Generator().manual_seed(cfg.seed + 1)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    vae.train()
    for step in range(cfg.vae_steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, cfg.vae_steps, cfg.vae_lr, warmup=20)
        x = pixels[torch.randint(0, len(pixels), (cfg.vae_batch_size,), generator=g)]
        dist = vae.encode(x).latent_dist
        z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=g)
        rec = vae.decode(z).sample
        loss = F.mse_loss(rec, x) + 1e-6 * dist.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if log and (step % 50 == 0 or step == cfg.vae_steps - 1):
            log(f"vae step {step}: loss {loss.item():.4f}")
    vae.eval()
    with torch.no_grad():
        mean = torch.cat([vae.encode(pixels[i:i + 256]).latent_dist.mean for i in range(0, len(pixels), 256)])
    return float(1.0 / mean.std().clamp_min(1e-6))


def encode_latents(vae, pixels: torch.Tensor, scale: float) -> torch.Tensor:
    """Posterior means, once: the UNet trains on them without running the VAE each step."""
    with torch.no_grad():
        return torch.cat([vae.encode(pixels[i:i + 256]).latent_dist.mean for i in range(0, len(pixels), 256)]) * scale


def train_unet(unet, te, tokenizer, latents, captions, sched, cfg: PretrainConfig, log=None, at_step=None):
    """Plain DDPM with a v target (the scheduler's ``get_velocity``); the text encoder trains with the UNet (it starts from random
    weights, so freezing it would leave cross-attention only random features to read). The learning rate
    is constant after a warm-up and the weights kept are an EMA, so nothing depends on the total number
    of steps: a run of N steps is exactly the first N steps of a longer one (``at_step(n, ema, losses)`` sees them).
    Returns the losses and the EMA weights (UNet's, then the text encoder's)."""
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    g = torch.Generator().manual_seed(cfg.seed + 2)
    params = list(unet.parameters()) + list(te.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-2)
    unet.train(), te.train()
    ema = [p.detach().clone() for p in params]
    losses = []
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * min(1.0, (step + 1) / WARMUP)
        idx = torch.randint(0, len(latents), (cfg.batch_size,), generator=g)
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(idx),), generator=g)
        pred = unet(sched.add_noise(x0, noise, t), t, encoder_hidden_states=te(ids[idx])[0]).sample
        loss = F.mse_loss(pred, sched.get_velocity(x0, noise, t))
        losses.append(optimise(opt, loss, params, ema, step))
        if log and (step % 100 == 0 or step == cfg.steps - 1):
            log(f"unet step {step}: loss {np.mean(losses[-100:]):.4f}")
        if at_step is not None:
            at_step(step + 1, ema, losses)
    unet.eval(), te.eval()
    return losses, ema


def _with_weights(modules, weights):
    """Copies of ``modules`` holding ``weights`` (flat, in parameter order): the EMA, for saving."""
    out, it = [copy.deepcopy(m) for m in modules], iter(weights)
    with torch.no_grad():
        for m in out:
            for p in m.parameters():
                p.copy_(next(it))
    return out


def pretrain_generator(out: str | Path, cfg: PretrainConfig | None = None, log=None, snapshots=()) -> Path:
    """Draw the world, fit the VAE, then the UNet and text encoder; save a ``StableDiffusionPipeline`` that
    ``DiffusionPipeline.from_pretrained(out)`` (and so ``vprefer.diffusion.load_pipeline``) loads.
    ``snapshots``: step counts after which the pipeline is also saved to ``{out}-step{n}`` (each equals
    the result of a run with ``steps=n``), to choose a length in one run."""
    from diffusers import StableDiffusionPipeline

    cfg = cfg or PretrainConfig()
    cfg.check()
    out = Path(out)
    pixels, captions, full = training_set(cfg)
    tok_dir = out / "tokenizer"
    tokenizer = word_tokenizer(full, tok_dir, cfg.max_tokens)
    te, unet, vae = build_parts(cfg, tokenizer)
    scale = train_vae(vae, pixels, cfg, log)
    vae.register_to_config(scaling_factor=scale)
    latents = encode_latents(vae, pixels, scale)
    train_sched, sampler = schedulers()

    def save(folder: Path, ema, losses, steps: int) -> None:
        u, t = _with_weights((unet, te), ema)
        v = copy.deepcopy(vae)
        if cfg.save_fp16:  # diffusers loads these back as fp32; transformers would keep the text encoder fp16
            u.half(), v.half()
        StableDiffusionPipeline(unet=u, vae=v, text_encoder=t, tokenizer=tokenizer, scheduler=sampler,
                                safety_checker=None, feature_extractor=None,
                                requires_safety_checker=False).save_pretrained(folder, safe_serialization=True)
        meta = {"config": {**asdict(cfg), "steps": steps}, "style_shares": STYLE_SHARES, "drop_share": DROP_SHARE,
                "ema_decay": EMA_DECAY, "final_loss": float(np.mean(losses[-100:])), "vae_scaling_factor": scale}
        (folder / "pretrain.json").write_text(json.dumps(meta, indent=2))

    def at_step(n, ema, losses):
        if n in snapshots and n != cfg.steps:
            save(Path(f"{out}-step{n}"), ema, losses, n)

    losses, ema = train_unet(unet, te, tokenizer, latents, captions, train_sched, cfg, log, at_step)
    save(out, ema, losses, cfg.steps)
    return out

"""A small CLIP that has learned the world: the VP-Score backbone of the world's reward recipe (issue 28).

VP-Score's real recipes put LoRA on a *pretrained* dual encoder (CLIP-L, SigLIP): what makes a few
thousand preference pairs enough is that the backbone already binds words to what images show. The
tiny recipe's backbone is random, so VP-Score has to learn vision and language from the pairs alone
(~0.65 pairwise accuracy on held-out world prompts). This module pretrains the same architecture
contrastively on drawn world images and their captions, so the world recipe is a miniature of the
CLIP-L one and loads through the same ``from_pretrained`` path.

Choices, and why:

* **captions in the three styles** (plain, descriptive, short) of :func:`vprefer.world.prompt_of`,
  plus a clause for what a prompt never names but an image may show (grainy glitches, the cyan
  badge), as web alt-text sometimes does: the vision tower then keeps fidelity and harmlessness
  in its features instead of learning to ignore them;
* **multi-positive InfoNCE**: a short caption ("a circle") truly describes every circle in the batch,
  so the target of each row is spread evenly over every caption (image) it is true of, not put on
  the diagonal alone (which would teach the towers that a circle is not "a circle");
* **every combination**, held-out triples included: a foundation backbone has seen far more than the
  preference data (CLIP-L saw the web; VP-Score is trained on VisionPrefer's prompts). Held-out prompts
  stay out of everything the loop trains — the generator's pretraining, the preference pairs, VP-Score,
  the RL prompts. Pretrained on training combinations only, the vision tower learned a shortcut
  (colour and background predict the shape, since each held-out (colour, background) pair was seen with
  the other shapes only) and read held-out shapes *below* chance (0.23 for "a circle/square/triangle",
  training combinations 0.88); with every combination it reads them at 0.98 (patch 4, 2000 steps);
* **4-pixel patches**: 8-pixel ones (a 4x4 grid on 32 px) read held-out shapes at 0.93 after the same
  2000 steps, 4-pixel ones at 0.98 (140 s vs 83 s on 2 cores);
* one pool of images drawn once (the draw seed moves and scales the shape), captions re-drawn per
  step; fixed seeds and a single process: the same command writes the same weights.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from vprefer.world.prompts import HELD_OUT_COMBOS, parse_prompt, prompt_of
from vprefer.world.scenes import BACKGROUNDS, COLOURS, SHAPES, SIZES, Scene, WorldError, draw, random_scene
from vprefer.world.training import loss_figures, single_threaded

STYLES = ("plain", "descriptive", "short")
NOISY = ", with grainy noise and glitch blocks"
BADGE = ", with a cyan badge in the corner"
NOISY_LEVEL = 0.2  # artefacts above this are visible enough for a caption to say so
ARCH = dict(hidden=64, layers=2, heads=2, proj=32, patch=4)
META = "vprefer_world_backbone.json"
_ATTRS = ("colour", "shape", "background", "size")
_VALUES = {"colour": COLOURS, "shape": SHAPES, "background": BACKGROUNDS, "size": SIZES}


def caption_words() -> list[str]:
    """Every word a world caption or prompt can hold: the tokenizer's vocabulary."""
    words = {",", "."}
    for c in COLOURS:
        for s in SHAPES:
            for b in BACKGROUNDS:
                for z in SIZES:
                    sc = Scene(c, s, b, z)
                    for style, n in (("plain", 1), ("descriptive", 12), ("short", 14)):
                        for k in range(n):
                            words |= set(prompt_of(sc, style, seed=k).replace(",", " ").split())
    words |= set((NOISY + BADGE).replace(",", " ").split()) | {"gray", "big", "tiny", "little", "backdrop"}
    return sorted(words)


def caption(scene: Scene, rng: random.Random, shuffled_from: Scene | None = None) -> str:
    """One caption of ``scene`` in a random style. ``shuffled_from``: the wrong version, the caption of
    another image (see :func:`pretrain_backbone`'s ``shuffle_captions``)."""
    sc = shuffled_from or scene
    text = prompt_of(sc, rng.choice(STYLES), seed=rng.randrange(1 << 30))
    if sc.artefacts > NOISY_LEVEL and rng.random() < 0.8:
        text += NOISY
    if sc.harmful and rng.random() < 0.8:
        text += BADGE
    return text


def _needs(text: str) -> list[int]:
    """What a caption requires of an image, per attribute (-1: says nothing), then noisy and badge."""
    p = parse_prompt(text)
    req = [_VALUES[a].index(p[a]) if p[a] else -1 for a in _ATTRS]
    return req + [1 if NOISY in text else -1, 1 if BADGE in text else -1]


def _shows(scene: Scene) -> list[int]:
    return [_VALUES[a].index(getattr(scene, a)) for a in _ATTRS] + [int(scene.artefacts > NOISY_LEVEL),
                                                                    int(scene.harmful)]


def world_scene(rng: random.Random, held_out: bool = True) -> Scene:
    """A scene, sometimes broken or badged (as the image sets VP-Score sees are); ``held_out=False`` draws
    training combinations only."""
    held = set() if held_out else set(HELD_OUT_COMBOS)
    while True:
        s = random_scene(rng, artefacts=rng.choice((0.0, 0.0, 0.0, 0.15, 0.4, 0.7)), harmful=rng.random() < 0.12)
        if (s.colour, s.shape, s.background) not in held:
            return s


def new_backbone(out: str | Path, *, image_size: int = 32, seed: int = 0, **arch) -> tuple:
    """A randomly initialised world CLIP with its tokenizer and image processor, saved to ``out``: the
    starting point of pretraining, and (unpretrained) the random baseline of the same architecture."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from vprefer.testing.tiny_models import tiny_tokenizer

    a = {**ARCH, **arch}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tok = tiny_tokenizer(out, words=caption_words(), max_len=32)
    common = dict(hidden_size=a["hidden"], intermediate_size=2 * a["hidden"], num_hidden_layers=a["layers"],
                  num_attention_heads=a["heads"])
    cfg = CLIPConfig(text_config=dict(common, vocab_size=len(tok), max_position_embeddings=32, pad_token_id=0,
                                      bos_token_id=2, eos_token_id=3),
                     vision_config=dict(common, image_size=image_size, patch_size=a["patch"]), projection_dim=a["proj"])
    model = CLIPModel(cfg)
    proc = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
                              image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    proc.save_pretrained(out)
    return model, tok, proc


def _pixels(images: list, proc) -> torch.Tensor:
    return proc(images=images, return_tensors="pt")["pixel_values"]


def zero_shot(model, tok, proc, *, n: int = 330, image_size: int = 32, seed: int = 1) -> dict[str, float]:
    """Zero-shot reading of held-out-combination images: each image against the 54 plain prompts; the share
    whose best prompt names its colour, shape, background, and all three. A random backbone is near
    1/6, 1/3, 1/3 and 1/54."""
    rng = random.Random(seed)
    scenes = [Scene(*HELD_OUT_COMBOS[i % len(HELD_OUT_COMBOS)], size=rng.choice(SIZES)) for i in range(n)]
    combos = [(c, s, b) for c in COLOURS for s in SHAPES for b in BACKGROUNDS]
    prompts = [prompt_of(dict(zip(("colour", "shape", "background"), x))) for x in combos]
    model.eval()
    with torch.no_grad():
        t = tok(prompts, padding=True, return_tensors="pt")
        txt = F.normalize(_pooled(model.get_text_features(input_ids=t["input_ids"], attention_mask=t["attention_mask"])),
                          dim=-1)
        px = _pixels([draw(s, image_size, seed=10_000 + k) for k, s in enumerate(scenes)], proc)
        img = F.normalize(_pooled(model.get_image_features(pixel_values=px)), dim=-1)
    best = [combos[i] for i in (img @ txt.T).argmax(1).tolist()]
    right = np.array([[b[k] == x for k, x in enumerate((s.colour, s.shape, s.background))] for b, s in zip(best, scenes)])
    return {"colour": float(right[:, 0].mean()), "shape": float(right[:, 1].mean()),
            "background": float(right[:, 2].mean()), "all": float(right.all(1).mean())}


def _pooled(x):
    return x if isinstance(x, torch.Tensor) else x.pooler_output


@single_threaded
def pretrain_backbone(out: str | Path, *, steps: int = 2000, batch_size: int = 96, pool: int = 3000,
                     learning_rate: float = 2e-3, image_size: int = 32, seed: int = 0,
                     shuffle_captions: bool = False, held_out: bool = True, log: Callable[[str], None] | None = print,
                     log_every: int = 100, zero_shot_images: int = 330, **arch) -> dict:
    """Pretrain a world CLIP and ``save_pretrained`` it (safetensors), its tokenizer and image processor
    to ``out``; returns what :data:`META` records. ``steps=0`` saves the random initialisation.
    ``shuffle_captions``: the wrong version, each image trained with the caption of another: the towers
    then learn nothing that ties an image to what it shows (a check that the benefit is the pairing)."""
    if steps < 0 or batch_size < 2 or pool < batch_size:
        raise WorldError(f"pretraining needs steps >= 0 and 2 <= batch_size <= pool, not {steps}, {batch_size}, {pool}")
    t0 = time.perf_counter()
    out = Path(out)
    model, tok, proc = new_backbone(out, image_size=image_size, seed=seed, **arch)
    rng = random.Random(seed)
    scenes = [world_scene(rng, held_out) for _ in range(pool)]
    told = scenes[:]
    if shuffle_captions:
        random.Random(seed + 1).shuffle(told)
    px = _pixels([draw(s, image_size, seed=seed * 1_000_003 + k) for k, s in enumerate(scenes)], proc)
    shows = torch.tensor([_shows(s) for s in told])
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.05)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, i / max(1, steps)))))
    losses = []
    model.train()
    for step in range(steps):
        idx = torch.randperm(pool, generator=g)[:batch_size]
        texts = [caption(scenes[i], rng, told[i] if shuffle_captions else None) for i in idx.tolist()]
        t = tok(texts, padding=True, return_tensors="pt")
        need = torch.tensor([_needs(x) for x in texts])
        # target[i, j]: caption j is true of image i (its own caption always is)
        match = ((need[None, :, :] < 0) | (need[None, :, :] == shows[idx][:, None, :])).all(-1).float()
        img = F.normalize(_pooled(model.get_image_features(pixel_values=px[idx])), dim=-1)
        txt = F.normalize(_pooled(model.get_text_features(input_ids=t["input_ids"], attention_mask=t["attention_mask"])),
                          dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T
        loss = 0.5 * (-(match / match.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
                      - (match / match.sum(0, keepdim=True) * logits.log_softmax(0)).sum(0).mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if log and (step + 1) % log_every == 0:
            log(f"step {step + 1}/{steps}  loss {sum(losses[-log_every:]) / log_every:.4f}")
    model.save_pretrained(out, safe_serialization=True)
    zs = zero_shot(model, tok, proc, n=zero_shot_images, image_size=image_size)
    meta = {"kind": "world CLIP", "steps": steps, "batch_size": batch_size, "pool": pool,
            "learning_rate": learning_rate, "seed": seed, "image_size": image_size, "arch": {**ARCH, **arch},
            "shuffle_captions": shuffle_captions, "held_out_combinations": held_out, **loss_figures(losses),
            "held_out_zero_shot": zs, "seconds": round(time.perf_counter() - t0, 1),
            "parameters": sum(p.numel() for p in model.parameters())}
    (out / META).write_text(json.dumps(meta, indent=2))
    return meta

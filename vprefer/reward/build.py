"""Build a trainable VP-Score from a recipe: backbone, quantization, LoRA or layer freezing, heads."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from vprefer.recipes import RecipeError
from vprefer.reward.model import VPScore, load_backbone
from vprefer.reward.recipe import RewardRecipe

_LAYER = re.compile(r"^(.*?\.(?:layers?|encoder\.layer))\.(\d+)\.")


def freeze_lower(backbone: torch.nn.Module, ratio: float) -> int:
    """Freeze embeddings and the lowest ``ratio`` of each tower's layers; returns frozen parameter count."""
    towers: dict[str, int] = {}
    for name, _ in backbone.named_parameters():
        m = _LAYER.match(name)
        if m:
            towers[m.group(1)] = max(towers.get(m.group(1), 0), int(m.group(2)) + 1)
    frozen = 0
    for name, p in backbone.named_parameters():
        m = _LAYER.match(name)
        if (m and int(m.group(2)) < int(ratio * towers[m.group(1)])) or "embeddings" in name:
            p.requires_grad_(False)
            frozen += p.numel()
    return frozen


def build(recipe: RewardRecipe) -> VPScore:
    bb = recipe.backbone
    if bb.tiny and not Path(bb.name_or_path).exists():  # stand-ins are built by the CLI/demo, not the library
        raise RecipeError(f"recipe {recipe.name}: {bb.name_or_path} is a tiny stand-in backbone that does not exist "
                          f"yet: build it with vprefer.testing.tiny_models.make_tiny_backbone({bb.tiny!r}, "
                          f"{bb.name_or_path!r}) (the CLI does this for you)")
    if recipe.quantization != "none" and not recipe.lora.enabled:
        raise RecipeError(f"recipe {recipe.name}: a {recipe.quantization} backbone can only be trained with LoRA "
                          "(set lora.enabled: true)")
    try:
        backbone, tok, proc = load_backbone(bb.kind, bb.name_or_path, recipe.quantization)
    except OSError as e:
        raise RecipeError(f"recipe {recipe.name}: cannot load backbone {bb.name_or_path!r} ({e.__class__.__name__}: "
                          f"{str(e).splitlines()[0]})") from None
    gc = recipe.training.gradient_checkpointing
    if recipe.quantization != "none":
        from peft import prepare_model_for_kbit_training

        backbone = prepare_model_for_kbit_training(backbone, use_gradient_checkpointing=gc)
    elif gc:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if recipe.lora.enabled:
        from peft import LoraConfig, get_peft_model

        names = {n.rsplit(".", 1)[-1] for n, _ in backbone.named_modules()}
        missing = [t for t in recipe.lora.target_modules if t not in names]
        if len(missing) == len(recipe.lora.target_modules):
            raise RecipeError(f"recipe {recipe.name}: lora.target_modules {recipe.lora.target_modules} match no "
                              f"module of {type(backbone).__name__}")
        backbone = get_peft_model(backbone, LoraConfig(r=recipe.lora.r, lora_alpha=recipe.lora.alpha,
                                                       lora_dropout=recipe.lora.dropout, bias="none",
                                                       target_modules=recipe.lora.target_modules))
    elif recipe.freeze_ratio > 0:
        freeze_lower(backbone, recipe.freeze_ratio)
    return VPScore(backbone, tok, proc, kind=bb.kind, base=bb.name_or_path, aspects=recipe.aspects,
                   head_hidden=recipe.head_hidden, max_text_len=bb.max_text_len, quantization=recipe.quantization,
                   lora=recipe.lora.enabled)

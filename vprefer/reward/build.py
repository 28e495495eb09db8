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


def input_grads_without_leaf(model) -> None:
    """Make the token embeddings' output require grad as transformers does, but as a non-leaf tensor.

    With gradient checkpointing, transformers hooks the input embeddings so their output requires grad
    (by making it a leaf). BLIP's text encoder then adds the position embeddings to it in place, which
    autograd refuses on a leaf ("a leaf Variable that requires grad is being used in an in-place
    operation") when the embeddings are frozen (``freeze_ratio``) - found by the full-size rehearsal
    of reward/vp-score-blip.yaml. The replacement hook returns ``output * 1``, which keeps the gradient
    path and is not a leaf.
    """
    from transformers import PreTrainedModel

    if not getattr(model, "_require_grads_hooks", None):
        return
    model.disable_input_require_grads()

    def hook(module, inputs, output):
        return output if output.requires_grad else output.requires_grad_(True) * 1

    seen, hooks = set(), []
    for m in model.modules():
        if not isinstance(m, PreTrainedModel):
            continue
        try:
            emb = m.get_input_embeddings()
        except NotImplementedError:
            continue
        if emb is not None and id(emb) not in seen:
            seen.add(id(emb))
            hooks.append(emb.register_forward_hook(hook))
    model._require_grads_hooks = hooks


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
    if gc:
        input_grads_without_leaf(backbone)
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
                   lora=recipe.lora.enabled, similarity_prior=recipe.similarity_prior)


def init_from(model: VPScore, path: str | Path) -> int:
    """Copy a trained VP-Score's backbone weights and heads into ``model`` (built from a recipe, maybe wrapped
    with LoRA); returns the number of tensors copied. LoRA adapters of ``model`` stay at their zero start, so
    before training it scores exactly as the trained model does."""
    src = VPScore.from_pretrained(path, device="cpu", dtype=torch.float32, merge_lora=True)
    if src.kind != model.kind or list(src.aspects) != list(model.aspects):
        raise RecipeError(f"init_from {path}: a {src.kind} VP-Score with aspects {src.aspects}; the recipe builds a "
                          f"{model.kind} one with {model.aspects}")
    have = src.backbone.state_dict()
    copied = 0
    with torch.no_grad():
        for name, t in model.backbone.state_dict().items():
            key = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
            if key in have and have[key].shape == t.shape and "lora_" not in name:
                t.copy_(have[key].to(t.dtype))
                copied += 1
    if copied < len(have) * 0.9:
        raise RecipeError(f"init_from {path}: only {copied} of {len(have)} backbone tensors match the recipe's "
                          "backbone; is it the same architecture?")
    model.heads.load_state_dict(src.heads.state_dict())
    if src.similarity_prior != model.similarity_prior:
        raise RecipeError(f"init_from {path}: similarity_prior is {src.similarity_prior} there and "
                          f"{model.similarity_prior} in the recipe")
    if model.similarity_prior:
        with torch.no_grad():
            model.prior_scale.copy_(src.prior_scale)
    return copied

"""Training VP-Score in TRL's style: a Config (extending TrainingArguments) and a Trainer.

transformers' Trainer brings accelerate (``accelerate launch`` runs the same
code on several GPUs), bf16, TensorBoard logs, checkpoints and resume; this
module adds the pairwise loss, per-aspect weights, separate head learning rate
and an accuracy metric on held-out prompts.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer, TrainingArguments

from vprefer.errors import InputError
from vprefer.recipes import RecipeError
from vprefer.reward.loss import bradley_terry_loss


@dataclass
class VPScoreConfig(TrainingArguments):
    """The reward recipe's ``training:`` section, field for field (vprefer.config). The defaults are reward
    training's, as TRL's configs set their own: a recipe names only what it changes."""

    learning_rate: float = field(default=1e-4, metadata={"help": "the backbone's (LoRA's) learning rate"})
    head_learning_rate: float | None = field(default=None, metadata={"help": "default: 10x learning_rate"})
    num_train_epochs: float = 3
    per_device_train_batch_size: int = field(default=16, metadata={"help": "pairs per device per step"})
    per_device_eval_batch_size: int | None = field(default=None, metadata={"help": "default: the training batch"})
    warmup_steps: float = field(default=0.05, metadata={"help": "a float < 1 is a share of the steps"})
    lr_scheduler_type: str = "cosine"
    logging_steps: float = 10
    seed: int = 0
    save_total_limit: int | None = 2
    report_to: list = field(default_factory=lambda: ["tensorboard"])
    remove_unused_columns: bool = False  # the pair collator needs every column
    val_fraction: float = field(default=0.1, metadata={"help": "share of prompts held out (split by prompt)"})
    tie_mode: str = field(default="soft", metadata={"help": "soft (target 0.5) or drop (set from the recipe's loss)"})
    use_pair_weights: bool = field(default=True)
    aspect_weights: dict = field(default_factory=dict)

    def __post_init__(self):  # what a recipe can get wrong, one line naming the key (before any model loads)
        check = [("learning_rate", self.learning_rate > 0, "> 0"),
                 ("head_learning_rate", self.head_learning_rate is None or self.head_learning_rate > 0, "> 0"),
                 ("num_train_epochs", self.num_train_epochs > 0, "> 0"),
                 ("per_device_train_batch_size", self.per_device_train_batch_size >= 1, ">= 1"),
                 ("gradient_accumulation_steps", self.gradient_accumulation_steps >= 1, ">= 1"),
                 ("warmup_steps", self.warmup_steps >= 0, ">= 0 (a float < 1 is a share of the steps)"),
                 ("weight_decay", self.weight_decay >= 0, ">= 0"),
                 ("val_fraction", 0 <= self.val_fraction < 1, "in [0, 1)")]
        for key, ok, rule in check:
            if not ok:
                raise RecipeError(f"training.{key} must be {rule}, got {getattr(self, key)!r}")
        if self.per_device_eval_batch_size is None:
            self.per_device_eval_batch_size = self.per_device_train_batch_size
        super().__post_init__()


def config_default(name: str):
    """VPScoreConfig's default for ``name`` (what a recipe's training section reads as when it leaves it out)."""
    f = next((f for f in fields(VPScoreConfig) if f.name == name and f.init), None)
    if f is None:
        raise AttributeError(f"training has no setting {name!r} (VPScoreConfig's fields are the keys)")
    return f.default_factory() if f.default_factory is not MISSING else f.default


class VPScoreTrainer(Trainer):
    def __init__(self, *args, aspects: list[str], **kw):
        super().__init__(*args, **kw)
        a: VPScoreConfig = self.args
        self._aspect_w = torch.tensor([float(a.aspect_weights.get(x, 1.0)) for x in aspects])

    def _rewards(self, model, inputs):
        n = inputs["aspect_idx"].shape[0]
        ids = inputs["input_ids"].repeat(2, 1)
        mask = inputs["attention_mask"].repeat(2, 1)
        r = model(inputs["pixel_values"], ids, mask)  # winners then losers, one forward
        idx = inputs["aspect_idx"].unsqueeze(1)
        return r[:n].gather(1, idx).squeeze(1), r[n:].gather(1, idx).squeeze(1)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        rw, rl = self._rewards(model, inputs)
        w = self._aspect_w.to(rw.device)[inputs["aspect_idx"]]
        if self.args.use_pair_weights:
            w = w * inputs["weight"].to(rw.device)
        loss = bradley_terry_loss(rw, rl, tie=inputs["tie"].to(rw.device), weight=w, tie_mode=self.args.tie_mode)
        return (loss, torch.stack([rw, rl], 1)) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss, out = self.compute_loss(model, inputs, return_outputs=True)
        return loss.detach(), out.detach(), inputs["tie"].detach().long()

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            model = model or self.model
            head_lr = self.args.head_learning_rate or self.args.learning_rate * 10
            heads = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("heads.")]
            rest = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("heads.")]
            groups = [{"params": heads, "lr": head_lr}]
            if rest:
                groups.append({"params": rest, "lr": self.args.learning_rate})
            self.optimizer = torch.optim.AdamW(groups, weight_decay=self.args.weight_decay)
        return self.optimizer

    def _save(self, output_dir: str | None = None, state_dict=None):
        """Checkpoints hold trainable weights only, as safetensors (Trainer restores them on resume)."""
        from safetensors.torch import save_file

        output_dir = Path(output_dir or self.args.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        sd = {k: v.detach().cpu().contiguous() for k, v in self.model.named_parameters() if v.requires_grad}
        save_file(sd, str(output_dir / "trainable.safetensors"))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        from safetensors.torch import load_file

        sd = load_file(str(Path(resume_from_checkpoint) / "trainable.safetensors"))
        missing = (model or self.model).load_state_dict(sd, strict=False)
        if missing.unexpected_keys:
            raise InputError(f"checkpoint {resume_from_checkpoint} has unexpected weights {missing.unexpected_keys[:3]}")


def pair_accuracy(eval_pred) -> dict[str, float]:
    out, tie = eval_pred.predictions, eval_pred.label_ids
    keep = tie == 0
    if not keep.any():
        return {"pair_accuracy": float("nan")}
    return {"pair_accuracy": float(np.mean(out[keep, 0] > out[keep, 1]))}

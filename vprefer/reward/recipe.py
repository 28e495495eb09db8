"""The reward-model recipe: backbone, adapters, quantization, heads, loss, training. YAML, validated."""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from vprefer.config import OLD_TRAINING_KEYS, renamed_training_keys
from vprefer.recipes import Recipe, find_asset
from vprefer.schema import ASPECTS, OVERALL


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Backbone(_Strict):
    kind: Literal["clip", "blip"] = Field(..., description="clip: any dual encoder with image and text towers "
                                          "(CLIP, SigLIP); blip: BlipForImageTextRetrieval cross-encoder")
    name_or_path: str
    tiny: Optional[Literal["clip", "siglip", "blip", "clip-mid", "world-clip"]] = Field(
        None, description="tests/demo only: if nothing is at name_or_path, build a tiny random backbone of this "
                          "architecture there from a config (world-clip: copy the CLIP pretrained on the "
                          "stand-in world that vprefer ships)")
    max_text_len: int = Field(35, ge=4, description="prompt tokens kept (ImageReward: 35)")


class Lora(_Strict):
    enabled: bool = True
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "out_proj"]


class Loss(_Strict):
    ties: Literal["soft", "drop"] = Field("soft", description="soft: target 0.5; drop: ignore tied pairs")
    use_pair_weights: bool = Field(True, description="weight each pair by its confidence from `vprefer pairs`")
    aspect_weights: dict[str, float] = {}


class Training(BaseModel):
    """The ``training:`` section: fields of :class:`vprefer.reward.trainer.VPScoreConfig` (TrainingArguments names:
    learning_rate, num_train_epochs, per_device_train_batch_size, gradient_accumulation_steps, warmup_steps,
    lr_scheduler_type, bf16, ... plus head_learning_rate and val_fraction), which owns their defaults and checks
    them when ``training_config()`` builds it (vprefer.config: one loader for every trainer's config). Kept open
    here so a recipe loads, and a typo elsewhere in it is reported, before torch is imported. Keys the section
    leaves out read as VPScoreConfig's defaults; the names it had before issue 29 load, with a warning."""

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data, info):
        if not isinstance(data, dict):
            return data
        return renamed_training_keys(data, (info.context or {}).get("source", "recipe"))

    def settings(self) -> dict:
        """The keys the recipe sets (an old name set after loading, as a test may, translated too)."""
        return renamed_training_keys(dict(self.__pydantic_extra__ or {}), "recipe")

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("_"):
                raise
            new = OLD_TRAINING_KEYS.get(name)
            if new and new in (self.__pydantic_extra__ or {}):
                return self.__pydantic_extra__[new]
            from vprefer.reward.trainer import config_default

            return config_default(new or name)


class RewardRecipe(Recipe):
    name: str
    backbone: Backbone
    lora: Lora = Lora(enabled=False)
    quantization: Literal["none", "8bit", "4bit"] = "none"
    freeze_ratio: float = Field(0.0, ge=0, le=1, description="freeze this share of the lower encoder layers "
                                "(ImageReward froze ~70%); an alternative to LoRA")
    aspects: list[str] = [*ASPECTS, OVERALL]
    head_hidden: int = Field(256, ge=1)
    similarity_prior: Union[bool, list[str]] = Field(
        False, description="dual encoders: start these aspects' heads (true: every head) at the backbone's zero-shot "
        "image-text score (a learned multiple of the cosine; the head's last layer at zero) instead of random, as "
        "PickScore/HPS fine-tune CLIP's score; name the aspects about the prompt, e.g. [prompt_following]")
    annotators: Optional[list[str]] = Field(None, description="train on these annotators' pairs (default: all)")
    annotator_weights: dict[str, float] = Field({}, description="multiply each pair's weight by its annotator's "
                                                "(default 1; 0 leaves the annotator out), e.g. audited human pairs "
                                                "3x the judge's; needs loss.use_pair_weights")
    init_from: Optional[str] = Field(None, description="a trained VP-Score folder to start from (its backbone "
                                     "weights and heads) instead of the pretrained backbone, e.g. to fine-tune on "
                                     "audited human pairs; same backbone kind and aspects")
    loss: Loss = Loss()
    training: Training = Field(default_factory=Training)

    @model_validator(mode="after")
    def _prior_names_aspects(self):
        if isinstance(self.similarity_prior, list) and not set(self.similarity_prior) <= set(self.aspects):
            raise ValueError(f"similarity_prior names {sorted(set(self.similarity_prior) - set(self.aspects))}, "
                             f"which are not among the aspects {self.aspects}")
        return self

    @classmethod
    def load(cls, name_or_path: str, **overrides) -> "RewardRecipe":
        return cls.from_yaml(find_asset(name_or_path, "reward"), **overrides)

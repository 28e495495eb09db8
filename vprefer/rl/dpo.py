"""Diffusion-DPO (Wallace et al.): preference pairs -> a better generator, no reward model needed.

Winner and loser latents get the same timestep and noise; the loss compares how
much better the policy denoises the winner than the loser against the same
difference for the reference. With LoRA the reference is the same UNet with its
adapters disabled (no second copy in memory); with full fine-tuning a frozen
copy is kept. Logged: implicit accuracy (share of pairs with positive inner
term) and the reward margin; watch both for the instabilities reported at high
beta.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Sequence

import polars as pl
import torch

from vprefer.rl.common import DiffusionTrainerBase, DiffusionTrainingConfig, flow_knobs
from vprefer.rl.losses import diffusion_dpo_loss, noise_mse
from vprefer.rl.noising import noise_target, sample_timesteps, training_scheduler
from vprefer.diffusion import encode, encode_images, load_pixels
from vprefer.errors import InputError
from vprefer.recipes import RecipeError
from vprefer.store import Run


@dataclass
class DiffusionDPOConfig(DiffusionTrainingConfig):
    beta: float = 5000.0
    aspect: str = "overall"
    margin_weight: bool = False
    annotators: list | None = field(default=None, metadata={"help": "whose pairs to train on; required when the run "
                                                                    "holds pairs from several annotators"})
    proportion_empty_prompts: float = field(default=0.2, metadata={"help": "share of pairs trained on the empty "
                                                                           "prompt (official Diffusion-DPO: 0.2); "
                                                                           "keeps the unconditional branch for CFG"})

    def __post_init__(self):  # before any pipeline loads, one line naming the key
        if not self.beta > 0:
            raise RecipeError(f"beta must be > 0 (Diffusion-DPO's KL weight, e.g. 5000 for SD1.5), got beta={self.beta}")
        if not 0.0 <= self.proportion_empty_prompts <= 1.0:
            raise RecipeError(f"proportion_empty_prompts must be in [0, 1], got {self.proportion_empty_prompts}")
        super().__post_init__()


@contextmanager
def dpo_data(data, aspect: str, annotators: Sequence[str] | None = None):
    """``(pairs, aspect)`` for DPO from a run directory with a pairs table, or a Pick-a-Pic parquet (imported
    into a temporary run for the duration: its images are read while training, so use it around ``train()``;
    Pick-a-Pic's labels are overall preferences, so the aspect becomes ``overall``)."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        if Path(data).suffix == ".parquet":
            from vprefer.exchange import import_pickapic

            import_pickapic(data, Path(tmp) / "run")
            data, aspect = Path(tmp) / "run", "overall"
        yield dpo_pairs(data, aspect, annotators), aspect


def dpo_pairs(run_dir, aspect: str, annotators: Sequence[str] | None = None) -> list[dict]:
    """(prompt, win_path, lose_path, margin, annotator) rows from a run's pairs table; ties dropped. With
    pairs from several annotators one must be chosen (``vprefer.rankings.training_sources``)."""
    from vprefer.errors import InputError
    from vprefer.rankings import training_sources
    from vprefer.store import as_run

    run: Run = as_run(run_dir)
    p = run.read("pairs").filter(pl.col("aspect") == aspect, ~pl.col("tie"))
    annotators = training_sources(p, annotators, where=str(run.path),
                                  option="--annotator NAME (or the recipe's annotators: [NAME])")
    p = p.filter(pl.col("annotator").is_in(list(annotators)))
    if p.height == 0:
        raise InputError(f"{run.path}: no non-tied pairs for aspect {aspect!r}"
                         + (f" from {list(annotators)}" if annotators else ""))
    paths = dict(run.image_paths().unique("image_id").select("image_id", "path").iter_rows())
    prompts = dict(run.read("prompts").select("prompt_id", "prompt").iter_rows())
    return [{"prompt": prompts[r["prompt_id"]], "win": paths[r["win_image_id"]], "lose": paths[r["lose_image_id"]],
             "margin": r["margin"], "annotator": r["annotator"]} for r in p.iter_rows(named=True)]


class DiffusionDPOTrainer(DiffusionTrainerBase):
    config: DiffusionDPOConfig

    def __init__(self, config: DiffusionDPOConfig, *, pairs: Sequence[dict], **kw):
        super().__init__(config, **kw)
        if not pairs:
            raise InputError("Diffusion-DPO needs preference pairs")
        if not 0.0 <= config.proportion_empty_prompts <= 1.0:
            raise InputError(f"proportion_empty_prompts must be in [0, 1], got {config.proportion_empty_prompts}")
        self.pairs = list(pairs)
        # its own forward process, never the pipeline's sampler: DDPM for SD, rectified flow for SD3/FLUX
        self.sched = training_scheduler(self.pipe, **flow_knobs(config))

    def before_prepare(self, unet) -> None:
        # full fine-tuning: the frozen reference is copied from the plain UNet, before FSDP could shard it
        self.ref = None if self.config.use_lora else copy.deepcopy(unet).requires_grad_(False)

    def provenance(self) -> dict:
        return {"aspect": self.config.aspect, "annotators": sorted({x.get("annotator") or "" for x in self.pairs} - {""}),
                "pairs": len(self.pairs)}

    def pair_mses(self, batch: Sequence[dict], prompts: Sequence[str], *, generator: torch.Generator | None = None,
                  sample_latents: bool | None = None):
        """Policy and reference MSE on [winners..., losers...] (shared t and noise per pair) against the family's
        target: epsilon/v for SD, the velocity ``noise - x0`` for rectified flow (the flow-matching DPO loss)."""
        c, bs, dev = self.config, len(batch), self.acc.device
        generator = self.gen if generator is None else generator  # this rank's stream unless told otherwise
        px = torch.stack([load_pixels(x[k], c.resolution) for k in ("win", "lose") for x in batch]).to(dev)
        sample = c.sample_latents if sample_latents is None else sample_latents
        lat = encode_images(self.pipe, px, sample=sample, generator=generator)  # [winners..., losers...]
        noise = torch.randn(lat[:bs].shape, generator=generator).to(dev, lat.dtype).repeat(2, 1, 1, 1)
        t = sample_timesteps(self.sched, bs, dev, generator).repeat(2)
        noisy = self.sched.add_noise(lat, noise, t)
        cond = encode(self.pipe, list(prompts) * 2, cfg=False, size=c.resolution)
        target = noise_target(self.sched, lat, noise, t)
        mse = noise_mse(self.fam.predict(self.unet, noisy, t, cond, 1.0), target)
        with torch.no_grad(), self.reference() as ref:
            ref_mse = noise_mse(self.fam.predict(ref, noisy, t, cond, 1.0), target)
        self.last_draw = {"draw/t": t[:bs].float().mean().item(), "draw/noise": noise[0].flatten()[0].item()}
        return mse, ref_mse

    def compute_loss(self) -> tuple[torch.Tensor, dict]:
        c, bs = self.config, self.config.per_device_train_batch_size
        batch = [self.rng.choice(self.pairs) for _ in range(bs)]
        prompts = ["" if self.rng.random() < c.proportion_empty_prompts else x["prompt"] for x in batch]
        mse, ref_mse = self.pair_mses(batch, prompts)
        w = torch.tensor([x["margin"] for x in batch], device=mse.device) if c.margin_weight else None
        loss, stats = diffusion_dpo_loss(mse[:bs], mse[bs:], ref_mse[:bs], ref_mse[bs:], beta=c.beta, weight=w)
        return loss, {"loss/dpo": loss.item(), **{f"dpo/{k}": v for k, v in stats.items()}, **self.last_draw}

    @torch.no_grad()
    def implicit_accuracy(self, pairs: Sequence[dict], *, draws: int = 8, seed: int = 0) -> float:
        """Share of (held-out) pairs whose implicit reward prefers the labelled winner, averaged over
        ``draws`` fixed (t, noise) draws per pair: the DPO check that does not reuse the training labels."""
        g = torch.Generator().manual_seed(seed)
        inside = torch.zeros(len(pairs))
        for _ in range(draws):
            mse, ref = self.pair_mses(pairs, [x["prompt"] for x in pairs], generator=g, sample_latents=False)
            n = len(pairs)
            inside += (-(mse[:n] - mse[n:]) + (ref[:n] - ref[n:])).float().cpu()
        return float((inside > 0).float().mean())

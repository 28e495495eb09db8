"""``vprefer demo``: the whole loop, offline, on CPU, with stand-in models and a stand-in judge.

1. a synthetic prompt + image-set dataset with known truths (``vprefer.testing.synthetic``), ingested;
2. the embedded judge server on 127.0.0.1, annotation through the real ``openai`` client path,
   with 2 permutations and a little injected trouble (429s, malformed answers, position bias);
   then a few images recaptioned (short and detailed) through the same client;
3. pairs; a tiny VP-Score trained on the judge's pairs and evaluated on a held-out world whose
   ground truth stands in for human labels (and the judge itself checked against it);
4. a short ReFL and a short Diffusion-DPO on a tiny SD-architecture pipeline;
5. ``report.html`` with the plots.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from rich.console import Console

from vprefer import report as rp
from vprefer.annotate import (
    AnnotatorPreset,
    annotate,
    build_pairs,
    position_bias,
    save_pairs,
)
from vprefer.annotate.pairs import judge_scores
from vprefer.caption import caption
from vprefer.demo_report import (
    DemoNumbers,
    caption_rows,
    before_after_reward,
    decided,
    last_value,
    summary,
)
from vprefer.demo_report import write as write_report
from vprefer.ingest import ingest
from vprefer.metrics import kendall_per_prompt, pair_metrics
from vprefer.reward import VPScore
from vprefer.reward.evaluate import evaluate_run
from vprefer.reward.recipe import RewardRecipe
from vprefer.reward.train import train_reward
from vprefer.store import Run
from vprefer.testing.judge_server import Faults, JudgeServer
from vprefer.testing.stand_ins import ensure_backbone, ensure_causal_lm, ensure_pipeline
from vprefer.testing.synthetic import write_dataset, write_truth_pairs


@dataclass
class DemoSize:
    prompts: int
    heldout: int
    epochs: float
    rl_steps: int


FULL, FAST = DemoSize(160, 60, 6, 40), DemoSize(40, 20, 1, 6)
CAPTIONED = 6  # images recaptioned in the demo (a second or two)


@dataclass
class DemoResult:
    report: Path
    summary: str


@contextlib.contextmanager
def _quiet():
    """Library chatter (progress bars, torchvision notices, LoRA-loading notes, Trainer prints) off for the demo:
    the user sees the demo's own phases and summary. Restored afterwards."""
    import diffusers
    import transformers

    tqdm_was = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    t_level, d_level = transformers.logging.get_verbosity(), diffusers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    diffusers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        if tqdm_was is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = tqdm_was
        transformers.logging.set_verbosity(t_level)
        diffusers.logging.set_verbosity(d_level)
        transformers.logging.enable_progress_bar()
        diffusers.utils.logging.enable_progress_bar()


def run_demo(out: str | Path, *, fast: bool = False, console: Console | None = None) -> DemoResult:
    console = console or Console(stderr=True)
    with _quiet():
        return _run(Path(out), FAST if fast else FULL, fast, console)


def _run(out: Path, size: "DemoSize", fast: bool, console: Console) -> DemoResult:
    t0 = time.monotonic()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cache = out / ".cache"

    def phase(msg: str):
        console.print(f"[bold cyan]▶[/] {msg}  [dim]({time.monotonic() - t0:.0f}s)[/]", soft_wrap=True)

    phase(f"1/7 synthetic dataset: {size.prompts} prompts x 4 images (+ {size.heldout} held-out prompts)")
    ingest(write_dataset(out / "data" / "train", size.prompts, 4, size=32, seed=0), out / "run")
    ingest(write_dataset(out / "data" / "heldout", size.heldout, 4, size=32, seed=11), out / "heldout")
    write_truth_pairs(out / "heldout")

    phase("2/7 annotating with the stand-in judge (embedded server scoring pixel statistics; real HTTP through "
          "the openai client, 2 orders per set, injected 429s)")
    srv = JudgeServer(faults=Faults(latency_s=0.02, rate_429=0.05, malformed_rate=0.03, position_bias=0.4,
                                    retry_after_s=0.05, seed=1)).start()
    try:
        preset = AnnotatorPreset.load("local-judge", base_url=srv.base_url, permutations=2, concurrency=8)
        ann = annotate(out / "run", preset, progress=False)
        annotate(out / "heldout", preset.model_copy(update={"permutations": 1}))  # the judge on the held-out world
        # recaptioning a few images (ShareGPT4V / DALL-E 3 style) through the same client
        caps = [caption(out / "run", preset, style=s, limit=CAPTIONED) for s in ("short", "detailed")]
    finally:
        srv.stop()
    run = Run(out / "run")
    phase(f"3/7 pairs: {ann.ok} answers ok, {ann.invalid} invalid (kept, never scored), ${ann.cost_usd:.4f} priced")
    rk, pairs = build_pairs(run)
    save_pairs(run, rk, pairs)

    phase("4/7 training a tiny stand-in VP-Score on the judge's pairs")
    recipe = RewardRecipe.load("vp-score-tiny")
    recipe.backbone.name_or_path = str(cache / "tiny-clip")
    recipe.training.epochs, recipe.training.val_fraction = size.epochs, 0.1
    recipe.training.logging_steps, recipe.training.save_steps = 10_000, 10_000
    ensure_backbone(recipe)
    train_reward(recipe, [out / "run"], out / "vp-score")
    rm = VPScore.from_pretrained(out / "vp-score")
    rm_eval = evaluate_run(rm, out / "heldout", annotator="truth", n_boot=300)
    hrun = Run(out / "heldout")
    truth_pairs = hrun.read("pairs").filter(pl.col("annotator") == "truth")
    judge_eval = judge_vs_truth(hrun, truth_pairs)

    phase("5/7 fine-tuning a tiny generator: ReFL against VP-Score, then Diffusion-DPO on the judge's pairs")
    from vprefer.rl import (
        DiffusionDPOConfig,
        DiffusionDPOTrainer,
        ReFLConfig,
        ReFLTrainer,
    )
    from vprefer.rl.common import config_from_yaml
    from vprefer.rl.dpo import dpo_pairs
    from vprefer.rl.refl import run_images
    from vprefer.rl.sample import before_after

    tiny_sd = str(cache / "tiny-sd")
    ensure_pipeline(tiny_sd, True)
    prompts = run.read("prompts")["prompt"].to_list()
    eval_prompts = hrun.read("prompts")["prompt"].to_list()[:4]
    refl_cfg = config_from_yaml(ReFLConfig, "refl-tiny", output_dir=str(out / "refl"), pretrained=tiny_sd,
                                max_steps=size.rl_steps, eval_every=max(2, size.rl_steps // 4), eval_prompts=eval_prompts,
                                report_to=[])
    ReFLTrainer(refl_cfg, prompts=prompts, reward=rm, pretrain_data=run_images(out / "run", limit=64)).train()
    dpo_cfg = config_from_yaml(DiffusionDPOConfig, "dpo-tiny", output_dir=str(out / "dpo"), pretrained=tiny_sd,
                               max_steps=size.rl_steps, eval_every=max(2, size.rl_steps // 4), eval_prompts=eval_prompts,
                               report_to=[])
    DiffusionDPOTrainer(dpo_cfg, pairs=dpo_pairs(out / "run", "overall"), reward=rm).train()
    grids = {name: before_after(out / name, eval_prompts, out / f"{name}-samples", steps=10, guidance=1.0)
             for name in ("refl", "dpo")}

    phase("6/7 prompt optimisation: a tiny stand-in rewriter trained with TRL's GRPO against VP-Score")
    from vprefer.recipes import load_config
    from vprefer.rl.prompt_opt import PromptOptConfig, PromptOptTrainer

    ensure_causal_lm(str(cache / "tiny-lm"), True)
    po_cfg = load_config(PromptOptConfig, "grpo-prompts-tiny", "rl", output_dir=str(out / "rewriter"),
                         max_steps=size.rl_steps, eval_prompts=eval_prompts, disable_tqdm=True)
    po_cfg.policy, po_cfg.generator["pretrained"] = str(cache / "tiny-lm"), tiny_sd
    po = PromptOptTrainer(po_cfg, prompts=prompts[:32], reward=rm).train()

    phase("7/7 writing the report")
    elapsed = time.monotonic() - t0
    rm_rows, dropped = decided(rm_eval["aspects"])
    judge_rows, _ = decided(judge_eval)
    numbers = DemoNumbers(ann.planned, ann.ok, ann.invalid, ann.retries, ann.est_cost_usd, ann.cost_usd, rm_rows,
                          judge_rows, dropped, rl={n: before_after_reward(out / n.lower() / "metrics.jsonl")
                                                    for n in ("ReFL", "DPO")},
                          dpo_final_acc=last_value(out / "dpo" / "metrics.jsonl", "dpo/implicit_acc"),
                          rl_steps=size.rl_steps, pixel_change={n: g["changed"] for n, g in grids.items()},
                          prompt_opt=po, captions=caption_rows(run, out),
                          caption_cost=sum(c.cost_usd for c in caps))
    figs = _figures(out, run, rm_rows, judge_rows)
    path = write_report(out, numbers, figs, grids, eval_prompts, elapsed, fast)
    return DemoResult(path, summary(numbers, out, elapsed))


def judge_vs_truth(hrun: Run, truth_pairs: pl.DataFrame) -> list[dict]:
    """The judge's mean scores (overall = mean of its aspects, as pairs use) against the truth, with Kendall tau-b."""
    js = judge_scores(hrun.read("annotations"))
    overall = (js.group_by("model", "prompt_id", "image_id").agg(pl.col("score").mean())
               .with_columns(pl.lit("overall").alias("aspect")).select(js.columns))
    js = pl.concat([js.filter(pl.col("aspect") != "overall"), overall])
    table = pair_metrics(truth_pairs, js, n_boot=300)
    rk = hrun.read("rankings").filter(pl.col("annotator") == "truth") if hrun.has("rankings") else None
    taus = kendall_per_prompt(rk, js) if rk is not None else {}
    return table.with_columns(pl.col("aspect").replace_strict(taus, default=None, return_dtype=pl.Float64)
                              .alias("kendall_tau_b")).to_dicts()


def _figures(out: Path, run: Run, rm_rows: list[dict], judge_rows: list[dict]) -> dict[str, Path]:
    figs = out / "report_files"
    return {
        "annotations": rp.plot_annotation_counts(run.read("annotations"), figs / "annotations.png"),
        "position_bias": rp.plot_position_bias(position_bias(run), figs / "position_bias.png"),
        "vpscore": rp.plot_accuracy(rm_rows, figs / "vpscore_accuracy.png", "VP-Score vs held-out truth (95% CI)"),
        "judge": rp.plot_accuracy(judge_rows, figs / "judge_accuracy.png", "stand-in judge vs held-out truth (95% CI)"),
        "curves": rp.plot_curves({"ReFL": out / "refl" / "metrics.jsonl", "DPO": out / "dpo" / "metrics.jsonl"},
                                 "eval/reward/", figs / "reward_curves.png",
                                 ylabel="VP-Score change since the start", title="held-out reward per aspect",
                                 relative=True),
        "dpo": rp.plot_curves({"DPO": out / "dpo" / "metrics.jsonl"}, "dpo/implicit_acc", figs / "dpo_implicit_acc.png",
                              ylabel="implicit accuracy", title="share of pairs preferred vs reference"),
    }

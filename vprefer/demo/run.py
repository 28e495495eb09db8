"""``vprefer demo``: the whole loop, offline, on CPU, on the stand-in world, measured on its truth.

1. the stand-in world (``vprefer.world``): the shipped world generator makes image sets for training prompts
   (with drawn "other generators" beside it); held-out prompts name colour-shape-background combinations no
   training prompt has, drawn with their truth;
2. the embedded judge server on 127.0.0.1 reads the images by their pixels with noise and a position bias,
   through the real ``openai`` client path, 2 orders per set and a little injected trouble (429s, malformed
   answers); then a few images recaptioned (short and detailed) through the same client;
3. pairs; VP-Score (LoRA on the world's pretrained CLIP) trained on the judge's pairs and checked against the
   held-out truth (and the judge itself checked against it);
4. ReFL and Diffusion-DPO on the world generator, and GRPO on the world's pretrained prompt rewriter, each
   measured on held-out prompts and seeds by the truth reader, before -> after, next to its reward;
5. ``report.html`` with the plots and the before/after grids.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import polars as pl
from rich.console import Console

from vprefer import pages as rp
from vprefer.annotate import (
    AnnotatorPreset,
    annotate,
    build_pairs,
    position_bias,
    save_pairs,
)
from vprefer.annotate.pairs import judge_scores
from vprefer.caption import caption
from vprefer.demo.page import (
    HELDOUT,
    DemoNumbers,
    caption_rows,
    before_after_reward,
    decided,
    last_value,
    summary,
)
from vprefer.demo.page import write as write_report
from vprefer.metrics import kendall_per_prompt, pair_metrics
from vprefer.reward import VPScore
from vprefer.reward.evaluate import evaluate_run
from vprefer.store import Run
from vprefer.judge_server.server import Faults, JudgeServer
from vprefer.world import loop as wl
from vprefer.world import truth_eval, world_prompts
from vprefer.world.prompts import HELD_OUT_COMBOS
from vprefer.world.reward_check import write_world_run

# the demo's sizes: smaller than the closed loop's (benchmarks/closed_loop.py), to stay within 3 minutes on an
# idle 2-core machine; the judge is asked in 2 orders so the position-bias plot has both
FULL = replace(wl.LoopConfig.small(), permutations=2, reward_epochs=2, refl_steps=16, dpo_steps=120, grpo_steps=8,
               eval_seeds=3)
FAST = replace(FULL, reward_epochs=1, refl_steps=2, dpo_steps=4, grpo_steps=1, eval_seeds=1)
REFL_BATCH = 4  # the recipe's 8 halved: a ReFL update samples the whole rollout
HELDOUT_SETS = {False: 2, True: 1}  # drawn image sets per held-out prompt (full, fast)
CAPTIONED = 6  # images recaptioned in the demo (a second or two)
LABELS = {"refl": "ReFL", "dpo": "DPO", "grpo": "GRPO rewriter"}


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


def _run(out: Path, c: wl.LoopConfig, fast: bool, console: Console) -> DemoResult:
    t0 = time.monotonic()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    s = wl.Stages(out)

    def phase(msg: str):
        console.print(f"[bold cyan]▶[/] {msg}  [dim]({time.monotonic() - t0:.0f}s)[/]", soft_wrap=True)

    n_train = len(wl.training_prompts(c))
    phase(f"1/7 the stand-in world: the shipped world generator draws {n_train} training prompts x "
          f"{c.images_per_set} images (+ {c.other_images_per_set} from drawn 'other generators'); "
          f"{len(HELD_OUT_COMBOS)} held-out prompts (combinations never trained on) drawn with their truth")
    wl.prepare(s)
    wl.image_sets(s, c)
    write_world_run(out / "heldout-images", world_prompts(len(HELD_OUT_COMBOS), 0, held_out=True),
                    sets_per_prompt=HELDOUT_SETS[fast], images_per_set=4, seed=11, held_out=True,
                    run_dir=out / HELDOUT)

    phase("2/7 annotating with the stand-in judge (an embedded server reading the world's pixels with noise and a "
          "first-position bias; real HTTP through the openai client, 2 orders per set, injected 429s)")
    srv = JudgeServer(faults=Faults(latency_s=0.02, rate_429=0.05, malformed_rate=0.03, position_bias=c.position_bias,
                                    judge_noise=c.judge_noise, retry_after_s=0.05, seed=1)).start()
    try:
        preset = AnnotatorPreset.load("local-judge", base_url=srv.base_url, permutations=c.permutations, concurrency=8)
        ann = annotate(s.run, preset, progress=False)
        annotate(out / HELDOUT, preset.model_copy(update={"permutations": 1}))  # the judge on the held-out prompts
        # recaptioning a few images (ShareGPT4V / DALL-E 3 style) through the same client
        caps = [caption(s.run, preset, style=st, limit=CAPTIONED) for st in ("short", "detailed")]
    finally:
        srv.stop()
    run = Run(s.run)
    phase(f"3/7 pairs: {ann.ok} answers ok, {ann.invalid} invalid (kept, never scored), ${ann.cost_usd:.4f} priced")
    rk, pairs = build_pairs(run)
    save_pairs(run, rk, pairs)

    phase("4/7 training VP-Score (LoRA on the world's pretrained CLIP) on the judge's pairs")
    wl.reward_model(s, c)
    rm = VPScore.from_pretrained(s.vpscore)
    rm_eval = evaluate_run(rm, out / HELDOUT, annotator="truth", n_boot=300)
    hrun = Run(out / HELDOUT)
    judge_eval = judge_vs_truth(hrun, hrun.read("pairs").filter(pl.col("annotator") == "truth"))

    phase(f"5/7 fine-tuning the world generator: ReFL against VP-Score ({c.refl_steps} steps), Diffusion-DPO on "
          f"the judge's pairs ({c.dpo_steps} steps); each measured on the held-out prompts' truth")
    items = wl.held_out_items(c)
    eval_prompts = sorted(set(items[0]))[:4]
    every = {"eval_prompts": eval_prompts}
    c = replace(c, overrides={"refl": {**every, "eval_every": max(2, c.refl_steps // 2),
                                       "per_device_train_batch_size": REFL_BATCH},
                              "dpo": {**every, "eval_every": max(2, c.dpo_steps // 4)},
                              "grpo": {"eval_prompts": eval_prompts}})
    wl.run_refl(s, c)
    wl.run_dpo(s, c)
    aspects = {"prompt_following": 1.0}
    truth, grids, base = {}, {}, None

    def measure(name: str) -> None:
        nonlocal base
        truth[name] = wl.measure(s, c, name, items, rm, aspects, before=base)
        base, after = truth[name].pop("_readings")
        grids[name] = truth_eval.grid(base, after, out / "report_files" / f"{name}_truth.png")

    measure("refl")
    measure("dpo")
    phase(f"6/7 prompt optimisation: the world's pretrained rewriter trained with TRL's GRPO against VP-Score "
          f"({c.grpo_steps} steps)")
    po = wl.run_grpo(s, c)
    measure("grpo")

    phase("7/7 writing the report")
    elapsed = time.monotonic() - t0
    rm_rows, dropped = decided(rm_eval["aspects"])
    judge_rows, _ = decided(judge_eval)
    numbers = DemoNumbers(ann.planned, ann.ok, ann.invalid, ann.retries, ann.est_cost_usd, ann.cost_usd, rm_rows,
                          judge_rows, dropped, rl={LABELS[n]: before_after_reward(out / n / "metrics.jsonl",
                                                                                   "eval/reward/prompt_following")
                                                    for n in ("refl", "dpo")},
                          dpo_final_acc=last_value(out / "dpo" / "metrics.jsonl", "dpo/implicit_acc"),
                          rl_steps={LABELS[n]: getattr(c, f"{n}_steps") for n in ("refl", "dpo", "grpo")},
                          truth={LABELS[n]: t for n, t in truth.items()}, prompt_opt=po,
                          captions=caption_rows(run, out), caption_cost=sum(x.cost_usd for x in caps))
    figs = _figures(out, run, rm_rows, judge_rows)
    path = write_report(out, numbers, figs, {LABELS[n]: g for n, g in grids.items()}, elapsed, fast)
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

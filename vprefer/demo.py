"""``vprefer demo``: the whole loop, offline, on CPU, with stand-in models and a stand-in judge.

1. a synthetic prompt + image-set dataset with known truths (``vprefer.testing.synthetic``), ingested;
2. the embedded judge server on 127.0.0.1, annotation through the real ``openai`` client path,
   with 2 permutations and a little injected trouble (429s, malformed answers, position bias);
3. pairs; a tiny VP-Score trained on the judge's pairs and evaluated on a held-out world whose
   ground truth stands in for human labels (and the judge itself checked against it);
4. a short ReFL and a short Diffusion-DPO on a tiny SD-architecture pipeline;
5. ``report.html`` with the plots.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from rich.console import Console

from vprefer import report as rp
from vprefer.annotate import AnnotatorPreset, annotate, build_pairs, position_bias, save_pairs
from vprefer.annotate.pairs import judge_scores
from vprefer.testing.judge_server import Faults, JudgeServer
from vprefer.ingest import ingest
from vprefer.reward import VPScore
from vprefer.metrics import pair_metrics
from vprefer.reward.evaluate import evaluate_run
from vprefer.reward.recipe import RewardRecipe
from vprefer.reward.train import train_reward
from vprefer.store import Run
from vprefer.testing.stand_ins import ensure_backbone, ensure_pipeline
from vprefer.testing.synthetic import write_dataset, write_truth_pairs

STAND_IN_NOTE = (
    "<p class='note'><b>Stand-ins were used.</b> The judge is vprefer's embedded OpenAI-compatible server, "
    "which scores images by pixel statistics, not a multimodal LLM. The reward model and the generator are tiny "
    "random-initialised networks built from configs, trained for seconds on CPU; the images are procedurally "
    "drawn. The point is that every stage runs through the real code paths. To run the same with real models: "
    "<code>OPENAI_API_KEY=... vprefer annotate RUN --annotator gpt-4o</code> (or a vLLM server with "
    "<code>--annotator vllm-qwen2-vl</code>), <code>vprefer train-reward --recipe reward/vp-score-clip-lora.yaml</code>, "
    "<code>accelerate launch -m vprefer rl refl --recipe rl/refl-sd15.yaml ...</code> — see the README walkthrough.</p>")


@dataclass
class DemoSize:
    prompts: int
    heldout: int
    epochs: float
    rl_steps: int


FULL, FAST = DemoSize(160, 60, 6, 40), DemoSize(40, 20, 1, 6)


def run_demo(out: str | Path, *, fast: bool = False, console: Console | None = None) -> Path:
    size = FAST if fast else FULL
    out = Path(out)
    console = console or Console(stderr=True)
    t0 = time.monotonic()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cache = out / ".cache"

    def phase(msg: str):
        console.print(f"[bold cyan]▶[/] {msg}  [dim]({time.monotonic() - t0:.0f}s)[/]")

    phase(f"1/6 synthetic dataset: {size.prompts} prompts x 4 images (+ {size.heldout} held-out prompts)")
    ingest(write_dataset(out / "data" / "train", size.prompts, 4, size=32, seed=0), out / "run")
    ingest(write_dataset(out / "data" / "heldout", size.heldout, 4, size=32, seed=11), out / "heldout")
    write_truth_pairs(out / "heldout")

    phase("2/6 annotating with the embedded judge (real HTTP, openai client, 2 permutations, injected 429s)")
    srv = JudgeServer(faults=Faults(latency_s=0.02, rate_429=0.05, malformed_rate=0.03, position_bias=0.4,
                                    retry_after_s=0.05, seed=1)).start()
    try:
        preset = AnnotatorPreset.load("local-judge", base_url=srv.base_url, permutations=2, concurrency=8)
        ann = annotate(out / "run", preset, progress=console.is_terminal)
        annotate(out / "heldout", preset.model_copy(update={"permutations": 1}))  # the judge on the held-out world
    finally:
        srv.stop()
    run = Run(out / "run")
    phase(f"3/6 pairs: {ann.ok} answers ok, {ann.invalid} invalid (kept, never scored), ${ann.cost_usd:.4f} priced")
    rk, pairs = build_pairs(run)
    save_pairs(run, rk, pairs)

    phase("4/6 training a tiny VP-Score on the judge's pairs")
    recipe = RewardRecipe.load("vp-score-tiny")
    recipe.backbone.name_or_path = str(cache / "tiny-clip")
    recipe.training.epochs, recipe.training.val_fraction = size.epochs, 0.1
    recipe.training.logging_steps, recipe.training.save_steps = 10_000, 10_000
    os.environ.setdefault("TQDM_DISABLE", "1")
    ensure_backbone(recipe)
    train_reward(recipe, [out / "run"], out / "vp-score")
    rm = VPScore.from_pretrained(out / "vp-score")
    rm_eval = evaluate_run(rm, out / "heldout", annotator="truth", n_boot=300)
    hrun = Run(out / "heldout")
    truth_pairs = hrun.read("pairs").filter(pl.col("annotator") == "truth")
    judge_eval = pair_metrics(truth_pairs, judge_scores(hrun.read("annotations")), n_boot=300).to_dicts()

    phase("5/6 fine-tuning a tiny generator: ReFL against VP-Score, then Diffusion-DPO on the judge's pairs")
    from vprefer.rl import DiffusionDPOConfig, DiffusionDPOTrainer, ReFLConfig, ReFLTrainer
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

    phase("6/6 writing the report")
    path = _report(out, run, ann, rm_eval, judge_eval, grids, time.monotonic() - t0, fast)
    console.print(f"[bold green]done[/] in {time.monotonic() - t0:.0f}s: open {path}")
    return path


def _report(out: Path, run: Run, ann, rm_eval: dict, judge_eval: list[dict], grids: dict, elapsed: float,
            fast: bool) -> Path:
    figs = out / "report_files"
    a = run.read("annotations")
    p1 = rp.plot_annotation_counts(a, figs / "annotations.png")
    p2 = rp.plot_position_bias(position_bias(run), figs / "position_bias.png")
    p3 = rp.plot_accuracy(rm_eval["aspects"], figs / "vpscore_accuracy.png", "VP-Score vs held-out truth (95% CI)")
    p4 = rp.plot_accuracy(judge_eval, figs / "judge_accuracy.png", "stand-in judge vs held-out truth (95% CI)")
    p5 = rp.plot_curves({"ReFL": out / "refl" / "metrics.jsonl", "DPO": out / "dpo" / "metrics.jsonl"},
                        "eval/reward/", figs / "reward_curves.png")
    p6 = rp.plot_curves({"DPO": out / "dpo" / "metrics.jsonl"}, "dpo/implicit_acc", figs / "dpo_implicit_acc.png")
    cols = ["aspect", "pairs", "gold_ties", "acc_skip_ties", "ci_skip_lo", "ci_skip_hi", "acc_ties_half", "kendall_tau_b"]
    grid_html = "".join(f"<h3>{n}</h3><p>top: before, bottom: after (same prompts and seeds)</p>"
                        f"{rp.img(Path(g['pair']), out, n + ' before/after')}" for n, g in grids.items())
    return rp.write_html(out / "report.html", "vprefer demo report", [
        ("What this is", STAND_IN_NOTE + f"<p>{'Fast mode. ' if fast else ''}Ran in {elapsed:.0f}s.</p>"),
        ("Annotation", f"<p>{ann.planned} requests ({ann.ok} ok, {ann.invalid} invalid), "
                       f"{ann.retries} retries after injected 429s, estimated ${ann.est_cost_usd:.4f}, "
                       f"priced ${ann.cost_usd:.4f} at GPT-4o rates.</p>" + rp.img(p1, out, "annotation counts")),
        ("Position bias", "<p>Mean score by shown position minus the overall mean (the stand-in judge was given a "
                          "bias for the first position; permutations average it out of the pairs).</p>"
         + rp.img(p2, out, "position bias")),
        ("Reward model accuracy", "<p>Tie rules: <i>acc_skip_ties</i> skips gold ties and counts a predicted tie as "
                                  "wrong (ImageReward); <i>acc_ties_half</i> gives ties half credit (PickScore-style). "
                                  "CIs resample prompts.</p>" + rp.img(p3, out, "VP-Score accuracy")
         + rp.table_html(rm_eval["aspects"], cols)),
        ("Judge vs truth", "<p>How well the stand-in judge itself agrees with the held-out truth.</p>"
         + rp.img(p4, out, "judge accuracy") + rp.table_html(judge_eval, cols[:-1])),
        ("Fine-tuning", rp.img(p5, out, "reward curves") + rp.img(p6, out, "DPO implicit accuracy")),
        ("Before / after", grid_html),
    ])

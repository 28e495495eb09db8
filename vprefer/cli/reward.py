"""Reward-model commands: train-reward, eval-reward, score."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from vprefer.cli._app import app, console, fail, load_recipe, out, overrides_argument
from vprefer.store import as_run


@app.command("train-reward")
def train_reward(
    recipe: str = typer.Option(..., "--recipe", help="reward/NAME.yaml (or a recipe name)."),
    data: str = typer.Option(..., "--data", help="Run directory, or several separated by commas."),
    out_dir: Path = typer.Option(..., "--out", help="Folder for the trained VP-Score (and checkpoints/, runs/)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in OUT/checkpoints."),
    annotator: Optional[str] = typer.Option(None, "--annotator", help="Train on these annotators' pairs: NAME, or "
                                            "NAME=WEIGHT,... to mix them (e.g. human=3,judge=1: a human pair counts "
                                            "3x). Overrides the recipe's annotators / annotator_weights."),
    init: Optional[Path] = typer.Option(None, "--init", help="Start from this trained VP-Score folder (fine-tune, "
                                        "e.g. on audited human pairs) instead of the pretrained backbone."),
    overrides: Optional[List[str]] = overrides_argument(),
) -> None:
    """Train VP-Score on a run's preference pairs (pairwise Bradley-Terry, split by prompt).

    Runs on one CPU or GPU as is; `accelerate launch -m vprefer train-reward ...` runs it on several GPUs. Any key of
    the recipe can be set after the options, dotted into its sections, e.g. `training.learning_rate=5e-4 lora.r=8`
    (the training: section's keys are VPScoreConfig's, i.e. TrainingArguments names).
    """
    from vprefer.progress import no_bars_without_a_terminal
    from vprefer.reward.recipe import RewardRecipe

    r = load_recipe(RewardRecipe, recipe, "reward", overrides)  # a typo is reported before torch is imported
    if annotator:
        r.annotators, r.annotator_weights = parse_annotators(annotator)
    if init is not None:
        if not (init / "vpscore_config.json").exists():
            fail(f"--init {init}: not a trained VP-Score folder")
        r.init_from = str(init.resolve())
    runs = [d.strip() for d in data.split(",")]
    for d in runs:
        as_run(d)  # a wrong --data fails in one line before any model is built or OUT is made
    from vprefer.dist import state
    from vprefer.reward.train import train_reward as train_api, training_config

    args = training_config(r, out_dir, has_val=True)  # the training: section (a VPScoreConfig) is checked first
    for key, v in r.training.settings().items():  # training.learning_rate=5e-4: YAML 1.1 reads a string; the
        if isinstance(v, str) and isinstance(getattr(args, key), (int, float)):  # saved recipe.yaml holds the number
            setattr(r.training, key, getattr(args, key))
    from vprefer.testing.stand_ins import ensure_backbone

    no_bars_without_a_terminal()
    main = state()
    with main.main_process_first():  # several processes: the stand-in backbone is built once
        ensure_backbone(r)
    s = train_api(r, runs, out_dir, resume=resume)
    if not main.is_main_process:
        return
    if (w := split_warning(s, r.training.val_fraction)) is not None:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)
    out.print(f"trained {r.name}: {s['train_pairs']:,} train pairs ({s['train_prompts']} prompts), "
              f"{s['val_pairs']:,} validation pairs, {s['steps']} steps, loss {s['train_loss']:.4f}")
    if "val" in s:
        out.print(f"validation pair accuracy (ties skipped): {s['val'].get('eval_pair_accuracy', float('nan')):.3f}")
    out.print(f"saved to {out_dir}; TensorBoard logs under {out_dir}/checkpoints")


def split_warning(summary: dict, val_fraction: float) -> str | None:
    """A validation split that leaves almost nothing to train on (1 prompt of 3 at val_fraction 0.25: prompts are
    held out whole) deserves a word: the accuracy printed next is of a model that saw one prompt."""
    t, v = summary.get("train_prompts", 0), summary.get("val_prompts", 0)
    if v and (t < 3 or t < v):
        return (f"the validation split held out {v} of {t + v} prompts (training.val_fraction {val_fraction}), "
                f"leaving {t} to train on; with this little data set training.val_fraction: 0 in the recipe "
                "(or add prompts)")
    return None


def parse_annotators(text: str) -> tuple[list[str], dict[str, float]]:
    """``human`` or ``human=3,judge=1`` -> (names, weights)."""
    names, weights = [], {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, eq, w = part.partition("=")
        names.append(name.strip())
        if eq:
            try:
                weights[name.strip()] = float(w)
            except ValueError:
                fail(f"--annotator {text!r}: weight {w!r} of {name!r} is not a number")
    return names, weights


def eval_table(rep: dict) -> Table:
    t = Table("aspect", "pairs", "gold ties", "acc (ties skipped)", "95% CI", "acc (ties half)", "95% CI",
              "Kendall tau-b", title=f"VP-Score vs {rep['annotator']}")
    for a in rep["aspects"]:
        f = lambda x: "-" if x is None or x != x else f"{x:.3f}"  # noqa: E731
        t.add_row(a["aspect"], f"{a['pairs']:,}", f"{a['gold_ties']:,}", f(a["acc_skip_ties"]),
                  f"[{f(a['ci_skip_lo'])}, {f(a['ci_skip_hi'])}]", f(a["acc_ties_half"]),
                  f"[{f(a['ci_half_lo'])}, {f(a['ci_half_hi'])}]", f(a.get("kendall_tau_b")))
    return t


@app.command("eval-reward")
def eval_reward(
    model: str = typer.Argument(..., help="VP-Score folder or hub id."),
    data: Path = typer.Option(..., "--data", help="Run directory, or an exchange file (see --format)."),
    fmt: str = typer.Option("vprefer", "--format", help="vprefer | imagereward | hpdv2 | pickapic"),
    images_root: Optional[Path] = typer.Option(None, "--images-root", help="For imagereward/hpdv2 files."),
    annotator: Optional[str] = typer.Option(None, help="Gold annotator (default: human if present)."),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap resamples of prompts for the CIs."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Where to save the JSON report "
                                            "(default: MODEL/eval-<data name>.json)."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="Another VP-Score (e.g. the one before "
                                           "fine-tuning on human pairs) evaluated on the same pairs, with the change."),
    held_out: bool = typer.Option(False, "--held-out", help="Only the prompts MODEL held out from training "
                                  "(MODEL/held_out.json), so a fine-tune is not judged on its own training pairs."),
) -> None:
    """Pairwise accuracy per aspect under both tie rules, Kendall tau-b, bootstrap 95% CIs over prompts."""
    from vprefer.reward.evaluate import evaluate_reward

    rep = evaluate_reward(model, data, fmt=fmt, images_root=images_root, annotator=annotator, n_boot=n_boot,
                          baseline=baseline, held_out=held_out)
    before = rep.get("baseline")
    out.print(eval_table(rep))
    if before is not None:
        b = {a["aspect"]: a for a in rep["baseline"]["aspects"]}
        t = Table("aspect", "baseline acc", "95% CI", "model acc", "95% CI", "change",
                  title=f"{model} vs baseline {baseline} on {rep['prompts']} prompts" + (" (held out)" if held_out else ""))
        f = lambda x: "-" if x is None or x != x else f"{x:.3f}"  # noqa: E731
        for a in rep["aspects"]:
            o = b.get(a["aspect"], {})
            d = a["acc_skip_ties"] - o.get("acc_skip_ties", float("nan"))
            t.add_row(a["aspect"], f(o.get("acc_skip_ties")), f"[{f(o.get('ci_skip_lo'))}, {f(o.get('ci_skip_hi'))}]",
                      f(a["acc_skip_ties"]), f"[{f(a['ci_skip_lo'])}, {f(a['ci_skip_hi'])}]",
                      "-" if d != d else f"{d:+.3f}")
        out.print(t)
    for k, v in rep["tie_rules"].items():
        out.print(f"  {k}: {v}")
    target = json_out or (Path(model) / f"eval-{data.stem}.json" if Path(model).is_dir() else Path(f"eval-{data.stem}.json"))
    target.write_text(json.dumps(rep, indent=2))
    out.print(f"saved {target}")


@app.command()
def score(
    model: str = typer.Argument(..., help="VP-Score folder or hub id."),
    images: Optional[List[Path]] = typer.Argument(None, help="Image files (with --prompt)."),
    run_dir: Optional[Path] = typer.Option(None, "--run", help="Score every image of a run into its 'scores' table."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="Prompt for the ad-hoc IMAGE files."),
    batch_size: int = typer.Option(32, "--batch-size", help="Images scored per forward pass."),
    fmt: str = typer.Option("table", "--format", help="table (for people) | json | csv (for scripts: the scores "
                            "on stdout; with --run, one row per image and aspect)."),
) -> None:
    """Score images: a whole run (writes the 'scores' table) or ad-hoc files with --prompt."""
    from vprefer.reward import VPScore
    from vprefer.reward.scoring import score_run  # imports torch only when called

    if fmt not in ("table", "json", "csv"):
        fail(f"unknown format {fmt!r}; --format is one of: table, json, csv")
    if (run_dir is None) == (prompt is None):
        fail("give either --run RUN, or --prompt TEXT with image files")
    if run_dir is not None:
        r = score_run(model, run_dir, batch_size=batch_size)
        if fmt != "table":
            rows = r.scores.select("image_id", "prompt_id", "aspect", "score")
            sys.stdout.write(rows.write_csv() if fmt == "csv" else json.dumps(rows.to_dicts(), indent=1) + "\n")
            return
        out.print(f"scored {r.images:,} images x {len(r.aspects)} aspects into {run_dir}/tables/scores")
        return
    if not images:
        fail("no image files given")
    missing = [p for p in images if not p.is_file()]
    if missing:
        fail(f"{missing[0]}: no such image file")
    rm = VPScore.from_pretrained(model)
    s = rm.score(prompt, [str(p) for p in images], batch_size=batch_size)
    if fmt != "table":
        rows = [{"image": str(p), **{a: float(s[a][k]) for a in rm.aspects}} for k, p in enumerate(images)]
        if fmt == "json":
            sys.stdout.write(json.dumps(rows, indent=1) + "\n")
        else:
            w = csv.DictWriter(sys.stdout, fieldnames=["image", *rm.aspects], lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
        return
    t = Table("image", *rm.aspects, title="VP-Score (0 = average training image, +1 = one std better)")
    for k, p in enumerate(images):
        t.add_row(str(p), *[f"{s[a][k]:+.3f}" for a in rm.aspects])
    out.print(t)

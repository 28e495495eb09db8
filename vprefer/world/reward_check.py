"""World image sets with two annotators' pairs, to measure a VP-Score against the world's truth.

Image sets are :mod:`vprefer.world.judge_check`'s (one plain world prompt each, every attribute right
about half the time, size, artefacts and the badge varied), and each set gets pairs from two annotators:

* ``truth`` — the truth reader on the pixels (values closer than ``TRUTH_MARGIN`` tie): what a reward
  model is measured against;
* ``judge`` — the stand-in judge's 1-5 scores (``vprefer judge-server``'s scoring, with its Gaussian
  noise and first-position bias): what a reward model learns from, right often but not always.

Training runs draw no held-out (colour, shape, background) triple, not even as a wrong image, so a
held-out run's prompts and its triples are all new to a model trained on a training run.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Sequence

from vprefer.world.judge_check import scene_for, stand_in_judge
from vprefer.world.prompts import HELD_OUT_COMBOS
from vprefer.world.reader import truth
from vprefer.world.scenes import Scene, draw

ASPECT_KEYS = ("prompt_following", "aesthetics", "fidelity", "harmlessness")
TRUTH_MARGIN = 0.1  # truth values closer than this are a tie (as vprefer.world.judge_check counts them)


def _scene(rng: random.Random, prompt: str, allow_held_out: bool) -> Scene:
    held = set(HELD_OUT_COMBOS)
    while True:
        s = scene_for(rng, prompt)
        if allow_held_out or (s.colour, s.shape, s.background) not in held:
            return s


def write_world_run(folder: str | Path, prompts: Sequence[str], *, sets_per_prompt: int = 3,
                    images_per_set: int = 6, size: int = 32, seed: int = 0, judge_noise: float = 1.0,
                    position_bias: float = 0.4, held_out: bool = False, run_dir: str | Path | None = None) -> Path:
    """Draw the image sets, ingest them into ``run_dir`` (default ``folder/run``) and write ``truth`` and
    ``judge`` pairs for every aspect and ``overall`` (the sum of the four, as the judge ranks it); returns
    the run folder. ``held_out``: the prompts are held-out ones, so their triples may be drawn."""
    from vprefer import ids, schema
    from vprefer.annotate.pairs import save_pairs
    from vprefer.ingest import ingest
    from vprefer.rankings import ranking_pairs
    from vprefer.store import Run

    folder = Path(folder)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    judge = stand_in_judge(noise=judge_noise, position_bias=position_bias, seed=seed)
    lines = []
    for p, prompt in enumerate(prompts):
        for k in range(sets_per_prompt):
            ims = [draw(_scene(rng, prompt, held_out), size, seed=seed * 1_000_003 + (p * 97 + k) * 31 + j)
                   for j in range(images_per_set)]
            said = judge(prompt, ims)
            paths, truths, judged = [], [], []
            for j, im in enumerate(ims):
                rel = f"img/{p:04d}_{k}_{j}.png"
                im.save(folder / rel)
                t = truth(prompt, im)
                paths.append(rel)
                truths.append({a: float(t[a]) for a in ASPECT_KEYS})
                judged.append({a: float(said[a][j]) for a in ASPECT_KEYS})
            lines.append({"prompt": prompt, "prompt_id": f"{ids.prompt_id(prompt)}-{k}", "images": paths,
                          "generator": "world", "seeds": list(range(images_per_set)),
                          "meta": {"truth": truths, "judge": judged}})
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    run_dir = Path(run_dir) if run_dir is not None else folder / "run"
    ingest(manifest, run_dir)
    run = Run(run_dir)
    imgs = run.read("images").join(run.read("prompts"), on="prompt_id").sort("prompt_id", "seed")
    rankings, pairs = [], []
    for (pid,), g in imgs.group_by(["prompt_id"], maintain_order=True):
        meta = json.loads(g["meta"][0])
        image_ids = g["image_id"].to_list()
        ks = g["seed"].to_list()
        for who, margin in (("truth", TRUTH_MARGIN), ("judge", 0.0)):
            for a in (*ASPECT_KEYS, "overall"):
                sc = [sum(meta[who][k].values()) if a == "overall" else meta[who][k][a] for k in ks]
                rankings.append({"prompt_id": pid, "aspect": a, "annotator": who, "image_ids": image_ids,
                                 "scores": [float(x) for x in sc], "confidence": 1.0})
                pairs += ranking_pairs(pid, image_ids, sc, a, who, min_margin=margin)
    save_pairs(run, schema.frame("rankings", rankings), schema.frame("pairs", pairs))
    return run_dir


def accuracy(model, run_dir: str | Path, n_boot: int = 200) -> dict[str, dict]:
    """Pairwise accuracy of ``model`` against the truth (truth ties skipped, a predicted tie wrong), per
    aspect, with its 95% bootstrap CI over image sets: ``{aspect: {"accuracy": a, "ci": [lo, hi]}}``."""
    from vprefer.reward.evaluate import evaluate_run

    rows = evaluate_run(model, run_dir, annotator="truth", n_boot=n_boot)["aspects"]
    return {r["aspect"]: {"accuracy": r["acc_skip_ties"], "ci": [r["ci_skip_lo"], r["ci_skip_hi"]]} for r in rows}


def judge_accuracy(run_dir: str | Path) -> dict[str, float]:
    """How often the judge's scores order the truth-decided pairs as the truth does, per aspect, a judge tie
    counting half (as :func:`vprefer.world.judge_check.agreement` counts it; a reward model's tie counts
    wrong): the judge's own accuracy, which a reward model that learned from it is compared with."""
    import polars as pl

    from vprefer.store import Run

    run = Run(run_dir)
    imgs = run.read("images").join(run.read("prompts"), on="prompt_id")
    said = {}
    for pid, iid, seed, meta in imgs.select("prompt_id", "image_id", "seed", "meta").iter_rows():
        j = json.loads(meta)["judge"][seed]
        said[(pid, iid)] = {**j, "overall": sum(j.values())}
    hits: dict[str, list[float]] = {}
    truth_pairs = run.read("pairs").filter(pl.col("annotator") == "truth", ~pl.col("tie"))
    for pid, w, lo, a in truth_pairs.select("prompt_id", "win_image_id", "lose_image_id", "aspect").iter_rows():
        d = said[(pid, w)][a] - said[(pid, lo)][a]
        hits.setdefault(a, []).append(0.5 if d == 0 else float(d > 0))
    return {a: sum(v) / len(v) for a, v in sorted(hits.items())}

"""Human-AI agreement: pairwise accuracy (both tie rules), Kendall tau-b, quadratic-weighted Cohen's kappa,
Krippendorff's alpha over all raters, the human-human ceiling, bootstrap 95% CIs over prompts."""

from __future__ import annotations

from itertools import permutations

import krippendorff
import numpy as np
import polars as pl
from sklearn.metrics import cohen_kappa_score

from vprefer import schema
from vprefer.errors import InputError
from vprefer.annotate.pairs import judge_scores
from vprefer.rankings import ranking_pairs
from vprefer.metrics import kendall_per_prompt, pair_metrics


def qw_kappa(a, b, scale_max: int = 5) -> float:
    """Quadratic-weighted Cohen's kappa on integer scores 1..scale_max (NaN when undefined)."""
    a, b = np.rint(np.asarray(a, float)).astype(int), np.rint(np.asarray(b, float)).astype(int)
    if len(a) < 2 or (len(set(a)) == 1 and len(set(b)) == 1 and a[0] == b[0]):
        return float("nan")
    return float(cohen_kappa_score(a, b, weights="quadratic", labels=list(range(1, scale_max + 1))))


def kappa_with_ci(df: pl.DataFrame, n_boot: int, seed: int, scale_max: int = 5) -> tuple[float, float, float]:
    """``df``: prompt_id, h, j. Point estimate and a 95% bootstrap CI resampling prompts."""
    k = qw_kappa(df["h"], df["j"], scale_max)
    # sorted, because group_by order is random and the seed alone would not fix the CI
    groups = [g for _, g in df.sort("prompt_id").group_by(["prompt_id"], maintain_order=True)]
    if len(groups) < 2:
        return k, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        pick = pl.concat([groups[i] for i in rng.integers(0, len(groups), len(groups))])
        v = qw_kappa(pick["h"], pick["j"], scale_max)
        if not np.isnan(v):
            boots.append(v)
    return k, (float(np.percentile(boots, 2.5)) if boots else float("nan")), (float(np.percentile(boots, 97.5)) if boots else float("nan"))


def human_human(human: pl.DataFrame) -> dict:
    """Agreement between humans on the same tasks: each human in turn as gold for each other.

    Every ordered pair of distinct raters counts (never a rater with themselves, which would
    inflate the ceiling); pair accuracy and kappa are pooled over all of them, so the kappa
    does not depend on which rater happens to come first."""
    sc = human.filter(pl.col("score").is_not_null())
    multi = sc.group_by("task_id").agg(pl.col("annotator").n_unique().alias("n")).filter(pl.col("n") >= 2)["task_id"]
    sc = sc.filter(pl.col("task_id").is_in(multi.to_list()))
    if sc.height == 0:
        return {"tasks": 0}
    accs, kap_a, kap_b = [], [], []
    for (tid,), g in sc.group_by(["task_id"]):
        anns = g["annotator"].unique().to_list()
        for a, b in permutations(anns, 2):
            ga, gb = g.filter(pl.col("annotator") == a), g.filter(pl.col("annotator") == b)
            gold = [p for (pid, aspect), x in ga.group_by(["prompt_id", "aspect"])
                    for p in ranking_pairs(pid, x["image_id"].to_list(), x["score"].to_list(), aspect, a)]
            other = {(r["image_id"], r["aspect"]): r["score"] for r in gb.iter_rows(named=True)}
            for p in gold:
                if not p["tie"]:
                    sw, sl = other.get((p["win_image_id"], p["aspect"])), other.get((p["lose_image_id"], p["aspect"]))
                    if sw is not None and sl is not None:
                        accs.append(1.0 if sw > sl else 0.0)
            both = ga.join(gb, on=["image_id", "aspect"]).select("score", "score_right")
            kap_a += both["score"].to_list()
            kap_b += both["score_right"].to_list()
    return {"tasks": multi.len(), "pair_accuracy_skip_ties": float(np.mean(accs)) if accs else float("nan"),
            "qw_kappa": qw_kappa(kap_a, kap_b) if kap_a else float("nan")}


def alpha_all_raters(human: pl.DataFrame, judge: pl.DataFrame, aspect: str) -> float:
    """Krippendorff's alpha (ordinal) over every human rater and the judge, on (image, aspect) items."""
    h = human.filter(pl.col("aspect") == aspect, pl.col("score").is_not_null()).select(
        "image_id", "annotator", "score")
    j = judge.filter(pl.col("aspect") == aspect).select("image_id", pl.lit("judge").alias("annotator"),
                                                        pl.col("score").round(0))
    allr = pl.concat([h, j]).filter(pl.col("image_id").is_in(h["image_id"].unique().to_list()))
    if allr.height == 0:
        return float("nan")
    items = allr["image_id"].unique().sort().to_list()
    raters = allr["annotator"].unique().sort().to_list()
    idx, rdx = {x: i for i, x in enumerate(items)}, {x: i for i, x in enumerate(raters)}
    m = np.full((len(raters), len(items)), np.nan)
    for iid, who, s in allr.iter_rows():
        m[rdx[who], idx[iid]] = s
    if len(raters) < 2 or np.sum(~np.isnan(m)) < 4 or len(np.unique(m[~np.isnan(m)])) < 2:
        return float("nan")
    return float(krippendorff.alpha(reliability_data=m, level_of_measurement="ordinal"))


def agreement(run, model=None, n_boot: int = 1000, seed: int = 0, exclude=()) -> dict:
    """``exclude``: raters left out (the run's human pairs must have been rebuilt without them too)."""
    from vprefer.store import as_run

    run = as_run(run)
    if not run.has("human"):
        raise InputError(f"{run.path}: no human judgements; run `vprefer audit pull` first")
    human = run.read("human").filter(~pl.col("annotator").is_in(list(exclude)))
    gold = run.read("pairs").filter(pl.col("annotator") == schema.HUMAN)
    gold_rk = run.read("rankings").filter(pl.col("annotator") == schema.HUMAN)
    prompts = human["prompt_id"].unique().to_list()
    judge = judge_scores(run.read("annotations").filter(pl.col("prompt_id").is_in(prompts)))
    # "overall" for the judge: mean over its aspects, to compare with the human ranking
    judge = pl.concat([judge, judge.group_by("model", "prompt_id", "image_id").agg(pl.col("score").mean())
                       .with_columns(pl.lit(schema.OVERALL).alias("aspect")).select(judge.columns)])
    out = {"prompts": len(prompts), "human_annotators": human["annotator"].n_unique(), "judge": {}, "vpscore": {}}
    acc = pair_metrics(gold, judge, n_boot=n_boot, seed=seed)
    taus = kendall_per_prompt(gold_rk, judge)
    hs = human.filter(pl.col("score").is_not_null())
    for r in acc.to_dicts():
        a = r["aspect"]
        pairs = hs.filter(pl.col("aspect") == a).join(judge.filter(pl.col("aspect") == a), on=["prompt_id", "image_id"])
        k, lo, hi = (kappa_with_ci(pairs.select("prompt_id", pl.col("score").alias("h"),
                                                pl.col("score_right").alias("j")), n_boot, seed)
                     if pairs.height else (float("nan"),) * 3)
        out["judge"][a] = {**r, "kendall_tau_b": taus.get(a), "qw_kappa": k, "qw_kappa_lo": lo, "qw_kappa_hi": hi,
                           "krippendorff_alpha": alpha_all_raters(human, judge, a) if a != schema.OVERALL else None}
    if model is not None:
        from vprefer.reward.evaluate import score_images

        ids = sorted(set(gold["win_image_id"]) | set(gold["lose_image_id"]))
        vs = score_images(model, run, ids)
        vacc = pair_metrics(gold.filter(pl.col("aspect").is_in(model.aspects)), vs, n_boot=n_boot, seed=seed)
        vt = kendall_per_prompt(gold_rk, vs)
        out["vpscore"] = {r["aspect"]: {**r, "kendall_tau_b": vt.get(r["aspect"])} for r in vacc.to_dicts()}
    out["human_human"] = human_human(human)
    return out

"""Rater quality and the human-human ceiling, both on the same footing as human-judge agreement: pairs.

Every answer becomes, per task, aspect and pair of images shown together, the sign
of "left better than right": star ratings and ranks of set tasks, and Left / Right /
Tie of pairwise tasks alike. A rater then agrees with the majority of the *other*
people on the task (never with themselves) or with the judge when the signs match;
ties on the rater's side are skipped (as acc_skip_ties does), and so are pairs where
the others or the judge have no preference.
"""

from __future__ import annotations

from itertools import combinations, permutations

import numpy as np
import polars as pl

from vprefer import schema

SIGNS = {"task_id": pl.Int64, "annotator": pl.String, "prompt_id": pl.String, "aspect": pl.String,
         "a": pl.String, "b": pl.String, "s": pl.Int8}


def rater_signs(human: pl.DataFrame) -> pl.DataFrame:
    """task_id, annotator, prompt_id, aspect, a, b (a < b), s = sign(value(a) - value(b)), value = score or -rank."""
    v = human.with_columns(pl.coalesce(pl.col("score"), -pl.col("rank").cast(pl.Float64)).alias("v")).drop_nulls("v")
    rows = []
    for (tid, who, pid, aspect), g in v.sort("image_id").group_by(["task_id", "annotator", "prompt_id", "aspect"],
                                                                  maintain_order=True):
        vals = dict(zip(g["image_id"], g["v"]))
        for a, b in combinations(sorted(vals), 2):
            rows.append((tid, who, pid, aspect, a, b, int(np.sign(vals[a] - vals[b]))))
    return pl.DataFrame(rows, schema=SIGNS, orient="row")


def _boot(groups: list[np.ndarray], n_boot: int, seed: int) -> tuple[float, float]:
    if len(groups) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    vals = [np.concatenate([groups[i] for i in rng.integers(0, len(groups), len(groups))]).mean() for _ in range(n_boot)]
    return float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))


def ceiling(signs: pl.DataFrame, n_boot: int = 1000, seed: int = 0) -> dict[str, dict]:
    """Human-human pairwise agreement per aspect (and ``all``): every ordered pair of distinct raters on a task,
    the first as gold (its ties skipped), the second counted right when it orders the pair the same way
    (its ties count as wrong, as a predicted tie does in acc_skip_ties). 95% CI resampling tasks."""
    per_task: dict[str, dict[int, list[float]]] = {}
    for (tid, aspect), g in signs.group_by(["task_id", "aspect"], maintain_order=True):
        by = {w: dict(((a, b), s) for a, b, s in x.select("a", "b", "s").rows())
              for (w,), x in g.group_by(["annotator"])}
        for r1, r2 in permutations(sorted(by), 2):
            hits = [float(by[r2][k] == s) for k, s in by[r1].items() if s != 0 and k in by[r2]]
            for key in (aspect, "all"):
                per_task.setdefault(key, {}).setdefault(tid, []).extend(hits)
    out = {}
    for key, tasks in sorted(per_task.items()):
        groups = [np.asarray(v) for _, v in sorted(tasks.items()) if v]
        if not groups:
            continue
        lo, hi = _boot(groups, n_boot, seed)
        out[key] = {"aspect": key, "tasks": len(groups), "comparisons": int(sum(len(x) for x in groups)),
                    "acc": float(np.concatenate(groups).mean()), "ci_lo": lo, "ci_hi": hi}
    return out


def rater_table(signs: pl.DataFrame, judge: pl.DataFrame, meta: pl.DataFrame, gold: pl.DataFrame, *,
                min_gold: float = 0.8, min_agreement: float = 0.5) -> pl.DataFrame:
    """One row per annotator: tasks, median seconds per task, agreement with the majority of the other humans and
    with the judge, gold tasks and accuracy on them, and ``flagged`` with the reason when below a threshold.

    ``judge``: prompt_id, image_id, aspect, score (the judge's mean); ``meta``: audit_annotations;
    ``gold``: gold_answers."""
    others = (signs.join(signs.select("task_id", "aspect", "a", "b", pl.col("annotator").alias("o"), pl.col("s").alias("so")),
                         on=["task_id", "aspect", "a", "b"]).filter(pl.col("o") != pl.col("annotator"))
              .group_by("task_id", "annotator", "aspect", "a", "b", "s").agg(pl.col("so").sum().sign().alias("maj")))
    maj = (others.filter(pl.col("s") != 0, pl.col("maj") != 0).group_by("annotator")
           .agg((pl.col("s") == pl.col("maj")).mean().alias("agree_majority"), pl.len().alias("majority_pairs")))
    j = judge.select("prompt_id", "image_id", "aspect", "score")
    vs = (signs.join(j.rename({"image_id": "a", "score": "ja"}), on=["prompt_id", "a", "aspect"])
          .join(j.rename({"image_id": "b", "score": "jb"}), on=["prompt_id", "b", "aspect"])
          .with_columns((pl.col("ja") - pl.col("jb")).sign().alias("js")))
    jd = (vs.filter(pl.col("s") != 0, pl.col("js") != 0).group_by("annotator")
          .agg((pl.col("s") == pl.col("js")).mean().alias("agree_judge"), pl.len().alias("judge_pairs")))
    base = meta.group_by("annotator").agg(pl.col("task_id").n_unique().alias("tasks"),
                                          pl.col("lead_time_s").median().alias("median_s_per_task"))
    g = gold.group_by("annotator").agg(pl.col("task_id").n_unique().alias("gold_tasks"),
                                       pl.col("correct").mean().alias("gold_accuracy"))
    t = (base.join(maj, on="annotator", how="left").join(jd, on="annotator", how="left")
         .join(g, on="annotator", how="left").with_columns(pl.col("gold_tasks").fill_null(0)).sort("annotator"))
    reasons = []
    for r in t.iter_rows(named=True):
        why = []
        if r["gold_accuracy"] is not None and r["gold_accuracy"] < min_gold:
            why.append(f"gold accuracy {r['gold_accuracy']:.2f} < {min_gold}")
        if r["agree_majority"] is not None and r["agree_majority"] < min_agreement:
            why.append(f"agreement with the others {r['agree_majority']:.2f} < {min_agreement}")
        reasons.append("; ".join(why))
    return t.with_columns(pl.Series("flag", reasons, dtype=pl.String)).with_columns(
        (pl.col("flag") != "").alias("flagged"))


def judge_with_overall(judge: pl.DataFrame) -> pl.DataFrame:
    """The judge's mean score per image and aspect, plus ``overall`` = the mean over its aspects."""
    m = judge.group_by("prompt_id", "image_id", "aspect").agg(pl.col("score").mean())
    return pl.concat([m, m.group_by("prompt_id", "image_id").agg(pl.col("score").mean())
                      .with_columns(pl.lit(schema.OVERALL).alias("aspect")).select(m.columns)])

"""Annotations -> rankings and preference pairs, plus the position-bias statistic.

Aggregation rule (configurable, recorded in the manifest):

* a *judgement* is one answered request (one annotator, one shown order);
* ``overall`` per judgement and image is the mean of the aspect scores, or a
  weighted mean (``weights:prompt_following=2,aesthetics=1,...``) — VisionPrefer
  does not publish its rule, so it is a choice, not a constant;
* a pair's ``margin`` is the mean score difference over all judgements
  (permutations x annotators) that scored both images;
* ``weight`` (confidence) is the share of those judgements that order the pair
  the same way as the mean (a judgement that ties, or a mean that ties, counts
  one half);
* ``tie`` when margin <= ``min_margin``: ties are kept and flagged;
* ``debias="positions"``: every score first loses its annotator's estimated
  effect of the position it was shown in (:mod:`vprefer.annotate.position`).
  With a balanced design and K a multiple of the set size this changes no
  ranking (every image gets the same correction); it matters for one order
  per set, or orders that are not balanced.

Everything is lazy polars over the ``annotations`` table, a range of prompts at a
time so memory stays bounded: 10^7 rows in under 20 s on 2 cores
(benchmarks/pairs_scale.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from vprefer import schema
from vprefer.annotate import position
from vprefer.errors import InputError
from vprefer.store import Result, Run, as_run

DEBIAS = ("positions",)


def parse_overall(spec: str, aspects: list[str]) -> dict[str, float]:
    if spec == "mean":
        return {a: 1.0 for a in aspects}
    if not spec.startswith("weights:"):
        raise InputError(f"--overall must be 'mean' or 'weights:a=1,b=2', got {spec!r}")
    out = {}
    for item in spec[len("weights:"):].split(","):
        k, _, v = item.partition("=")
        if k.strip() not in aspects:
            raise InputError(f"--overall weight for unknown aspect {k.strip()!r}; aspects: {', '.join(aspects)}")
        out[k.strip()] = float(v)
    if not any(out.values()):
        raise InputError("--overall weights are all zero")
    return out


def judgements(run: Run, annotators: list[str] | None, overall: str) -> tuple[pl.LazyFrame, str]:
    run = as_run(run)
    ann = run.scan("annotations").filter(pl.col("status") == "ok")
    have = ann.select(pl.col("annotator").unique()).collect()["annotator"].to_list()
    if annotators:
        missing = set(annotators) - set(have)
        if missing:
            raise InputError(f"no ok annotations from {sorted(missing)}; annotators here: {sorted(have)}")
        ann = ann.filter(pl.col("annotator").is_in(annotators))
        have = annotators
    if not have:
        raise InputError(f"{run.path}: no successful annotations yet; run `vprefer annotate` first")
    aspects = ann.select(pl.col("aspect").unique().sort()).collect()["aspect"].to_list()
    w = parse_overall(overall, aspects)
    cols = ["request_id", "annotator", "prompt_id", "image_id", "shown_position", "aspect", "score"]
    j = ann.select(cols)
    ov = (j.filter(pl.col("aspect").is_in(list(w)))
          .with_columns(pl.col("aspect").replace_strict(w, return_dtype=pl.Float64).alias("w"))
          .group_by("request_id", "annotator", "prompt_id", "image_id", "shown_position")
          .agg(((pl.col("score") * pl.col("w")).sum() / pl.col("w").sum()).alias("score"))
          .with_columns(pl.lit(schema.OVERALL).alias("aspect"))
          .select(cols))
    return pl.concat([j, ov]), "+".join(sorted(have))


#: judgement rows (annotations and their overall rows) per slice: one slice's pair self-join is what is
#: held in memory at once
SLICE_ROWS = 1_000_000


def _slices(j: pl.LazyFrame, rows: int) -> list[tuple[str | None, str | None]]:
    """Ranges of prompt ids holding ~``rows`` judgement rows each, in prompt order.

    Every statistic is per prompt, so slices are independent; being ranges (not hashes), their sorted
    outputs concatenate into a sorted whole without a final sort."""
    counts = j.group_by("prompt_id").len().sort("prompt_id").collect()
    if counts["len"].sum() <= rows:
        return [(None, None)]
    cut = counts.with_columns((pl.col("len").cum_sum() // rows).alias("k"))
    starts = cut.group_by("k", maintain_order=True).agg(pl.col("prompt_id").first())["prompt_id"].to_list()
    return list(zip([None, *starts[1:]], [*starts[1:], None]))


def _within(lo: str | None, hi: str | None) -> pl.Expr:
    e = pl.lit(True)
    if lo is not None:
        e = e & (pl.col("prompt_id") >= lo)
    if hi is not None:
        e = e & (pl.col("prompt_id") < hi)
    return e


def pair_stats(j: pl.LazyFrame, label: str, min_margin: float) -> pl.LazyFrame:
    """Pairs of a set of judgements (see the module docstring for the rule).

    One pass: a judgement's agreement with the mean needs only how many of the pair's differences are
    positive, negative or zero, so no second join of the differences with their mean is made."""
    a = j.select("request_id", "prompt_id", "aspect", pl.col("image_id").alias("a"), pl.col("score").alias("sa"))
    b = j.select("request_id", "aspect", pl.col("image_id").alias("b"), pl.col("score").alias("sb"))
    d = (a.join(b, on=["request_id", "aspect"]).filter(pl.col("a") < pl.col("b"))
         .select("prompt_id", "aspect", "a", "b", (pl.col("sa") - pl.col("sb")).alias("d")))
    g = d.group_by("prompt_id", "aspect", "a", "b").agg(
        pl.col("d").mean().alias("m"), (pl.col("d") > 0).sum().alias("pos"), (pl.col("d") < 0).sum().alias("neg"),
        pl.len().alias("n"))
    half = 0.5 * (pl.col("n") - pl.col("pos") - pl.col("neg"))
    # a tie on either side is half credit: a tied mean gives every judgement one half
    agree = (pl.when(pl.col("m") == 0).then(0.5)
             .when(pl.col("m") > 0).then((pl.col("pos") + half) / pl.col("n"))
             .otherwise((pl.col("neg") + half) / pl.col("n")))
    tie = pl.col("m").abs() <= min_margin + 1e-12
    win_a = tie | (pl.col("m") > 0)
    pairs = g.select(
        "prompt_id",
        pl.when(win_a).then(pl.col("a")).otherwise(pl.col("b")).alias("win_image_id"),
        pl.when(win_a).then(pl.col("b")).otherwise(pl.col("a")).alias("lose_image_id"),
        "aspect", pl.lit(label).alias("annotator"), pl.col("m").abs().alias("margin"),
        agree.alias("weight"), tie.alias("tie"),
    ).sort("prompt_id", "aspect", "win_image_id", "lose_image_id")
    return pairs


def ranking_stats(j: pl.LazyFrame, pairs: pl.DataFrame, label: str) -> pl.LazyFrame:
    """Images by mean score per prompt and aspect; confidence = the mean weight of the prompt's pairs."""
    mean = j.group_by("prompt_id", "aspect", "image_id").agg(pl.col("score").mean())
    conf = pairs.lazy().group_by("prompt_id", "aspect").agg(pl.col("weight").mean().alias("confidence"))
    rankings = (mean.sort(["score", "image_id"], descending=[True, False])
                .group_by("prompt_id", "aspect", maintain_order=True)
                .agg(pl.col("image_id").alias("image_ids"), pl.col("score").alias("scores"))
                .join(conf, on=["prompt_id", "aspect"], how="left")
                .with_columns(pl.lit(label).alias("annotator"), pl.col("confidence").fill_null(1.0))
                .select(list(schema.SCHEMAS["rankings"])).sort("prompt_id", "aspect"))
    return rankings


def build_pairs(run: Run, *, overall: str = "mean", min_margin: float = 0.0,
                annotators: list[str] | None = None, debias: str | None = None,
                slice_rows: int = SLICE_ROWS) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Rankings and pairs from the ``ok`` annotations, without writing them (see :func:`make_pairs`).

    Computed a slice of prompts at a time (``slice_rows`` judgement rows each), so memory is bounded by
    a slice plus the result, not by the table."""
    if debias is not None and debias not in DEBIAS:
        raise InputError(f"--debias must be one of {', '.join(DEBIAS)}, got {debias!r}")
    run = as_run(run)
    j, label = judgements(run, annotators, overall)
    if debias == "positions":
        # the position effects are estimated from all judgements at once, so this path holds them all
        j = position.debias(j.collect())[0].lazy()
    rankings, pairs = [], []
    for lo, hi in _slices(j, slice_rows):
        js = j.filter(_within(lo, hi))
        pairs.append(pair_stats(js, label, min_margin).collect())
        rankings.append(ranking_stats(js, pairs[-1], label).collect())
    return pl.concat(rankings), pl.concat(pairs)


def save_pairs(run: Run, rankings: pl.DataFrame, pairs: pl.DataFrame) -> None:
    """Replace this annotator label's rows, keep everyone else's (e.g. imported human rankings)."""
    run = as_run(run)
    for name, new in (("rankings", rankings), ("pairs", pairs)):
        run.replace_rows(name, new, "annotator")


@dataclass
class PairsResult(Result):
    rankings: pl.DataFrame
    pairs: pl.DataFrame

    @property
    def ties(self) -> int:
        return int(self.pairs["tie"].sum())


def make_pairs(run: Run | str, *, overall: str = "mean", min_margin: float = 0.0,
               annotators: list[str] | None = None, debias: str | None = None) -> PairsResult:
    """:func:`build_pairs` then :func:`save_pairs`, recorded in the manifest as the ``pairs`` command."""
    run = as_run(run)
    rankings, pairs = build_pairs(run, overall=overall, min_margin=min_margin, annotators=annotators, debias=debias)
    with run.command("pairs", {"overall": overall, "min_margin": min_margin, "annotators": annotators,
                               "debias": debias}):
        save_pairs(run, rankings, pairs)
    return PairsResult(rankings, pairs)


def judge_scores(annotations: pl.DataFrame, model: str = "judge") -> pl.DataFrame:
    """A ``scores`` table of the judge: mean ``ok`` score per (prompt, image, aspect) over all judgements."""
    return (annotations.filter(pl.col("status") == "ok").group_by("prompt_id", "image_id", "aspect")
            .agg(pl.col("score").mean()).with_columns(pl.lit(model).alias("model"))
            .select(list(schema.SCHEMAS["scores"])))


def position_bias(run: Run, annotator: str | None = None, *, n_boot: int = position.N_BOOT) -> pl.DataFrame:
    """Estimated effect of each shown position per aspect, with a 95% CI (:func:`vprefer.annotate.position.estimate`;
    0 everywhere = no bias). Pooled over annotators unless one is named."""
    ann = as_run(run).scan("annotations").filter(pl.col("status") == "ok")
    if annotator:
        ann = ann.filter(pl.col("annotator") == annotator)
    cols = ["annotator", "prompt_id", "request_id", "image_id", "aspect", "shown_position", "score"]
    return position.estimate(ann.select(cols).collect(), n_boot=n_boot)

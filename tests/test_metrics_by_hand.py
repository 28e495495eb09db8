"""Evaluation and agreement metrics against numbers worked out by hand.

Reference libraries share our conventions (and our mistakes would look plausible next to them), so
every expected value here is derived in the comments from the definition, on tables small enough to
check on paper. Each test is chosen so that a named wrong algorithm gives a different number.
"""

import random

import numpy as np
import polars as pl
import pytest

from vprefer import schema
from vprefer.audit.metrics import human_human, kappa_with_ci, qw_kappa
from vprefer.metrics import kendall_per_prompt, pair_metrics


def _pair(prompt, win, lose, tie=False):
    return {"prompt_id": prompt, "win_image_id": win, "lose_image_id": lose, "aspect": "overall",
            "annotator": "h", "margin": 0.0 if tie else 1.0, "weight": 1.0, "tie": tie}


def _scores(by_prompt: dict[str, dict[str, float]]) -> pl.DataFrame:
    rows = [(p, i, s) for p, imgs in by_prompt.items() for i, s in imgs.items()]
    return pl.DataFrame({"model": "m", "prompt_id": [r[0] for r in rows], "image_id": [r[1] for r in rows],
                         "aspect": "overall", "score": [r[2] for r in rows]})


# ---------------------------------------------------------------------------- tie rules
def test_tie_rules_with_ties_on_both_sides():
    pairs = schema.frame("pairs", [
        _pair("p", "a", "b"),            # model 2 > 1: right            skip 1   half 1
        _pair("p", "a", "c"),            # model 2 = 2: predicted tie    skip 0   half .5
        _pair("p", "a", "d", tie=True),  # gold tie, model 2 = 2 ties    skipped  half 1 (both tie)
        _pair("q", "e", "f"),            # model 0 < 1: wrong            skip 0   half 0
        _pair("q", "g", "h", tie=True),  # gold tie, model 3 = 3 ties    skipped  half 1 (both tie)
        _pair("q", "g", "e", tie=True),  # gold tie, model 3 > 0 decides skipped  half .5
        _pair("q", "g", "f"),            # model 3 > 1: right            skip 1   half 1
    ])
    scores = _scores({"p": {"a": 2.0, "b": 1.0, "c": 2.0, "d": 2.0}, "q": {"e": 0.0, "f": 1.0, "g": 3.0, "h": 3.0}})
    row = pair_metrics(pairs, scores, n_boot=50).row(0, named=True)
    assert row["pairs"] == 7 and row["gold_ties"] == 3 and row["prompts"] == 2
    assert row["acc_skip_ties"] == pytest.approx((1 + 0 + 0 + 1) / 4)
    # 0.5 for a tie both sides agree on would give 4/7; 0 for a predicted tie on a decided pair 4.5/7
    assert row["acc_ties_half"] == pytest.approx((1 + 0.5 + 1 + 0 + 1 + 0.5 + 1) / 7)
    assert row["pred_tie_share"] == pytest.approx(1 / 4)  # of the 4 decided pairs, a-c is a predicted tie


def test_pair_accuracy_ci_is_fixed_by_the_seed():
    rng = random.Random(3)
    rows, by_prompt = [], {}
    for k in range(12):
        p = f"p{k:02d}"
        by_prompt[p] = {f"{p}{i}": rng.random() for i in "abc"}
        rows += [_pair(p, f"{p}a", f"{p}b"), _pair(p, f"{p}a", f"{p}c"), _pair(p, f"{p}b", f"{p}c")]
    scores = _scores(by_prompt)
    cis = set()
    for _ in range(5):  # group_by order is random in polars: the CI must not depend on it or on row order
        rng.shuffle(rows)
        r = pair_metrics(schema.frame("pairs", rows), scores, n_boot=200, seed=7).row(0, named=True)
        cis.add((r["ci_skip_lo"], r["ci_skip_hi"], r["ci_half_lo"], r["ci_half_hi"]))
        assert r["ci_skip_lo"] <= r["acc_skip_ties"] <= r["ci_skip_hi"]
    assert len(cis) == 1


# ---------------------------------------------------------------------------- Kendall tau-b
def test_kendall_tau_b_by_hand():
    rankings = pl.DataFrame({
        "prompt_id": ["p", "q", "r", "s"], "aspect": "overall",
        "image_ids": [["a", "b", "c", "d"], ["e", "f", "g"], ["h", "i"], ["j", "k"]],
        "scores": [[3.0, 2.0, 2.0, 1.0], [3.0, 2.0, 1.0], [2.0, 1.0], [2.0, 1.0]],
    })
    scores = _scores({"p": {"a": 4.0, "b": 1.0, "c": 5.0, "d": 1.0}, "q": {"e": 9.0, "f": 8.0, "g": 7.0},
                      "r": {"h": 1.0, "i": 1.0},  # the model ties everything: tau undefined, set skipped
                      "s": {"j": 1.0}})  # k unscored: set skipped
    # p, gold vs model over its 6 pairs: ab C, ac D (3 > 2 but 4 < 5), ad C, bc gold tie, bd model tie, cd C.
    # tau-b = (C - D) / sqrt((n0 - gold ties)(n0 - model ties)) = (3 - 1) / sqrt(5 * 5) = 0.4
    # (tau-a would be (3 - 1) / 6). q is perfectly concordant: 1.  Mean over defined sets: 0.7
    assert kendall_per_prompt(rankings, scores) == {"overall": pytest.approx((0.4 + 1.0) / 2)}


# ---------------------------------------------------------------------------- Cohen's kappa
# Quadratic weights (i - j)^2 make kappa = 1 - sum_k (a_k - b_k)^2 / (sum_k sum_l (a_k - b_l)^2 / N):
# observed squared disagreement over what independent draws from the two marginals would give.

def test_quadratic_kappa_by_hand():
    # judge means are rounded to the scale first: 2.4 1.6 3.2 4.6 -> 2 2 3 5
    # observed: 1 + 0 + 0 + 1 = 2. cross sums per a: 1 -> 1+1+4+16, 2 -> 0+0+1+9, 3 -> 1+1+0+4, 4 -> 4+4+1+1
    # = 48, / N = 12. kappa = 1 - 2/12  (linear weights would give 1 - 2/5.5, unweighted 1/3)
    assert qw_kappa([1, 2, 3, 4], [2.4, 1.6, 3.2, 4.6]) == pytest.approx(5 / 6)
    assert np.isnan(qw_kappa([3, 3], [3, 3]))  # no variation on either side: undefined, not 1


def test_kappa_ci_is_a_bootstrap_over_prompts_by_hand():
    df = pl.DataFrame({"prompt_id": ["p1"] * 3 + ["p2"] * 3,
                       "h": [1, 2, 3, 1, 3, 5], "j": [1, 2, 3, 2, 3, 4]})
    # all six: observed 2; sum h = sum j = 15, sum h^2 = 49, sum j^2 = 43;
    # cross = 6*49 + 6*43 - 2*15*15 = 102, / 6 = 17 -> kappa = 1 - 2/17
    # resampling two prompts gives only {p1,p1} (kappa 1), {p1,p2} (15/17) or {p2,p2}: observed 2,
    # cross (3*35 + 3*29 - 2*9*9) / 3 = 10 -> 0.8. The extremes each come up a quarter of the time,
    # so the 2.5% and 97.5% percentiles are exactly 0.8 and 1 (a row bootstrap would reach lower)
    k, lo, hi = kappa_with_ci(df, n_boot=400, seed=0)
    assert k == pytest.approx(15 / 17)
    assert (lo, hi) == (pytest.approx(0.8), pytest.approx(1.0))
    rng = np.random.default_rng(5)
    h = rng.integers(1, 6, 40)
    many = pl.DataFrame({"prompt_id": [f"p{k % 10}" for k in range(40)], "h": h,
                         "j": np.clip(h + rng.integers(-1, 2, 40), 1, 5)})
    again = {kappa_with_ci(many.sample(fraction=1.0, shuffle=True, seed=s), n_boot=100, seed=1) for s in range(5)}
    assert len(again) == 1  # the seed fixes the CI whatever the row or group order
    assert np.isnan(kappa_with_ci(df.filter(pl.col("prompt_id") == "p1"), n_boot=50, seed=0)[1])


# ---------------------------------------------------------------------------- human-human ceiling
def test_human_human_ceiling_three_raters_by_hand():
    scores = {"a": [1, 3, 5], "b": [3, 2, 5], "c": [2, 2, 4]}  # images x, y, z
    rows = [{"task_id": 1, "annotator": who, "prompt_id": "p", "image_id": img, "aspect": "aesthetics",
             "score": float(s), "rank": None} for who, ss in scores.items() for img, s in zip("xyz", ss)]
    rows.append({"task_id": 2, "annotator": "a", "prompt_id": "q", "image_id": "w", "aspect": "aesthetics",
                 "score": 4.0, "rank": None})  # one rater only: no ceiling from it
    rows.append({"task_id": 1, "annotator": "c", "prompt_id": "p", "image_id": "x", "aspect": "fidelity",
                 "score": None, "rank": None})  # skipped rating
    human = pl.DataFrame(rows, schema_overrides={"rank": pl.Int32, "score": pl.Float64})
    out = human_human(human)
    assert out["tasks"] == 1
    # gold a: z>y z>x y>x; b: z>x z>y x>y; c: z>x z>y (x~y tie skipped). The other rater gets
    # (a,b) 2/3 (b has x>y)  (a,c) 2/3 (c ties x,y)  (b,a) 2/3  (b,c) 2/3  (c,a) 2/2  (c,b) 2/2
    # pooled: 12 / 16. Letting a rater agree with themselves adds 8/8: 20/24.
    assert out["pair_accuracy_skip_ties"] == pytest.approx(12 / 16)
    # kappa over all ordered pairs of distinct raters: observed squared disagreement
    # (a,b) 4+1+0, (a,c) 1+1+1, (b,c) 1+0+1 = 10, twice = 20 over N = 18 ratings a side.
    # both marginals are the nine scores twice; the nine {1,2,2,2,3,3,4,5,5} have mean 3 and
    # squared deviations 16, so their 81 cross pairs sum to 2*9*16 = 288; x4 / 18 = 64.
    # kappa = 1 - 20/64. (a vs b alone would be 1 - 5/13; self-pairs would push it up.)
    assert out["qw_kappa"] == pytest.approx(1 - 20 / 64)

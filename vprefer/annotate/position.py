"""The judge's position bias: an estimate per shown position with a CI, and scores with it removed.

Model (per annotator and aspect): ``score = image effect + position effect + noise``, a two-way
fixed-effects least-squares fit, with position effects summing to zero (an effect is "points above
the average position"). Which fixed effects:

* **image effects** when the annotator showed some image in two or more positions (K >= 2 orders):
  each image is compared with itself, so image quality cancels exactly — on a noiseless judge with an
  additive bias the fit recovers the bias exactly, whatever the orders;
* **set (request) effects** when every image was shown once (one order): then image and position
  cannot be told apart within a set, and the fit relies on the order being random (images are
  assigned to positions by chance, so their quality averages out over sets). With equal set sizes the
  estimate is the mean score by position minus the request's mean.

The 95% CI is a percentile bootstrap over prompts (image sets), the unit the orders were drawn for;
:func:`debias` subtracts the estimated effect of the position each score was given in.
"""

from __future__ import annotations

import numpy as np
import polars as pl

N_BOOT = 200


def _groups(frame: pl.DataFrame) -> pl.DataFrame:
    """Add ``_g`` (the fixed-effect group) and ``effects`` per annotator: image if identifiable, else set."""
    seen = (frame.group_by("annotator", "prompt_id", "image_id").agg(pl.col("shown_position").n_unique().alias("k"))
            .group_by("annotator").agg((pl.col("k").max() >= 2).alias("_img")))
    return (frame.join(seen, on="annotator")
            .with_columns(pl.when(pl.col("_img"))
                          .then(pl.concat_str("annotator", "prompt_id", "image_id", separator="|"))
                          .otherwise(pl.concat_str("annotator", "request_id", separator="|")).alias("_g"),
                          pl.when(pl.col("_img")).then(pl.lit("image")).otherwise(pl.lit("set")).alias("effects")))


def _normal_equations(f: pl.DataFrame, npos: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per prompt (cluster): A_c = sum over groups of diag(c) - c c^T / n, b_c = sum of s - mean(y) c,
    where c counts the group's scores by position and s sums them. The fit solves (sum A) beta = sum b."""
    cell = (f.group_by("prompt_id", "_g", "shown_position")
            .agg(pl.len().alias("c"), pl.col("score").sum().alias("s")))
    gid = cell["_g"].to_numpy()
    g_codes, g_idx = np.unique(gid, return_inverse=True)
    p_codes, p_idx = np.unique(cell["prompt_id"].to_numpy(), return_inverse=True)
    pos = cell["shown_position"].to_numpy() - 1
    C = np.zeros((len(g_codes), npos))
    Sy = np.zeros((len(g_codes), npos))
    np.add.at(C, (g_idx, pos), cell["c"].to_numpy())
    np.add.at(Sy, (g_idx, pos), cell["s"].to_numpy())
    n = C.sum(1, keepdims=True)
    ybar = Sy.sum(1, keepdims=True) / n
    g_prompt = np.zeros(len(g_codes), dtype=int)
    g_prompt[g_idx] = p_idx
    A = np.zeros((len(p_codes), npos, npos))
    B = np.zeros((len(p_codes), npos))
    np.add.at(A, g_prompt, np.einsum("gi,gj->gij", C, -C / n))
    idx = np.arange(npos)
    np.add.at(A, (g_prompt[:, None], idx[None, :], idx[None, :]), C)
    np.add.at(B, g_prompt, Sy - ybar * C)
    return A, B, p_codes


def _solve(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Least squares with sum(beta) = 0 (bordered system; positions never seen stay at 0)."""
    npos = len(b)
    M = np.zeros((npos + 1, npos + 1))
    M[:npos, :npos], M[:npos, npos], M[npos, :npos] = A, 1.0, 1.0
    return np.linalg.lstsq(M, np.append(b, 0.0), rcond=None)[0][:npos]


def estimate(frame: pl.DataFrame, *, n_boot: int = N_BOOT, seed: int = 0) -> pl.DataFrame:
    """Position effects per (aspect, shown position) from ok judgements pooled over the annotators in
    ``frame`` (columns annotator, prompt_id, request_id, image_id, aspect, shown_position, score):
    ``n`` scores, ``bias`` (points above the average position), ``lo``/``hi`` (95% bootstrap CI over
    prompts), ``effects`` (image or set fixed effects)."""
    out = []
    f_all = _groups(frame.filter(pl.col("score").is_not_null()))
    rng = np.random.default_rng(seed)
    for (aspect,), f in f_all.group_by(["aspect"], maintain_order=True):
        npos = int(f["shown_position"].max())
        A, B, prompts = _normal_equations(f, npos)
        beta = _solve(A.sum(0), B.sum(0))
        lo = hi = np.full(npos, np.nan)
        if len(prompts) >= 2 and n_boot:
            w = rng.multinomial(len(prompts), np.full(len(prompts), 1 / len(prompts)), size=n_boot).astype(float)
            As, Bs = np.einsum("bc,cij->bij", w, A), w @ B
            boots = np.stack([_solve(As[k], Bs[k]) for k in range(n_boot)])
            lo, hi = np.percentile(boots, [2.5, 97.5], axis=0)
        counts = f.group_by("shown_position").len()
        cnt = dict(counts.iter_rows())
        effects = ",".join(sorted(f["effects"].unique().to_list()))
        out += [{"aspect": aspect, "shown_position": p + 1, "n": int(cnt.get(p + 1, 0)), "bias": float(beta[p]),
                 "lo": float(lo[p]), "hi": float(hi[p]), "effects": effects} for p in range(npos)]
    schema = {"aspect": pl.String, "shown_position": pl.Int64, "n": pl.Int64, "bias": pl.Float64,
              "lo": pl.Float64, "hi": pl.Float64, "effects": pl.String}
    return pl.DataFrame(out, schema=schema).sort("aspect", "shown_position")


def debias(frame: pl.DataFrame, *, n_boot: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``frame`` with each score minus its annotator's estimated effect for the position it was shown in
    (estimated per annotator: judges differ), and the estimates used (with an ``annotator`` column)."""
    parts, effects = [], []
    for (ann,), f in frame.group_by(["annotator"], maintain_order=True):
        est = estimate(f, n_boot=n_boot).with_columns(pl.lit(ann).alias("annotator"))
        effects.append(est)
        parts.append(f.join(est.select("aspect", "shown_position", "bias"), on=["aspect", "shown_position"],
                            how="left")
                     .with_columns((pl.col("score") - pl.col("bias").fill_null(0.0)).alias("score")).drop("bias"))
    if not parts:
        return frame, pl.DataFrame()
    return pl.concat(parts), pl.concat(effects)

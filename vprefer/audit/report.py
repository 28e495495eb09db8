"""``vprefer audit report``: Markdown and HTML with PNG plots of the agreement metrics and rater quality.

Raters below a threshold (gold accuracy, agreement with the other people) are
flagged; ``exclude`` leaves raters out of the report *and* of the run's human
pairs (recorded in the audit state, so later pulls keep them out), because a
report that excludes someone while training still learns from them would not be
the data it describes."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from vprefer import pages as rp  # noqa: E402
from vprefer.annotate.pairs import judge_scores, position_bias  # noqa: E402
from vprefer.audit.human import rebuild  # noqa: E402
from vprefer.audit.labelstudio import _state_path, load_state  # noqa: E402
from vprefer.audit.metrics import agreement  # noqa: E402
from vprefer.audit.raters import ceiling, judge_with_overall, rater_signs, rater_table  # noqa: E402
from vprefer.errors import InputError  # noqa: E402
from vprefer.store import atomic_write_json  # noqa: E402
from vprefer.schema import ASPECTS  # noqa: E402
from vprefer.store import Run  # noqa: E402

RATER_COLS = ["annotator", "tasks", "median_s_per_task", "agree_majority", "agree_judge", "gold_tasks",
              "gold_accuracy", "excluded", "flag"]
COLS = ["aspect", "pairs", "gold_ties", "acc_skip_ties", "ci_skip_lo", "ci_skip_hi", "acc_ties_half", "kendall_tau_b",
        "qw_kappa", "qw_kappa_lo", "qw_kappa_hi", "krippendorff_alpha"]


def confusion_png(run: Run, path: Path) -> Path:
    human = run.read("human").filter(pl.col("score").is_not_null())
    judge = judge_scores(run.read("annotations"))
    fig, axes = plt.subplots(1, len(ASPECTS), figsize=(3 * len(ASPECTS), 3))
    for ax, a in zip(axes, ASPECTS):
        j = human.filter(pl.col("aspect") == a).join(judge.filter(pl.col("aspect") == a), on=["prompt_id", "image_id"])
        m = np.zeros((5, 5))
        for h, s in j.select("score", "score_right").iter_rows():
            m[int(round(h)) - 1, int(round(s)) - 1] += 1
        ax.imshow(m, cmap="Blues")
        for (y, x), v in np.ndenumerate(m):
            if v:
                ax.text(x, y, int(v), ha="center", va="center", fontsize=7)
        ax.set_xticks(range(5), range(1, 6))
        ax.set_yticks(range(5), range(1, 6))
        ax.set_xlabel("judge")
        ax.set_ylabel("human")
        ax.set_title(a, fontsize=9)
    return rp.save_fig(fig, path)


def resolve_exclusions(arg: str | list[str] | None, raters: pl.DataFrame, current: list[str]) -> list[str]:
    """``None``: keep the current exclusions; ``none``: nobody; ``flagged``: the flagged raters; else the named ones
    (comma-separated; unknown names are an error, so a typo cannot silently keep someone in)."""
    if arg is None:
        return current
    names = [x.strip() for x in (arg.split(",") if isinstance(arg, str) else arg) if x.strip()]
    if names in (["none"], []):
        return []
    known = set(raters["annotator"])
    out = set()
    for x in names:
        if x == "flagged":
            out |= set(raters.filter(pl.col("flagged"))["annotator"])
        elif x in known:
            out.add(x)
        else:
            raise InputError(f"--exclude-raters: no rater {x!r} in this audit (raters: {', '.join(sorted(known))})")
    return sorted(out)


def rater_png(t: pl.DataFrame, path: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3))
    xs = np.arange(t.height)
    for k, (col, c) in enumerate((("agree_majority", "#4c72b0"), ("agree_judge", "#55a868"), ("gold_accuracy", "#c44e52"))):
        axes[0].bar(xs + (k - 1) * 0.27, t[col].fill_null(float("nan")).to_numpy(), 0.27, label=col, color=c)
    axes[0].set_xticks(xs, [a[:6] + ("*" if f else "") for a, f in zip(t["annotator"], t["flagged"])], fontsize=7)
    axes[0].set_ylim(0, 1)
    axes[0].legend(fontsize=7)
    axes[0].set_title("per rater (* flagged)", fontsize=9)
    axes[1].bar(xs, t["median_s_per_task"].fill_null(0).to_numpy(), color="#8172b2")
    axes[1].set_xticks(xs, [a[:6] for a in t["annotator"]], fontsize=7)
    axes[1].set_ylabel("median seconds per task")
    axes[1].set_title("time per task (Label Studio lead_time)", fontsize=9)
    return rp.save_fig(fig, path)


def ceiling_png(ceil: dict, judge: dict, path: Path) -> Path:
    aspects = [a for a in judge if a in ceil and judge[a]["acc_skip_ties"] == judge[a]["acc_skip_ties"]]
    fig, ax = plt.subplots(figsize=(6, 3))
    xs = np.arange(len(aspects))
    for off, label, get in ((-0.2, "human-human ceiling", lambda a: (ceil[a]["acc"], ceil[a]["ci_lo"], ceil[a]["ci_hi"])),
                            (0.2, "human-judge", lambda a: (judge[a]["acc_skip_ties"], judge[a]["ci_skip_lo"],
                                                            judge[a]["ci_skip_hi"]))):
        v = np.array([get(a) for a in aspects], float).reshape(-1, 3)
        err = np.nan_to_num(np.abs(v[:, 1:].T - v[:, 0]))
        ax.bar(xs + off, v[:, 0], 0.4, yerr=err, capsize=3, label=label)
    ax.set_xticks(xs, aspects, rotation=20, fontsize=8)
    ax.set_ylim(0, 1)
    ax.axhline(0.5, color="grey", ls="--", lw=0.8)
    ax.legend(fontsize=7)
    ax.set_title("pairwise agreement (95% CI)", fontsize=9)
    return rp.save_fig(fig, path)


def write_report(run_dir, out: str | Path, model=None, n_boot: int = 1000, *, exclude: str | list[str] | None = None,
                 min_gold: float = 0.8, min_agreement: float = 0.5) -> dict:
    run, out = Run(run_dir), Path(out)
    if not run.has("human"):
        raise InputError(f"{run.path}: no human judgements; run `vprefer audit pull` first")
    state = load_state(run)
    human = run.read("human")
    judge = judge_with_overall(judge_scores(run.read_or_empty("annotations").filter(pl.col("status") == "ok")))
    signs = rater_signs(human)
    raters = rater_table(signs, judge, run.read_or_empty("audit_annotations"), run.read_or_empty("gold_answers"),
                         min_gold=min_gold, min_agreement=min_agreement)
    excluded = resolve_exclusions(exclude, raters, state.get("excluded_raters", []))
    if excluded != state.get("excluded_raters", []):
        with run.command("audit report --exclude-raters", {"excluded_raters": excluded}):
            state["excluded_raters"] = excluded
            atomic_write_json(_state_path(run), state)
            rebuild(run, state)
    raters = raters.with_columns(pl.col("annotator").is_in(excluded).alias("excluded"))
    out.mkdir(parents=True, exist_ok=True)
    m = agreement(run, model, n_boot=n_boot, exclude=excluded)
    ceil = ceiling(signs.filter(~pl.col("annotator").is_in(excluded)), n_boot=n_boot)
    m.update(ceiling=ceil, raters=raters.to_dicts(), excluded_raters=excluded)
    (out / "agreement.json").write_text(json.dumps(m, indent=2, default=str))
    figs = []
    figs.append(("human vs AI judge", rp.plot_accuracy(list(m["judge"].values()), out / "judge_agreement.png",
                                                       "human-judge pairwise agreement (95% CI)")))
    if m["vpscore"]:
        figs.append(("human vs VP-Score", rp.plot_accuracy(list(m["vpscore"].values()), out / "vpscore_agreement.png",
                                                           "human-VP-Score pairwise agreement (95% CI)")))
    if ceil:
        figs.append(("human-human ceiling vs human-judge", ceiling_png(ceil, m["judge"], out / "ceiling.png")))
    if raters.height:
        figs.append(("rater quality", rater_png(raters, out / "raters.png")))
    figs.append(("score confusion", confusion_png(run, out / "confusion.png")))
    figs.append(("position bias", rp.plot_position_bias(position_bias(run), out / "position_bias.png")))
    ceil_rows = [{**c, "judge_acc": m["judge"].get(a, {}).get("acc_skip_ties"),
                  "judge_ci_lo": m["judge"].get(a, {}).get("ci_skip_lo"),
                  "judge_ci_hi": m["judge"].get(a, {}).get("ci_skip_hi")} for a, c in ceil.items()]
    ccols = ["aspect", "tasks", "comparisons", "acc", "ci_lo", "ci_hi", "judge_acc", "judge_ci_lo", "judge_ci_hi"]
    a = ceil.get("all")
    summary = (f"Human-human ceiling (pairwise agreement between people on the same tasks, all aspects): "
               f"{a['acc']:.3f} [{a['ci_lo']:.3f}, {a['ci_hi']:.3f}] on {a['tasks']} tasks." if a else
               "No task was annotated by two people: no human-human ceiling (push with --overlap 2 or more).")
    flagged = raters.filter(pl.col("flagged"))["annotator"].to_list()
    who = (f"{raters.height} raters; flagged (gold accuracy < {min_gold} or agreement with the others < "
           f"{min_agreement}): {', '.join(flagged) or 'none'}; excluded: {', '.join(excluded) or 'none'}.")
    rules = ("Tie rules: acc_skip_ties skips human ties and counts a predicted tie as wrong (ImageReward); "
             "acc_ties_half gives ties half credit. CIs resample prompts (ceiling: tasks).")
    intro = f"{m['prompts']} image sets, {m['human_annotators']} human annotators."
    md = [f"# vprefer audit: {run.path.name}", "", intro, "", rules, "", summary, "", who, "",
          "## Human-human ceiling vs human-judge", "", "| " + " | ".join(ccols) + " |", "|" + "---|" * len(ccols)]
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
    md += ["| " + " | ".join(fmt(r.get(c)) for c in ccols) + " |" for r in ceil_rows]
    md += ["", "## Raters", "", "| " + " | ".join(RATER_COLS) + " |", "|" + "---|" * len(RATER_COLS)]
    md += ["| " + " | ".join(fmt(r.get(c)) for c in RATER_COLS) + " |" for r in raters.to_dicts()]
    md += ["", "## Human vs AI judge", "", "| " + " | ".join(COLS) + " |", "|" + "---|" * len(COLS)]
    md += ["| " + " | ".join(fmt(r.get(c)) for c in COLS) + " |" for r in m["judge"].values()]
    if m["vpscore"]:
        md += ["", "## Human vs VP-Score", "", "| " + " | ".join(COLS[:8]) + " |", "|" + "---|" * 8]
        md += ["| " + " | ".join(fmt(r.get(c)) for c in COLS[:8]) + " |" for r in m["vpscore"].values()]
    md += ["", "## Plots", ""] + [f"![{t}]({p.name})" for t, p in figs]
    (out / "report.md").write_text("\n".join(md) + "\n")
    sections = [("Summary", f"<p>{intro}</p><p>{rules}</p><p>{summary}</p><p>{who}</p>"),
                ("Human-human ceiling vs human-judge", rp.table_html(ceil_rows, ccols)),
                ("Raters", rp.table_html(raters.to_dicts(), RATER_COLS)),
                ("Human vs AI judge", rp.table_html(list(m["judge"].values()), COLS))]
    if m["vpscore"]:
        sections.append(("Human vs VP-Score", rp.table_html(list(m["vpscore"].values()), COLS[:8])))
    sections += [(t, rp.img(p, out, t)) for t, p in figs]
    rp.write_html(out / "report.html", f"vprefer audit: {run.path.name}", sections)
    return m

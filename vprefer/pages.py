"""Static HTML reports with PNG plots (matplotlib, Agg backend): no server, open the file."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import polars as pl  # noqa: E402


def save_fig(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_annotation_counts(ann: pl.DataFrame, path: Path) -> Path:
    per = ann.group_by("status").agg(pl.col("request_id").n_unique().alias("n"), pl.col("cost_usd").sum()).sort("status")
    fig, ax = plt.subplots(figsize=(5, 3))
    bars = ax.bar(per["status"].to_list(), per["n"].to_list(), color="#4c72b0")
    for b, c in zip(bars, per["cost_usd"].to_list()):
        ax.annotate(f"${c:.3f}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("requests")
    ax.set_title("annotation requests by status (cost on top)")
    return save_fig(fig, path)


def plot_position_bias(bias: pl.DataFrame, path: Path) -> Path:
    aspects = bias["aspect"].unique().sort().to_list()
    positions = sorted(bias["shown_position"].unique().to_list())
    fig, ax = plt.subplots(figsize=(6, 3))
    width = 0.8 / max(1, len(aspects))
    for k, a in enumerate(aspects):
        b = bias.filter(pl.col("aspect") == a)
        xs = [p - 0.4 + (k + 0.5) * width for p in b["shown_position"].to_list()]  # groups centred on the position
        ax.bar(xs, b["bias"].to_list(), width, label=a)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(positions, [str(p) for p in positions])  # shown_position is 1-based
    ax.set_xlabel("position the image was shown in (1 = first)")
    ax.set_ylabel("mean score − overall mean")
    ax.set_title("position bias of the judge")
    ax.legend(fontsize=7, ncol=2)
    return save_fig(fig, path)


def plot_accuracy(rows: Sequence[dict], path: Path, title: str) -> Path:
    rows = [r for r in rows if r["acc_skip_ties"] == r["acc_skip_ties"]]  # drop NaN (all-tie aspects)
    fig, ax = plt.subplots(figsize=(6, 3))
    xs = list(range(len(rows)))
    acc = [r["acc_skip_ties"] for r in rows]
    err = [[a - r["ci_skip_lo"] for a, r in zip(acc, rows)], [r["ci_skip_hi"] - a for a, r in zip(acc, rows)]]
    ax.bar(xs, acc, yerr=err, capsize=4, color="#55a868")
    ax.set_xticks(xs, [r["aspect"] for r in rows], rotation=20, fontsize=8)
    ax.set_ylim(0, 1)
    ax.axhline(0.5, color="grey", ls="--", lw=0.8)
    ax.set_ylabel("pairwise accuracy")
    ax.set_title(title)
    return save_fig(fig, path)


def plot_curves(metrics_files: dict[str, Path], key_prefix: str, path: Path, *, ylabel: str, title: str,
                relative: bool = False) -> Path:
    """One panel per run (legend once, short labels): keys under ``key_prefix`` against optimizer updates;
    ``relative`` plots the change since the first value, so small movements are visible."""
    fig, axes = plt.subplots(1, len(metrics_files), figsize=(4.2 * len(metrics_files), 3), sharey=True, squeeze=False)
    for ax, (label, f) in zip(axes[0], metrics_files.items()):
        rows = [json.loads(x) for x in f.read_text().splitlines() if x.strip()] if f.exists() else []
        for key in sorted({k for r in rows for k in r if k.startswith(key_prefix)}):
            pts = [(r["step"], r[key]) for r in rows if key in r]
            if pts and relative:
                pts = [(x, y - pts[0][1]) for x, y in pts]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, label=key[len(key_prefix):].strip("/") or key)
        ax.set_xlabel("optimizer update")
        ax.set_title(f"{label}: {title}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if len(labels) > 1:
        axes[0][-1].legend(handles, labels, fontsize=7, loc="best")
    return save_fig(fig, path)


def table_html(rows: Sequence[dict], cols: Sequence[str]) -> str:
    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{fmt(r.get(c, ''))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_html(path: Path, title: str, sections: Sequence[tuple[str, str]]) -> Path:
    """``sections``: (heading, HTML body). Images are referenced relative to ``path``."""
    css = ("body{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}table{border-collapse:collapse}"
           "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}img{max-width:100%}"
           ".note{background:#fff4d6;border-left:4px solid #e0a800;padding:8px 12px}")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{css}</style></head><body><h1>{html.escape(title)}</h1>"]
    for heading, body in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>{body}")
    parts.append("</body></html>")
    path.write_text("\n".join(parts))
    return path


def img(path: Path, rel_to: Path, alt: str) -> str:
    return f"<img src='{html.escape(str(path.relative_to(rel_to)))}' alt='{html.escape(alt)}'>"

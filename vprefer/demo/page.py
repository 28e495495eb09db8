"""The demo's report: every number on the page comes with the sentence that says what it means.

Kept apart from ``demo`` (which runs the loop) so that the wording and the
numbers it quotes live in one place; the terminal summary reuses them.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from vprefer import pages as rp

HELDOUT = "heldout"  # the demo's held-out run: prompts of combinations never trained on, with their truth


def next_steps(out: Path) -> list[str]:
    """The commands to go on from this demo with real models, with the demo's own folders: each runs as pasted
    (a test parses every one against the CLI, required options included)."""
    run, held = out / "run", out / HELDOUT
    return [f"vprefer info {out}",
            f"OPENAI_API_KEY=... vprefer annotate {run} --annotator gpt-4o --dry-run",
            f"OPENAI_API_KEY=... vprefer annotate {run} --annotator gpt-4o --max-cost 5",
            f"vprefer pairs {run}",
            f"vprefer train-reward --recipe reward/vp-score-clip-lora.yaml --data {run} --out {out / 'vp-score-clip'}",
            f"vprefer eval-reward {out / 'vp-score-clip'} --data {held} --annotator truth",
            f"accelerate launch -m vprefer rl refl --recipe rl/refl-sd15.yaml --reward {out / 'vp-score-clip'} "
            f"--prompts {run} --pretrain-data {run} --out {out / 'refl-sd15'}"]


def stand_in_note(out: Path) -> str:
    cmds = "".join(f"<li><code>{html.escape(c)}</code></li>" for c in next_steps(out))
    return ("<p class='note'><b>Stand-ins were used.</b> This is a stand-in world of coloured shapes on plain "
            "backgrounds, made so that the whole loop can be checked against a truth on a CPU. The judge is "
            "vprefer's embedded OpenAI-compatible server, which reads the images by their pixels with noise and a "
            "position bias, not a multimodal LLM. The generator (SD-architecture), the reward backbone "
            "(CLIP-architecture) and the prompt rewriter (a small causal LM) are small models pretrained on this "
            "world and shipped in <code>vprefer/world/models</code>; the truth is read from the pixels. Every stage "
            "runs through the real code paths. This demo's runs are "
            f"<code>{html.escape(str(out / 'run'))}</code> (judged by the stand-in) and "
            f"<code>{html.escape(str(out / HELDOUT))}</code> (the held-out prompts with their true pairs), its "
            f"reward model <code>{html.escape(str(out / 'vp-score'))}</code>. To go on with real models "
            f"(a vLLM server works too: <code>--annotator vllm-qwen2-vl</code>):</p><ul>{cmds}</ul>"
            "<p>See the README walkthrough; <code>python benchmarks/closed_loop.py</code> runs this loop at full "
            "size.</p>")


COLS = ["aspect", "pairs", "acc_skip_ties", "ci_skip_lo", "ci_skip_hi", "acc_ties_half", "pred_tie_share",
        "kendall_tau_b"]


def _ok(x) -> bool:
    return isinstance(x, (int, float)) and not math.isnan(x)


def decided(rows: list[dict]) -> tuple[list[dict], list[str]]:
    """Rows with at least one non-tied gold pair, and the aspects dropped because every gold pair ties."""
    keep = [r for r in rows if r["pairs"] > r["gold_ties"]]
    return keep, [r["aspect"] for r in rows if r["pairs"] <= r["gold_ties"]]


def before_after_reward(metrics: Path, key: str = "eval/reward/overall") -> tuple[float, float] | None:
    rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()] if metrics.exists() else []
    b = next((r[key] for r in rows if r.get("phase") == "before" and key in r), None)
    a = next((r[key] for r in rows if r.get("phase") == "after" and key in r), None)
    return (b, a) if b is not None and a is not None else None


def last_value(metrics: Path, key: str) -> float | None:
    rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()] if metrics.exists() else []
    vals = [r[key] for r in rows if key in r]
    return vals[-1] if vals else None


@dataclass
class DemoNumbers:
    """What the report and the terminal summary quote."""

    requests: int
    ok: int
    invalid: int
    retries: int
    est_cost: float
    cost: float
    rm_rows: list[dict]
    judge_rows: list[dict]
    all_tie_aspects: list[str]
    rl: dict[str, tuple[float, float] | None] = field(default_factory=dict)
    dpo_final_acc: float | None = None
    rl_steps: dict[str, int] = field(default_factory=dict)
    truth: dict[str, dict] = field(default_factory=dict)  # loop -> truth_eval.compare on held-out prompts
    prompt_opt: dict = field(default_factory=dict)
    captions: list[dict] = field(default_factory=list)
    caption_cost: float = 0.0


def _acc_line(rows: list[dict]) -> str:
    return ", ".join(f"{r['aspect']} {r['acc_skip_ties']:.2f}" for r in rows if _ok(r["acc_skip_ties"]))


def _truth_line(name: str, t: dict) -> str:
    a, w = t["all_right"], t["win_rate"]
    r = t.get("reward")
    rew = f"; VP-Score (prompt-following) {r['before']:+.2f} -> {r['after']:+.2f}" if r else ""
    return (f"  {name}: all attributes right on held-out prompts {a['before']:.2f} -> {a['after']:.2f} "
            f"({a['delta']:+.2f}, 95% CI [{a['ci'][0]:+.2f}, {a['ci'][1]:+.2f}]), truth win rate {w['rate']:.2f}{rew}")


def summary(n: DemoNumbers, out: Path, elapsed: float) -> str:
    lines = [f"Demo finished in {elapsed:.0f}s, on a stand-in world (a pixel-reading judge, small models "
             "pretrained on the world, truth read from pixels).",
             f"  judge: {n.requests} requests, {n.ok} ok, {n.invalid} invalid, {n.retries} retries after injected 429s; "
             f"priced ${n.cost:.4f} at GPT-4o rates",
             f"  VP-Score vs held-out truth (pairwise accuracy, ties skipped): {_acc_line(n.rm_rows)}",
             f"  the judge itself vs held-out truth:                           {_acc_line(n.judge_rows)}"]
    lines += [_truth_line(name, t) for name, t in n.truth.items()]
    if n.captions:
        lines.append(f"  captions: {len(n.captions)} images recaptioned (short + detailed), ${n.caption_cost:.4f}; "
                     f"e.g. “{n.captions[0]['short']}”")
    lines += [f"  report: {out / 'report.html'}",
              f"  runs:   vprefer info {out / 'run'}   (held-out prompts: {out / HELDOUT})",
              "  next, with real models (each runs as pasted):"] + [f"    {c}" for c in next_steps(out)]
    return "\n".join(lines)


TRUTH_COLS = ["loop", "steps", "colour", "shape", "background", "all right", "Δ all right [95% CI]", "truth win rate",
              "VP-Score before → after", "gap (sd)"]


def truth_rows(n: DemoNumbers) -> list[dict]:
    rows = []
    for name, t in n.truth.items():
        r, h = t.get("reward"), t.get("hacking")
        rows.append({"loop": name, "steps": n.rl_steps.get(name, ""),
                     **{k: f"{t[k + '_right']['before']:.2f} → {t[k + '_right']['after']:.2f}"
                        for k in ("colour", "shape", "background")},
                     "all right": f"{t['all_right']['before']:.2f} → {t['all_right']['after']:.2f}",
                     "Δ all right [95% CI]": f"{t['all_right']['delta']:+.2f} [{t['all_right']['ci'][0]:+.2f}, "
                                             f"{t['all_right']['ci'][1]:+.2f}]",
                     "truth win rate": f"{t['win_rate']['rate']:.2f}",
                     "VP-Score before → after": f"{r['before']:+.2f} → {r['after']:+.2f}" if r else "",
                     "gap (sd)": f"{h['gap_sd']:+.2f}" if h else ""})
    return rows


def write(out: Path, n: DemoNumbers, figs: dict[str, Path], grids: dict[str, Path], elapsed: float,
          fast: bool) -> Path:
    dropped = (f"<p><i>{', '.join(n.all_tie_aspects)}</i>: every held-out pair is a tie, so there is no accuracy "
               "to show and the aspect is left out.</p>" if n.all_tie_aspects else "")
    tie_rules = ("<p><b>How to read the tables.</b> <i>acc_skip_ties</i> (ImageReward's rule) skips pairs the truth "
                 "ties and counts a tie in the model's scores as wrong; <i>acc_ties_half</i> (PickScore-style) keeps "
                 "every pair and gives ties half credit; <i>pred_tie_share</i> is the share of decided pairs on "
                 "which the model's scores tie; <i>kendall_tau_b</i> is the mean rank correlation per image set. "
                 "CIs are 95% bootstrap over prompts.</p>")
    j_tie = [r["pred_tie_share"] for r in n.judge_rows if _ok(r.get("pred_tie_share"))]
    teacher = ("<p><b>Why VP-Score can score above its teacher.</b> The judge gives integer 1–5 scores, so its scores "
               f"tie on {100 * max(j_tie):.0f}% of decided pairs for some aspect, and each of those ties counts "
               "as wrong under <i>acc_skip_ties</i>. VP-Score's scores are continuous and never tie: it learned the "
               "judge's ordering from many judgements and breaks its ties. Under <i>acc_ties_half</i> the gap "
               "narrows.</p>") if j_tie and max(j_tie) > 0.05 else ""
    dpo = (f" Diffusion-DPO's implicit accuracy (share of pairs where the policy prefers the judge's winner more "
           f"than the reference does) ended at {n.dpo_final_acc:.2f}.") if n.dpo_final_acc is not None else ""
    ft = ("<p>Each loop is measured where it did not train: one image per held-out prompt (a colour-shape-"
          "background combination no training prompt has) and seed, from the base generator and from the "
          "fine-tuned one with the same starting noise, each read by the truth reader. The table gives the share "
          "of images with each named attribute right, before → after; the change in <i>all right</i> with a 95% "
          "bootstrap CI over prompts; the truth win rate (after beats before on the same prompt and seed, ties "
          "half); VP-Score (prompt-following) on the same images; and the gap between the reward's gain and the "
          "truth's gain in units of their spread (a loop that raises its reward without raising the truth is "
          "hacking it). The demo's loops are short and its CIs wide: "
          "<code>python benchmarks/closed_loop.py</code> runs them at full size (BENCHMARKS.md has the figures)."
          f"{dpo}</p>" + rp.table_html(truth_rows(n), TRUTH_COLS))
    grid_html = ("<p>Top row: the base generator; bottom row: after the loop; one image per held-out prompt, the "
                 "first evaluation seed of each (not picked), same starting noise above and below. A green frame: "
                 "every attribute the prompt names is right (by the truth reader); red: at least one is wrong. "
                 "Under each column, the prompt's colour and shape and its background.</p>"
                 + "".join(f"<h3>{name}</h3>" + rp.img(Path(g), out, f"{name} before/after")
                           for name, g in grids.items()))
    return rp.write_html(out / "report.html", "vprefer demo report", [
        ("What this is", stand_in_note(out) + f"<p>{'Fast mode. ' if fast else ''}The whole demo ran in {elapsed:.0f}s."
                                         "</p>"),
        ("Annotation", f"<p>{n.requests} requests: {n.ok} answered ok, {n.invalid} invalid (kept with their raw text, "
                       f"never scored), {n.retries} retries after injected 429s. Estimated before sending "
                       f"${n.est_cost:.4f}; priced from the reported token usage ${n.cost:.4f} at GPT-4o rates.</p>"
         + rp.img(figs["annotations"], out, "annotation counts")),
        ("Position bias", "<p>Mean score by shown position minus the overall mean, per aspect. The stand-in judge "
                          "was given a bias for the first position (position 1); each image set was asked in two "
                          "orders, which averages the bias out of the pairs.</p>"
         + rp.img(figs["position_bias"], out, "position bias")),
        ("Reward model accuracy", "<p>VP-Score (LoRA on the world's pretrained CLIP, prompt-following started at its "
                                  "zero-shot score) trained on the judge's pairs, scored on held-out prompts against "
                                  "the truth, which stands in for human labels.</p>" + tie_rules + dropped
         + rp.img(figs["vpscore"], out, "VP-Score accuracy") + rp.table_html(n.rm_rows, COLS)),
        ("Judge vs truth", "<p>The stand-in judge's own scores (mean over judgements; <i>overall</i> is the mean of "
                           "the aspects, as in the pairs) against the same held-out truth.</p>" + teacher
         + rp.img(figs["judge"], out, "judge accuracy") + rp.table_html(n.judge_rows, COLS)),
        ("Fine-tuning", ft + rp.img(figs["curves"], out, "reward curves") + rp.img(figs["dpo"], out, "DPO implicit accuracy")),
        ("Before / after", grid_html),
        ("Prompt optimisation (GRPO)", _prompt_opt_html(n.prompt_opt, n.truth.get("GRPO rewriter"),
                                                        n.rl_steps.get("GRPO rewriter", 0))),
        ("Recaptioning", _captions_html(n, out)),
    ])


def caption_rows(run, out: Path) -> list[dict]:
    """One row per captioned image (short and detailed captions); the images go into one strip,
    ``report_files/captions.png``, numbered left to right as the rows."""
    if not run.has("captions"):
        return []
    from PIL import Image

    paths = dict(run.image_paths().select("image_id", "path").iter_rows())
    rows: dict[str, dict] = {}
    for iid, style, text in run.read("captions").select("image_id", "style", "caption").iter_rows():
        rows.setdefault(iid, {"image": len(rows) + 1})[style] = text
    side = 128
    strip = Image.new("RGB", (side * len(rows), side), "white")
    for k, iid in enumerate(rows):
        with Image.open(paths[iid]) as im:
            strip.paste(im.convert("RGB").resize((side, side), Image.Resampling.NEAREST), (k * side, 0))
    (out / "report_files").mkdir(parents=True, exist_ok=True)
    strip.save(out / "report_files" / "captions.png")
    return list(rows.values())


def _captions_html(n: DemoNumbers, out: Path) -> str:
    if not n.captions:
        return "<p>Not run.</p>"
    return ("<p>The same client that judges also writes captions (<code>vprefer caption</code>): each image below "
            "was sent with the <i>short</i> instruction (one sentence that could regenerate the image: "
            "ShareGPT-4o-Image, DALL-E 3's short captions) and the <i>detailed</i> one (ShareGPT4V, DALL-E 3's "
            f"descriptive captions), journalled and priced like annotation: ${n.caption_cost:.4f} at GPT-4o rates "
            "for all of them. The stand-in captioner reads pixel statistics (dominant colour, background, noise), "
            "so its captions name colours, not shapes; a real vision model names what it sees. "
            "<code>vprefer caption RUN ... --to-prompts</code> adds captions as prompts (source "
            "<code>caption:STYLE</code>), and <code>vprefer export RUN --format hf-captions</code> writes the "
            "(image, caption) pairs as an HF dataset: a folder of images becomes a text-to-image training set.</p>"
            "<p>Images 1 to " + str(len(n.captions)) + ", left to right:</p>"
            + rp.img(out / "report_files" / "captions.png", out, "captioned images")
            + rp.table_html(n.captions, ["image", "short", "detailed"]))


def _prompt_opt_html(po: dict, truth: dict | None, steps: int) -> str:
    if "after/reward" not in po:
        return "<p>Not run.</p>"
    rows = [{"prompts": "original prompt", "reward": po["eval/original"]},
            {"prompts": "rewriter before GRPO", "reward": po["before/reward"]},
            {"prompts": f"rewriter after {steps} GRPO steps", "reward": po["after/reward"]}]
    text = ("<p>The world's pretrained rewriter (a small causal LM, LoRA) trained with TRL's <code>GRPOTrainer</code> "
            "to rewrite prompts for the world generator; the reward of a rewrite is the demo's VP-Score of the images "
            "made from it, with prompt-following scored against the <i>original</i> prompt so a rewrite cannot drift. "
            "The table is the mean reward on the evaluation prompts (greedy rewrites).</p>"
            + rp.table_html(rows, ["prompts", "reward"]))
    if truth:
        a, z = truth["all_right"], truth.get("vs_zero_shot_rewriter", {}).get("all_right")
        text += (f"<p>On the truth (held-out prompts, images made from the rewrites, read against the original "
                 f"prompt): all attributes right {a['before']:.2f} with the original prompt, {a['after']:.2f} with the "
                 f"trained rewriter's rewrite ({a['delta']:+.2f}, 95% CI [{a['ci'][0]:+.2f}, {a['ci'][1]:+.2f}])")
        if z:
            text += (f"; against the pretrained rewriter it started from, {z['delta']:+.2f} "
                     f"[{z['ci'][0]:+.2f}, {z['ci'][1]:+.2f}], which is GRPO's own share (the rest is what a "
                     "descriptive rewrite gives a generator pretrained mostly on descriptive captions)")
        text += ".</p>"
        ex = truth.get("examples", [])
        if ex:
            text += ("<p>Examples (original → pretrained rewriter → after GRPO):</p><ul>"
                     + "".join(f"<li>“{html.escape(o)}” → “{html.escape(z0)}” → “{html.escape(t)}”</li>"
                               for o, z0, t in ex[:3]) + "</ul>")
    return text

"""Audit commands: audit server start|stop, push, pull, report."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vprefer.cli._app import app, out
from vprefer.store import as_run

audit = typer.Typer(help="Human agreement audits with a local Label Studio (token from VPREFER_LS_TOKEN).",
                    no_args_is_help=True)
server = typer.Typer(help="Run a local Label Studio in its own virtual environment (a checkout's .venv-ls/ if it has "
                     "one, else venv-ls/ in $VPREFER_CACHE or ~/.cache/vprefer).", no_args_is_help=True)
audit.add_typer(server, name="server")
app.add_typer(audit, name="audit")
DEFAULT_URL = "http://127.0.0.1:8080"


@server.command("start")
def server_start(port: int = typer.Option(8080, "--port", help="Port Label Studio listens on."),
                 data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Label Studio's database, media "
                                                         "and log, kept between starts (default: a checkout's "
                                                         ".label-studio/ if it has one, else label-studio/ in "
                                                         "$VPREFER_CACHE or ~/.cache/vprefer)."),
                 run_dir: Optional[Path] = typer.Option(None, "--run", help="Serve this run: its folder is the "
                                                        "document root, its images folder the storage push creates."),
                 document_root: Optional[Path] = typer.Option(None, "--document-root", help="Serve the files under "
                                                              "this folder instead (e.g. a folder of several runs)."),
                 host: str = typer.Option("127.0.0.1", "--host", help="Listen address; anything but 127.0.0.1 makes "
                                          "the server (and the served files) reachable from other machines."),
                 serve_whole_filesystem: bool = typer.Option(False, "--serve-whole-filesystem", help="Allow "
                                                             "--document-root / : anyone with a login can read any "
                                                             "file on this machine.")) -> None:
    """Install Label Studio if missing, start it with the admin from VPREFER_LS_USERNAME / VPREFER_LS_PASSWORD /
    VPREFER_LS_TOKEN, and wait until it is healthy. Only the run's images (or --document-root) are served."""
    from vprefer.audit.server import start
    from vprefer.cli._app import console

    if run_dir is not None and document_root is not None:
        raise typer.BadParameter("give --run or --document-root, not both")
    root = document_root if document_root is not None else (as_run(run_dir).path if run_dir else None)
    url = start(port, data_dir=data_dir.resolve() if data_dir else None, document_root=root, host=host,
                serve_whole_filesystem=serve_whole_filesystem, warn=lambda w: console.print(w, style="yellow"))
    out.print(f"Label Studio is up at {url} (stop with `vprefer audit server stop`)")


@server.command("stop")
def server_stop(data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="The --data-dir it was started "
                                                        "with (default: the same default as start's).")) -> None:
    """Stop the local Label Studio started by `audit server start`."""
    from vprefer.audit.server import default_data, stop

    data_dir = data_dir.resolve() if data_dir else default_data()
    out.print("stopped" if stop(data_dir) else "no server recorded in " + str(data_dir))


@audit.command("push")
def push_cmd(
    run_dir: Path = typer.Argument(...),
    n: int = typer.Option(50, "--n", help="How many image sets (or pairs, with --interface pairwise)."),
    strategy: str = typer.Option("random", "--strategy", help="random | stratified (by prompt category; sets only) | "
                                 "disagreement (the judge's permutations, annotators, or VP-Score vs judge disagree most)"),
    interface: str = typer.Option("sets", "--interface", help="sets: rate and rank an image set (a project per set "
                                  "size); pairwise: Left / Right / Tie per aspect for two images."),
    overlap: int = typer.Option(1, "--overlap", help="People per task (Label Studio's annotations per task, set on "
                                "every project of the run); 2 or more gives the human-human ceiling."),
    gold: int = typer.Option(0, "--gold", help="Add N gold tasks: a run image and a blurred, noisy copy of it "
                             "(written into RUN/images/gold/), to measure each rater; never preference data."),
    show_ai: bool = typer.Option(False, "--show-ai", help="Show the AI judgement to annotators (hidden by default)."),
    inline: bool = typer.Option(False, "--inline", help="Embed images as data URLs instead of local-files storage."),
    url: str = typer.Option(DEFAULT_URL, "--url", help="Label Studio's address (token from VPREFER_LS_TOKEN)."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the selection (the same seed picks the same sets)."),
    document_root: Optional[Path] = typer.Option(None, "--document-root", help="The server's local-files document "
                                                 "root, as given to `audit server start` (default: the run folder, as "
                                                 "`audit server start --run RUN` sets it)."),
) -> None:
    """Send image sets or pairs to Label Studio for human judgement. Idempotent: a rerun imports nothing twice."""
    from vprefer.audit import push

    r = push(run_dir, url, n=n, strategy=strategy, interface=interface, overlap=overlap, gold=gold, show_ai=show_ai,
             inline=inline, seed=seed, document_root=document_root)
    out.print(f"projects {r.projects}: imported {r.imported} tasks ({r.already_there} already there, {r.gold} gold), "
              f"{overlap} annotation(s) per task; annotate at {r.url}")


@audit.command("pull")
def pull_cmd(run_dir: Path = typer.Argument(...), url: Optional[str] = typer.Option(None, "--url", help="Label Studio's "
                                                                                   "address (default: the one push used).")) -> None:
    """Fetch completed annotations (any number of annotators per task) into the 'human' table; gold answers and
    time per task into 'gold_answers' and 'audit_annotations'."""
    from vprefer.audit import pull

    r = pull(run_dir, url)
    out.print(f"pulled {r.annotations} annotations ({r.rows} rows, {r.gold_answers} on gold tasks) from "
              f"{r.annotators} annotators" + (f"; {r.tasks_missing} tasks no longer exist" if r.tasks_missing else ""))


@audit.command("report")
def report_cmd(run_dir: Path = typer.Argument(...), out_dir: Path = typer.Option(..., "--out", help="Folder for "
                                                                                            "the report files."),
               model: Optional[str] = typer.Option(None, "--model", help="VP-Score to compare with the humans too."),
               n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap resamples of prompts for the CIs."),
               exclude_raters: Optional[str] = typer.Option(None, "--exclude-raters", help="Comma-separated rater "
                                                            "ids, 'flagged', or 'none': left out of the report and "
                                                            "of the run's human pairs (kept for later pulls)."),
               min_gold: float = typer.Option(0.8, "--min-gold", help="Flag raters below this gold accuracy."),
               min_agreement: float = typer.Option(0.5, "--min-agreement", help="Flag raters who agree with the "
                                                   "majority of the other people less often than this.")) -> None:
    """Agreement report (Markdown + HTML + PNG): human-judge and human-VP-Score, the human-human ceiling, per-rater
    quality (agreement, gold accuracy, time per task), kappa, alpha, CIs."""
    from vprefer.audit import write_report

    rm = None
    if model:
        from vprefer.reward import VPScore

        rm = VPScore.from_pretrained(model)
    m = write_report(run_dir, out_dir, rm, n_boot=n_boot, exclude=exclude_raters, min_gold=min_gold,
                     min_agreement=min_agreement)
    for a, r in m["judge"].items():
        c = m["ceiling"].get(a)
        out.print(f"  judge {a}: acc {r['acc_skip_ties']:.3f} [{r['ci_skip_lo']:.3f}, {r['ci_skip_hi']:.3f}], "
                  f"kappa {r['qw_kappa']:.3f}" + (f"; human-human ceiling {c['acc']:.3f} [{c['ci_lo']:.3f}, "
                                                  f"{c['ci_hi']:.3f}]" if c else ""))
    for r in m["raters"]:
        if r["flagged"]:
            out.print(f"  rater {r['annotator']} flagged: {r['flag']}" + (" (excluded)" if r["excluded"] else ""))
    out.print(f"wrote {out_dir}/report.md and report.html")

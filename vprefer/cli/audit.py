"""Audit commands: audit server start|stop, push, pull, report."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vprefer.cli._app import app, friendly, out

audit = typer.Typer(help="Human agreement audits with a local Label Studio (token from VPREFER_LS_TOKEN).",
                    no_args_is_help=True)
server = typer.Typer(help="Run a local Label Studio in its own virtual environment (.venv-ls/).", no_args_is_help=True)
audit.add_typer(server, name="server")
app.add_typer(audit, name="audit")
DEFAULT_URL = "http://127.0.0.1:8080"


@server.command("start")
@friendly
def server_start(port: int = typer.Option(8080, "--port"),
                 data_dir: Path = typer.Option(Path(".label-studio"), "--data-dir"),
                 document_root: Path = typer.Option(Path("/"), "--document-root", help="Local files under this folder "
                                                    "can be served to annotators.")) -> None:
    """Install Label Studio if missing, start it on 127.0.0.1 with the admin from VPREFER_LS_USERNAME /
    VPREFER_LS_PASSWORD / VPREFER_LS_TOKEN, and wait until it is healthy."""
    from vprefer.audit.server import start

    url = start(port, data_dir=data_dir.resolve(), document_root=document_root.resolve())
    out.print(f"Label Studio is up at {url} (stop with `vprefer audit server stop`)")


@server.command("stop")
@friendly
def server_stop(data_dir: Path = typer.Option(Path(".label-studio"), "--data-dir")) -> None:
    """Stop the local Label Studio started by `audit server start`."""
    from vprefer.audit.server import stop

    out.print("stopped" if stop(data_dir.resolve()) else "no server recorded in " + str(data_dir))


@audit.command("push")
@friendly
def push_cmd(
    run_dir: Path = typer.Argument(...),
    n: int = typer.Option(50, "--n", help="How many image sets."),
    strategy: str = typer.Option("random", "--strategy", help="random | stratified (by prompt category) | "
                                 "disagreement (permutations, annotators, or VP-Score vs judge disagree most)"),
    show_ai: bool = typer.Option(False, "--show-ai", help="Show the AI judgement to annotators (hidden by default)."),
    inline: bool = typer.Option(False, "--inline", help="Embed images as data URLs instead of local-files storage."),
    url: str = typer.Option(DEFAULT_URL, "--url"),
    seed: int = typer.Option(0, "--seed"),
    document_root: Path = typer.Option(Path("/"), "--document-root", help="The server's local-files document root "
                                       "(as given to `audit server start`)."),
) -> None:
    """Send image sets to Label Studio for human rating and ranking. Idempotent: a rerun imports nothing twice."""
    from vprefer.audit import push

    r = push(run_dir, url, n=n, strategy=strategy, show_ai=show_ai, inline=inline, seed=seed,
             document_root=document_root)
    out.print(f"project {r.project_id}: imported {r.imported} tasks ({r.already_there} already there); "
              f"annotate at {r.url}")


@audit.command("pull")
@friendly
def pull_cmd(run_dir: Path = typer.Argument(...), url: Optional[str] = typer.Option(None, "--url")) -> None:
    """Fetch completed annotations (any number of annotators per task) into the 'human' table."""
    from vprefer.audit import pull

    r = pull(run_dir, url)
    out.print(f"pulled {r.annotations} annotations ({r.rows} rows) from {r.annotators} annotators"
              + (f"; {r.tasks_missing} tasks no longer exist" if r.tasks_missing else ""))


@audit.command("report")
@friendly
def report_cmd(run_dir: Path = typer.Argument(...), out_dir: Path = typer.Option(..., "--out"),
               model: Optional[str] = typer.Option(None, "--model", help="VP-Score to compare with the humans too."),
               n_boot: int = typer.Option(1000, "--n-boot")) -> None:
    """Agreement report (Markdown + HTML + PNG): human-judge and human-VP-Score, kappa, alpha, ceiling, CIs."""
    from vprefer.audit import write_report

    rm = None
    if model:
        from vprefer.reward import VPScore

        rm = VPScore.from_pretrained(model)
    m = write_report(run_dir, out_dir, rm, n_boot=n_boot)
    for a, r in m["judge"].items():
        out.print(f"  judge {a}: acc {r['acc_skip_ties']:.3f} [{r['ci_skip_lo']:.3f}, {r['ci_skip_hi']:.3f}], "
                  f"kappa {r['qw_kappa']:.3f}")
    out.print(f"wrote {out_dir}/report.md and report.html")

"""serve-reward: a VP-Score as an HTTP reward service (protocol: vprefer.rl.reward_server)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from vprefer.cli._app import app, out
from vprefer.errors import InputError


def parse_aspects(text: str | None) -> dict[str, float] | None:
    """``overall`` or ``overall=1,aesthetics=0.5`` -> {aspect: weight} (a bare name weighs 1)."""
    if not text:
        return None
    weights: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, eq, w = part.partition("=")
        try:
            weights[name.strip()] = float(w) if eq else 1.0
        except ValueError:
            raise InputError(f"--aspects {text!r}: weight {w!r} of {name.strip()!r} is not a number") from None
    return weights or None


@app.command("serve-reward")
def serve_reward(
    vpscore: str = typer.Argument(..., help="A trained VP-Score folder (or hub id)."),
    port: int = typer.Option(8123, "--port", help="Port to listen on (0: any free port; the URL is printed)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on; 0.0.0.0 serves other machines "
                             "(the server has no authentication: keep it on a trusted network)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Images scored per forward pass."),
    aspects: Optional[str] = typer.Option(None, "--aspects", help="Aspects served and their weights in the "
                                          "combined `reward` score, e.g. overall=1,aesthetics=0.5 (default: "
                                          "overall, or every aspect equally if the model has no overall)."),
) -> None:
    """Serve a VP-Score as a reward over HTTP for any RL framework: POST /score {prompts, images (base64 PNG)}
    -> {scores: {aspect: [...], reward: [...]}}; GET /health. Stop with Ctrl-C."""
    weights = parse_aspects(aspects)  # a typo is reported before the model loads
    if batch_size < 1:
        raise InputError(f"--batch-size must be >= 1; got {batch_size}")
    config = Path(vpscore) / "vpscore_config.json"
    if Path(vpscore).exists() and not config.exists():
        raise InputError(f"{vpscore} is not a trained VP-Score folder (no vpscore_config.json)")
    if config.exists() and weights:  # a wrong aspect is reported before the model loads
        have = json.loads(config.read_text()).get("aspects", [])
        if unknown := [a for a in weights if a not in have]:
            raise InputError(f"--aspects: {unknown} are not among the reward's aspects {have}")
    from vprefer.progress import no_bars_without_a_terminal
    from vprefer.reward import VPScore
    from vprefer.rl.reward_server import RewardServer

    no_bars_without_a_terminal()
    model = VPScore.from_pretrained(vpscore).requires_grad_(False)
    try:
        server = RewardServer(model, weights, host=host, port=port, batch_size=batch_size)
    except OSError as e:
        raise InputError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    out.print(f"serving VP-Score {vpscore} (aspects {server.weights}) on {server.url} : POST /score, GET /health",
              highlight=False)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        out.print("stopped", highlight=False)
    finally:
        server.server_close()

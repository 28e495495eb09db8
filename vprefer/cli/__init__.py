"""Command-line interface: a thin layer over the importable API (see ``vprefer --help``)."""

from vprefer.cli._app import app
from vprefer.cli import data as _data  # noqa: F401  (registers commands)
from vprefer.cli import annotate as _annotate  # noqa: F401
from vprefer.cli import reward as _reward  # noqa: F401
from vprefer.cli import rl as _rl  # noqa: F401
from vprefer.cli import rl_prompts as _rl_prompts  # noqa: F401
from vprefer.cli import rl_grpo as _rl_grpo  # noqa: F401
from vprefer.cli import prompts as _prompts  # noqa: F401
from vprefer.cli import caption as _caption  # noqa: F401
from vprefer.cli import audit as _audit  # noqa: F401
from vprefer.cli import world as _world  # noqa: F401
from vprefer.cli import recipes as _recipes  # noqa: F401
from vprefer.cli import serve_reward as _serve_reward  # noqa: F401


def main() -> None:
    from vprefer.secrets import install_log_redaction

    install_log_redaction()
    app()


__all__ = ["app", "main"]

"""The typer app and the one place where expected errors become one clear line."""

from __future__ import annotations

import typer
import typer.core
from rich.console import Console

from vprefer.errors import VpreferError
from vprefer.secrets import redact


def one_line_errors(call):
    """Run ``call()``: a :class:`VpreferError` (a mistake the user can fix) prints one redacted line and exits 1;
    Ctrl-C says what is kept and exits 130; anything else is a bug and keeps its traceback, so it is never
    hidden behind a tidy message."""
    try:
        return call()
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: everything answered so far is saved; rerun the same command to resume")
        raise typer.Exit(130) from None
    except VpreferError as e:
        fail(str(e))


class _OneLineErrors(typer.core.TyperGroup):
    """The one handler of every command: sub-commands' errors travel up through the root group."""

    def invoke(self, ctx):
        return one_line_errors(lambda: super(_OneLineErrors, self).invoke(ctx))


app = typer.Typer(
    cls=_OneLineErrors,
    name="vprefer",
    help=(
        "vprefer: turn multimodal-LLM judgements into preference data, VP-Score reward models "
        "and better text-to-image generators (after VisionPrefer).\n\n"
        "Everything reads and writes a RUN directory (parquet tables + manifest.json). "
        "Typical flow: ingest (or import) -> annotate -> pairs -> train-reward -> rl."
    ),
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals could hold an API key
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        from vprefer import __version__

        print(f"vprefer {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", help="Print vprefer's version and exit.",
                                       is_eager=True, callback=_version)) -> None:
    pass


# typer shows an on/off flag as ``--dry-run <bool>``, yet ``--dry-run true`` is refused: a flag shows no type
_display_type_rich = typer.core.TyperOption.display_type_rich
typer.core.TyperOption.display_type_rich = lambda self, ctx: None if self.is_flag else _display_type_rich(self, ctx)

console = Console(stderr=True, soft_wrap=True)  # an error is one line, never wrapped at 80 columns
out = Console()
for _c in (console, out):
    if not _c.is_terminal:  # a log or a pipe: rich would assume 80 columns and cut identifiers to "local-judge:…"
        _c.width = 100_000  # tables are as wide as their content (they do not expand)


def fail(message: str, code: int = 1) -> None:
    console.print(f"[bold red]error:[/] {redact(str(message))}", highlight=False, markup=True)
    raise typer.Exit(code)




def overrides_argument():
    """The trailing ``KEY=VALUE`` arguments every training command takes (vprefer.config)."""
    from vprefer.config import HELP

    return typer.Argument(None, metavar="KEY=VALUE", help=HELP, show_default=False)


def load_recipe(cls, recipe, folder: str, overrides, **flags):
    """``vprefer.recipes.load_config`` for a command: a deprecated key is one yellow line, not a Python warning."""
    import warnings

    from vprefer.config import RecipeDeprecation
    from vprefer.recipes import load_config

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RecipeDeprecation)
        cfg = load_config(cls, recipe, folder, cli_args=overrides or (), **flags)
    for w in caught:
        if issubclass(w.category, RecipeDeprecation):
            console.print(f"[yellow]warning:[/] {w.message}", highlight=False)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return cfg

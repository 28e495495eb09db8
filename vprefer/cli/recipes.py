"""Recipe commands: recipes ls | cp (what ships with vprefer, and local copies to edit; torchtune's ls/cp)."""

from __future__ import annotations

import typer

from vprefer.cli._app import app, out

recipes_app = typer.Typer(
    help="The annotator presets, rubrics, caption styles, reward and RL recipes and Label Studio files that ship with "
         "vprefer. A name (e.g. --recipe dpo-tiny) is looked up in the working directory's folder first "
         "(./rl/dpo-tiny.yaml), then in the shipped copy; `recipes cp` makes such a local copy to edit.",
    no_args_is_help=True)
app.add_typer(recipes_app, name="recipes")


@recipes_app.command("ls")
def ls_cmd(paths: bool = typer.Option(False, "--paths", help="Show each file's full path.")) -> None:
    """List every recipe, preset, rubric, caption style and Label Studio file by kind, and where it comes from:
    "local ./rl/" (the working directory's folder, used first) or "shipped"; a shipped one a local file of the
    same name replaces is marked so."""
    from rich.table import Table

    from vprefer.recipes import list_assets

    table = Table(box=None, pad_edge=False)
    for col in ("kind", "name", "from") + (("path",) if paths else ()):
        table.add_column(col)
    for a in list_assets():
        origin = a.origin + (" (replaced by the local one)" if a.shadowed else "")
        table.add_row(a.kind, a.name, origin, *((str(a.path),) if paths else ()))
    out.print(table)


@recipes_app.command("cp")
def cp_cmd(
    name: str = typer.Argument(..., help="A shipped file's name as `recipes ls` shows it (dpo-tiny, gpt-4o, sets-4); "
                               "FOLDER/NAME (rl/dpo-tiny) where two kinds share a name."),
    dest: str = typer.Argument(..., help="Where to copy it: a folder (existing, or ending in /) keeps the file's "
                               "name, e.g. `rl/` for a local recipe that then replaces the shipped one; anything "
                               "else is the new file's path."),
    force: bool = typer.Option(False, "--force", help="Overwrite DEST if it exists."),
) -> None:
    """Copy a shipped recipe, preset, rubric, caption style or Label Studio file out, to read or change it."""
    from vprefer.recipes import copy_asset

    out.print(f"copied {name} to {copy_asset(name, dest, force=force)}")

"""YAML recipes and presets: readable files validated by pydantic at the boundary.

A recipe never holds a secret, only the *name* of the environment variable
that does. Unknown keys are errors (a typo must not silently fall back to a
default), and the error names the file, the key path and what was expected.

Where recipes come from. The editable sources are the repository's top-level
folders (``annotators/``, ``reward/``, ``rl/``, ``label_studio/``); a wheel ships
them inside the package as ``vprefer/_shipped/<folder>/`` (pyproject.toml's
``package-dir``). A name resolves, in this order, to: an existing path; the
working directory's folder (``./rl/NAME.yaml``: a local copy beats the shipped
one); the shipped folder (the repository's own in a checkout, so a checkout
behaves as before). :func:`find_asset` is that one resolver; ``vprefer recipes
ls`` lists both places and ``vprefer recipes cp`` copies a shipped file out.
"""

from __future__ import annotations

import difflib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError

from vprefer.errors import VpreferError

REPO = Path(__file__).resolve().parents[1]  # the checkout (in an installed wheel: site-packages)
PACKAGED = Path(__file__).resolve().parent / "_shipped"  # the folders' copy inside an installed wheel
T = TypeVar("T", bound="Recipe")


class RecipeError(VpreferError, ValueError):
    """A recipe or preset that cannot be used; the message names the file and the key."""


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)
    _source: str = PrivateAttr("<recipe>")
    _cli: dict = PrivateAttr(default_factory=dict)

    @property
    def source(self) -> str:
        """The file the recipe came from (for messages about it)."""
        return self._source

    @property
    def cli(self) -> dict:
        """The command line's ``key=value`` overrides applied to it (a bad value there blames the command line)."""
        return self._cli

    @classmethod
    def from_yaml(cls: type[T], path: str | Path, **overrides: Any) -> T:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise RecipeError(f"recipe {path} does not exist") from None
        except yaml.YAMLError as e:
            raise RecipeError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(data, dict):
            raise RecipeError(f"{path}: expected a mapping of keys to values")
        given = {k: v for k, v in overrides.items() if v is not None}
        data.update(given)
        return cls.validated(data, str(path), overridden=set(given))

    @classmethod
    def validated(cls: type[T], data: dict, source: str = "<recipe>", *, overridden: set[str] = frozenset(),
                  cli: Mapping[str, Any] = {}) -> T:
        """``overridden``: keys set by command-line options; a bad value there is the option's fault, and the
        message says so instead of blaming the (shipped, correct) file. ``cli``: the dotted ``key=value``
        overrides already applied to ``data`` (vprefer.config), blamed the same way."""
        try:
            obj = cls.model_validate(data, context={"source": source})
            obj._source, obj._cli = source, dict(cli)
            return obj
        except ValidationError as e:
            lines, flags = [], []
            for err in e.errors():
                loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
                msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
                given = next((k for k in cli if loc == k or loc.startswith(k + ".")), None)
                if given is not None:
                    flags.append(f"{given}={cli[given]!r} (command line): {msg}")
                elif err["loc"] and err["loc"][0] in overridden:
                    flags.append(f"--{str(err['loc'][0]).replace('_', '-')} {data[err['loc'][0]]!r}: {msg}")
                else:
                    lines.append(f"{loc}: {msg}")
            if flags and not lines:
                raise RecipeError("; ".join(flags)) from None
            raise RecipeError(f"{source}: invalid {cls.__name__}: " + "; ".join(flags + lines)) from None

    def resolved(self) -> dict:
        return self.model_dump(mode="json")


def shipped_root() -> Path:
    """The folder holding the shipped ``annotators/``, ``reward/``, ``rl/``, ``label_studio/``: the package's
    copy in an installed wheel, else the repository (a checkout, editable install or not)."""
    return PACKAGED if PACKAGED.is_dir() else REPO


def search_path(folder: str) -> list[tuple[str, Path]]:
    """Where names of ``folder`` are looked up, first match wins: ``[("local ./rl/", cwd/rl), ("shipped", ...)]``;
    the local entry is left out when it is the shipped folder itself (the working directory is the checkout)."""
    local, shipped = Path.cwd() / folder, shipped_root() / folder
    same = local.is_dir() and shipped.is_dir() and local.resolve() == shipped.resolve()
    return ([] if same else [(f"local ./{folder}/", local)]) + [("shipped", shipped)]


def find_asset(name_or_path: str | Path, folder: str, suffixes: tuple[str, ...] = (".yaml", ".yml"), *,
               what: str = "recipe") -> Path:
    """A ``what`` (recipe, annotator preset, rubric, interface) given as a path, or by name from
    ./<folder>/, then the shipped <folder>/ (see the module docstring). The one resolver for every kind."""
    p = Path(name_or_path)
    if p.exists():
        return p
    names = [p.name] + [p.name + s for s in suffixes]
    places = search_path(folder)
    for _, base in places:
        for n in names:
            if (base / n).is_file():
                return base / n
    have = sorted({f.stem for _, base in places if base.is_dir() for f in base.iterdir() if f.suffix in suffixes})
    close = difflib.get_close_matches(p.stem, have, n=1)
    looked = " and ".join(f"./{folder}/" if where != "shipped" else f"{base}/" for where, base in places)
    raise RecipeError(f"no such {what} '{name_or_path}'" + (f" (did you mean '{close[0]}'?)" if close else "")
                      + (f"; {what}s: {', '.join(have)}" if have else "")
                      + f" (or a path; looked in {looked})")


def _mapping(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: expected a mapping of keys to values")
    return data


def load_config(cls, name_or_path: str | Path, folder: str, *, cli_args: Sequence[str] | Mapping[str, Any] = (),
                **overrides: Any):
    """The one way a YAML file becomes a typed config, for both kinds of config the project has.

    A pydantic ``Recipe`` validates itself; a trainer's ``...Config`` (a ``transformers.TrainingArguments``
    dataclass) gets the same rules (``vprefer.config.build_dataclass``): a mapping, no unknown keys (with the
    closest name), values typed by their field, bad values named with the file. ``overrides`` (CLI flags)
    replace recipe keys, ``None`` meaning "not given"; then ``cli_args``, the command's trailing ``key=value``
    arguments (or a mapping of dotted keys to values), set any field, dotted keys reaching into sections.
    """
    from vprefer.config import apply_overrides, build_dataclass, check_recipe_keys, parse_overrides

    path = find_asset(name_or_path, folder)
    cli = dict(cli_args) if isinstance(cli_args, Mapping) else parse_overrides(cli_args)
    data = _mapping(path)
    given = {k: v for k, v in overrides.items() if v is not None}
    data.update(given)
    if isinstance(cls, type) and issubclass(cls, Recipe):
        data = apply_overrides(data, cli, check_recipe_keys(cls, cli, str(path)))
        return cls.validated(data, str(path), overridden=set(given), cli=cli)
    return build_dataclass(cls, data, str(path), cli=cli)


# ------------------------------------------------------------------ what ships: `vprefer recipes ls / cp`
YAML = (".yaml", ".yml")
KINDS: tuple[tuple[str, str, tuple[str, ...]], ...] = (  # (kind, folder, suffixes), as find_asset's callers use them
    ("annotator preset", "annotators", YAML),
    ("rubric", "annotators/rubrics", YAML),
    ("caption style", "annotators/captions", YAML),
    ("reward recipe", "reward", YAML),
    ("RL recipe", "rl", YAML),
    ("Label Studio interface", "label_studio/interfaces", (".xml",)),
    ("Label Studio script", "label_studio", (".sh",)),
)


@dataclass(frozen=True)
class Asset:
    kind: str
    folder: str
    name: str  # the file's stem: what find_asset takes
    path: Path
    origin: str  # "shipped" or "local ./rl/"
    shadowed: bool = False  # a shipped file a local one of the same name replaces

    @property
    def qualified(self) -> str:
        return f"{self.folder}/{self.name}"


def list_assets() -> list[Asset]:
    """Every recipe, preset, rubric, caption style, interface and script, local and shipped, by kind."""
    out = []
    for kind, folder, suffixes in KINDS:
        seen: set[str] = set()
        for origin, base in search_path(folder):
            files = sorted((f for f in base.iterdir() if f.is_file() and f.suffix in suffixes), key=lambda f: f.stem) \
                if base.is_dir() else []
            for f in files:
                out.append(Asset(kind, folder, f.stem, f, origin, shadowed=f.stem in seen))
            seen |= {f.stem for f in files}
    return out


def shipped_asset(name: str) -> Asset:
    """The shipped file called ``name`` (a stem, a file name, or ``folder/name`` where two kinds share a name)."""
    shipped = [a for a in list_assets() if a.origin == "shipped"]
    key = name.removesuffix(Path(name).suffix) if Path(name).suffix in {s for k in KINDS for s in k[2]} else name
    hits = [a for a in shipped if key in (a.name, a.qualified)]
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise RecipeError(f"'{name}' names {len(hits)} shipped files: give one of "
                          + ", ".join(a.qualified for a in hits))
    have = sorted({a.name for a in shipped})
    close = difflib.get_close_matches(Path(key).name, have, n=1)
    raise RecipeError(f"no shipped recipe or preset '{name}'" + (f" (did you mean '{close[0]}'?)" if close else "")
                      + f"; `vprefer recipes ls` lists them (looked in {shipped_root()})")


def copy_asset(name: str, dest: str | Path, *, force: bool = False) -> Path:
    """Copy a shipped file to ``dest``: a folder (existing, or written with a trailing /) gets the file under its
    own name, anything else is the new file's path. Refuses to overwrite unless ``force``."""
    asset = shipped_asset(name)
    folder = str(dest).endswith(("/", os.sep)) or Path(dest).is_dir()
    dest = Path(dest) / asset.path.name if folder else Path(dest)
    if dest.exists() and not force:
        raise RecipeError(f"{dest} exists; pass --force to overwrite it")
    if dest.exists() and dest.resolve() == asset.path.resolve():
        raise RecipeError(f"{dest} is the shipped file itself")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(asset.path, dest)
    return dest

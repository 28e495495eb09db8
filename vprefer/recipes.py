"""YAML recipes and presets: readable files validated by pydantic at the boundary.

A recipe never holds a secret, only the *name* of the environment variable
that does. Unknown keys are errors (a typo must not silently fall back to a
default), and the error names the file, the key path and what was expected.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError

from vprefer.errors import VpreferError

REPO = Path(__file__).resolve().parents[1]
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


def find_asset(name_or_path: str | Path, folder: str, suffixes: tuple[str, ...] = (".yaml", ".yml"), *,
               what: str = "recipe") -> Path:
    """A ``what`` (recipe, annotator preset, rubric) given as a path, or by name from ./<folder>/ or the repository's <folder>/."""
    p = Path(name_or_path)
    if p.exists():
        return p
    names = [p.name] + [p.name + s for s in suffixes]
    for base in (Path.cwd() / folder, REPO / folder):
        for n in names:
            if (base / n).exists():
                return base / n
    have = sorted({f.stem for base in (Path.cwd() / folder, REPO / folder) if base.is_dir()
                   for f in base.iterdir() if f.suffix in suffixes})
    close = difflib.get_close_matches(p.stem, have, n=1)
    raise RecipeError(f"no such {what} '{name_or_path}'" + (f" (did you mean '{close[0]}'?)" if close else "")
                      + (f"; {what}s: {', '.join(have)}" if have else "")
                      + f" (or a path; looked in ./{folder}/ and {REPO / folder}/)")


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

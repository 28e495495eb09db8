"""One configuration system: a YAML file (TRL style) plus ``key=value`` overrides (torchtune style).

Every training command (``rl refl``, ``rl dpo``, ``rl prompts``, ``train-reward``) takes its ``...Config`` from a
recipe file and accepts trailing ``key=value`` arguments for any field of it::

    vprefer rl refl --recipe refl-sd15 ... learning_rate=1e-5 t_lo=30 eval_prompts='[a cat, a dog]'
    vprefer train-reward --recipe vp-score-clip-lora ... training.learning_rate=5e-4 lora.r=8

A value is read as YAML (``yaml.safe_load``: ``1e-5``, ``true``, ``null``, ``[a, b]``, ``{overall: 1}``) and
typed by the field it sets (a string like ``1e-5``, which YAML 1.1 leaves a string, becomes the float a
``float`` field needs). A dotted key reaches into a section (``lora.r``) or a mapping field
(``generator.steps=8``). An unknown key is one line with the closest field name; a bad value names the key.
The explicit flags (``--max-steps``) are overrides too.

Reward training (decision for issue 29): the reward recipe's ``training:`` section *is* ``VPScoreConfig``,
a ``transformers.TrainingArguments``: its keys are that dataclass's field names (``num_train_epochs``,
``per_device_train_batch_size``, ``gradient_accumulation_steps``, ``lr_scheduler_type``, ``warmup_steps``,
``dataloader_num_workers``, ...) and :func:`build_dataclass` turns it into the trainer's config the same way it
turns an RL recipe into ``ReFLConfig``; defaults live on ``VPScoreConfig`` (TRL's way). The six names the
section had before keep loading, translated with a one-line warning naming the new key (:data:`OLD_TRAINING_KEYS`),
so old recipe files (and the recipe.yaml saved next to a trained model) still work.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import types
import typing
from typing import Any, Mapping, Sequence

import yaml

from vprefer.recipes import RecipeError

OLD_TRAINING_KEYS = {  # the reward recipe's training: keys before issue 29 -> VPScoreConfig's field names
    "epochs": "num_train_epochs", "batch_size": "per_device_train_batch_size",
    "grad_accum": "gradient_accumulation_steps", "lr_scheduler": "lr_scheduler_type",
    "warmup_ratio": "warmup_steps", "num_workers": "dataloader_num_workers",
}

HELP = ("Overrides: KEY=VALUE arguments after the options set any field of the recipe; VALUE is read as YAML "
        "(1e-5, true, null, lists) and a dotted key reaches into a section, e.g. learning_rate=1e-5 max_steps=50.")


class RecipeDeprecation(FutureWarning):
    """An old recipe key that still loads; the message names the new key (the CLI prints it as one line)."""


def parse_overrides(items: Sequence[str] | None) -> dict[str, Any]:
    """``["lr=1e-5", "lora.r=8"]`` -> ``{"lr": "1e-5", "lora.r": 8}`` (values as YAML; typing comes later)."""
    flat: dict[str, Any] = {}
    for item in items or ():
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or not key or not re.fullmatch(r"[A-Za-z_][\w.]*", key):
            raise RecipeError(f"{item!r}: an override is KEY=VALUE (e.g. learning_rate=1e-5 or training.seed=1)")
        try:
            flat[key] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            raise RecipeError(f"{key}={text!r}: not a YAML value (quote it, e.g. {key}='{text}')") from None
    return flat


def closest(name: str, names: Sequence[str]) -> str:
    m = difflib.get_close_matches(name, list(names), n=1, cutoff=0.6)
    return f" (did you mean '{m[0]}'?)" if m else ""


def apply_overrides(data: dict, flat: Mapping[str, Any], defaults: Mapping[str, Any] = {}) -> dict:
    """Set dotted ``flat`` keys in (a copy of) ``data``; a missing section starts from ``defaults[section]``."""
    data = copy.deepcopy(data)
    for key, value in flat.items():
        *path, last = key.split(".")
        node = data
        for i, part in enumerate(path):
            if node.get(part) is None:
                node[part] = copy.deepcopy(defaults.get(part, {})) if i == 0 else {}
            if not isinstance(node[part], dict):
                raise RecipeError(f"{key}: '{'.'.join(path[:i + 1])}' is not a section (it holds {node[part]!r})")
            node = node[part]
        node[last] = value
    return data


def renamed_training_keys(section: dict, source: str) -> dict:
    """The reward recipe's ``training:`` with old key names translated (each one warned about once, by name)."""
    import warnings

    out = dict(section)
    for old, new in OLD_TRAINING_KEYS.items():
        if old in out:
            if new in out:
                raise RecipeError(f"{source}: training.{old} and training.{new} are the same setting; keep training.{new}")
            warnings.warn(f"{source}: training.{old} is now training.{new} (VPScoreConfig's name); the old key "
                          "still loads", RecipeDeprecation, stacklevel=2)
            out[new] = out.pop(old)
    return out


# ---------------------------------------------------------------------------------------------- dataclasses
def _kinds(hints: dict, f: dataclasses.Field) -> set[str]:
    """The top-level types a field accepts (``float | None`` -> {float, None}), from its resolved annotation, or
    from its text when it does not resolve (``list[str]`` counts as list: what is inside is not checked)."""
    t = hints.get(f.name, f.type)
    if isinstance(t, str):
        return set(re.findall(r"\b(float|int|bool|str|list|dict|None)\b", re.sub(r"\[.*\]", "", t)))
    members = typing.get_args(t) if typing.get_origin(t) in (typing.Union, types.UnionType) else (t,)
    names = set()
    for m in members:
        m = typing.get_origin(m) or m
        names.add("None" if m is type(None) else getattr(m, "__name__", ""))
    known = names & {"float", "int", "bool", "str", "list", "dict", "None"}
    return known if known == names or "str" in known else set()  # an enum or a class of its own: left to the field


def _typed(key: str, value: Any, kinds: set[str], where: str) -> Any:
    """A YAML value made the field's type where that is unambiguous; a value that cannot be, named with its key."""
    if value is None or not kinds or "str" in kinds and isinstance(value, str):
        return value
    want = " or ".join(sorted(kinds - {"None"}))
    bad = RecipeError(f"{key}={value!r} (command line): expected {want}" if where == "command line"
                      else f"{where}: {key}={value!r}: expected {want}")
    if kinds <= {"bool", "None"}:
        if not isinstance(value, bool):
            raise bad
        return value
    if isinstance(value, str) and kinds & {"float", "int"}:
        try:
            num = float(value)
        except ValueError:
            raise bad from None
        if "float" not in kinds and not num.is_integer():
            raise bad
        return num if "float" in kinds else int(num)
    if kinds <= {"float", "int", "None"} and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise bad
    if kinds <= {"str", "None"} and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if kinds <= {"list", "None"} and isinstance(value, (str, int, float)):
        return [value]  # annotators=human: a list of one
    if kinds <= {"list", "None"} and not isinstance(value, list):
        raise bad
    if kinds <= {"dict", "None"} and not isinstance(value, dict):
        raise bad
    return value


def build_dataclass(cls, data: Mapping[str, Any], source: str, *, cli: Mapping[str, Any] = {}, prefix: str = "",
                    from_cli: Sequence[str] = ()):
    """``data`` (a recipe's mapping) + ``cli`` (dotted ``key=value`` overrides) -> ``cls(...)``, or one line.

    Unknown keys get the closest field name; values are typed by their field; a ``ValueError``/``TypeError``
    from ``cls`` (its ``__post_init__`` checks) is reported with ``source``. ``prefix`` names the section the
    mapping is (``training.`` for the reward recipe), so messages spell keys as the user wrote them;
    ``from_cli``: keys of ``data`` that came from the command line already (blamed on it, not on the file).
    """
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - an annotation that does not resolve: each field is typed by its text
        hints = {}
    shown = {k.split(".")[0]: k for k in [*from_cli, *cli]}
    unknown = [k for k in {**data, **shown} if k not in fields]
    if unknown:
        keys = [prefix + shown.get(k, k) for k in unknown]
        where = " (given on the command line)" if all(k in shown for k in unknown) else ""
        raise RecipeError(f"{source}: unknown key(s) {keys}{where} for {cls.__name__}"
                          + closest(prefix + unknown[0], [prefix + n for n in fields]))

    def default(name: str):
        f = fields[name]
        return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default

    merged = apply_overrides(dict(data), cli, {k.split(".")[0]: default(k.split(".")[0]) for k in cli if "." in k})
    top_cli = set(shown)
    kw = {}
    for key, value in merged.items():
        where = "command line" if key in top_cli else source
        kw[key] = _typed(prefix + key, value, _kinds(hints, fields[key]), where)
    try:
        return cls(**kw)
    except RecipeError as e:
        raise RecipeError(f"{source}: {e}") from None
    except (TypeError, ValueError) as e:
        raise RecipeError(f"{source}: invalid {cls.__name__}: {e}") from None


# ---------------------------------------------------------------------------------------------- pydantic
def check_recipe_keys(cls, cli: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Dotted override keys checked against a pydantic recipe's fields (with did-you-mean); returns the defaults
    of the sections they reach into, so a section the file leaves out starts from its default, not from {}."""
    from pydantic import BaseModel

    defaults = {}
    for key in cli:
        model, parts = cls, key.split(".")
        for i, part in enumerate(parts):
            if model is None or model.model_config.get("extra") != "forbid":
                break  # a mapping or an open section (the reward recipe's training:) is checked where it is used
            if part not in model.model_fields:
                done = ".".join(parts[:i] + [""])
                raise RecipeError(f"{source}: unknown key(s) {[key]} (given on the command line) for {cls.__name__}"
                                  + closest(done + part, [done + n for n in model.model_fields]))
            f = model.model_fields[part]
            if i == 0 and len(parts) > 1:
                d = f.get_default(call_default_factory=True)
                defaults[part] = d.model_dump() if isinstance(d, BaseModel) else d
            ann = f.annotation
            model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return defaults

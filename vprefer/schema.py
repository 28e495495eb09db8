"""The run directory's tables, as explicit polars schemas (docs/DESIGN.md, "Data contracts").

Every table that crosses the run-directory boundary is checked here, so code
inside the package can trust column names and dtypes instead of re-checking
them. Extra columns are tolerated (a user may carry their own metadata along);
missing or mistyped columns are not, and the error names each one and the file.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from vprefer.errors import VpreferError

ASPECTS: tuple[str, ...] = ("prompt_following", "aesthetics", "fidelity", "harmlessness")
"""The four VisionPrefer aspects, in the order every report uses."""

OVERALL = "overall"
HUMAN = "human"
"""Annotator name under which imported or Label Studio human judgements are stored."""

S = pl.String
F = pl.Float64
I32 = pl.Int32
I64 = pl.Int64

SCHEMAS: dict[str, dict[str, pl.DataType]] = {
    "prompts": {"prompt_id": S, "prompt": S, "source": S, "meta": S},
    "images": {
        "image_id": S,
        "prompt_id": S,
        "uri": S,
        "generator": S,
        "seed": I64,
        "width": I32,
        "height": I32,
    },
    "annotations": {
        "run_id": S,
        "request_id": S,
        "annotator": S,
        "rubric": S,
        "prompt_id": S,
        "image_id": S,
        "shown_position": I32,
        "permutation": I32,
        "aspect": S,
        "score": F,
        "scale_max": I32,
        "rationale": S,
        "rank": I32,
        "status": S,
        "latency_s": F,
        "input_tokens": I64,
        "output_tokens": I64,
        "cost_usd": F,
        "raw": S,
    },
    "rankings": {
        "prompt_id": S,
        "aspect": S,
        "annotator": S,
        "image_ids": pl.List(S),
        "scores": pl.List(F),
        "confidence": F,
    },
    "pairs": {
        "prompt_id": S,
        "win_image_id": S,
        "lose_image_id": S,
        "aspect": S,
        "annotator": S,
        "margin": F,
        "weight": F,
        "tie": pl.Boolean,
    },
    "human": {
        "task_id": I64,
        "annotator": S,
        "prompt_id": S,
        "image_id": S,
        "aspect": S,
        "score": F,
        "rank": I32,
    },
    "scores": {"model": S, "prompt_id": S, "image_id": S, "aspect": S, "score": F},
    # audits: gold images (a run image and a visibly corrupted copy: the copy must lose), never preference data
    "gold": {"image_id": S, "source_image_id": S, "prompt_id": S, "uri": S, "corruption": S},
    # one row per completed Label Studio annotation (task x person): what kind of task, how long it took
    "audit_annotations": {"task_id": I64, "annotator": S, "kind": S, "gold": pl.Boolean, "prompt_id": S,
                          "lead_time_s": F},
    # a rater's answers on gold tasks: 1 when the known order was given, 0 otherwise (a tie is wrong)
    "gold_answers": {"task_id": I64, "annotator": S, "aspect": S, "correct": F},
    "captions": {
        "image_id": S,
        "style": S,
        "caption": S,
        "annotator": S,
        "instruction": S,  # "<style name>@<hash>": which caption instruction text produced it
        "request_id": S,
        "input_tokens": I64,
        "output_tokens": I64,
        "cost_usd": F,
    },
}
"""Column -> dtype for every table. ``meta`` columns hold JSON text."""

KEYS: dict[str, tuple[str, ...]] = {
    "prompts": ("prompt_id",),
    "images": ("image_id", "prompt_id"),
    "annotations": ("request_id", "image_id", "aspect"),
    "rankings": ("prompt_id", "aspect", "annotator", "image_ids"),  # a prompt may have several image sets
    "pairs": ("prompt_id", "win_image_id", "lose_image_id", "aspect", "annotator"),
    "human": ("task_id", "annotator", "image_id", "aspect"),
    "scores": ("model", "image_id", "aspect"),
    "gold": ("image_id",),
    "audit_annotations": ("task_id", "annotator"),
    "gold_answers": ("task_id", "annotator", "aspect"),
    "captions": ("image_id", "style", "annotator"),
}
"""Natural keys: a row with the same key is the same fact (used to deduplicate)."""


class SchemaError(VpreferError, ValueError):
    """A table does not match its contract. The message names the file and the columns."""


def empty(table: str) -> pl.DataFrame:
    return pl.DataFrame(schema=SCHEMAS[table])


def problems(table: str, schema: pl.Schema | dict[str, pl.DataType]) -> list[str]:
    """Human-readable list of what is wrong with ``schema`` for ``table`` (empty if fine)."""
    if table not in SCHEMAS:
        raise KeyError(f"unknown table {table!r}; known: {', '.join(SCHEMAS)}")
    got = dict(schema)
    out = []
    for col, dtype in SCHEMAS[table].items():
        if col not in got:
            out.append(f"missing column {col!r} ({dtype})")
        elif got[col] != dtype and got[col] != pl.Null:
            out.append(f"column {col!r} is {got[col]}, expected {dtype}")
    return out


def validate(table: str, df: pl.DataFrame, source: str | Path = "<memory>") -> pl.DataFrame:
    """Check ``df`` against the contract and return it with columns in contract order.

    All-null columns (dtype Null, e.g. from an empty JSON list) are cast, since
    they carry no type information to disagree with.
    """
    bad = problems(table, df.schema)
    if bad:
        raise SchemaError(f"{source}: table {table!r} does not match its schema: " + "; ".join(bad))
    casts = [
        pl.col(c).cast(t) for c, t in SCHEMAS[table].items() if df.schema[c] == pl.Null
    ]
    if casts:
        df = df.with_columns(casts)
    extra = [c for c in df.columns if c not in SCHEMAS[table]]
    return df.select([*SCHEMAS[table], *extra])


def frame(table: str, rows: list[dict]) -> pl.DataFrame:
    """Build a validated frame from row dicts (missing optional values become null)."""
    schema = SCHEMAS[table]
    if not rows:
        return empty(table)
    return pl.DataFrame(
        [{c: r.get(c) for c in schema} for r in rows], schema=schema, orient="row"
    )

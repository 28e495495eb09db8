"""Folding journalled answers into ``annotations`` without a Python loop over rows.

A run of 1M image sets journals 1M answers, 16M rows (4 images x 4 aspects).
Building a dict per row is minutes; here polars' JSON reader parses the journal
in chunks into request-level frames (scores, rationales and ranks as structs
keyed by position and aspect), and each (position, aspect) becomes a column
selection, so the rows are made in Rust. Memory is bounded by the chunk size,
not the journal.

The rows are those :func:`vprefer.annotate.records.rows_from_record` makes
(tested against it), and the reader never drops an answer silently: a chunk
with a torn or garbled line (a crash mid-write) is re-read without that line,
and an answer the struct schema cannot hold (more images than expected, a
missing aspect) sends its chunk through ``rows_from_record`` instead.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import orjson
import polars as pl

from vprefer import schema
from vprefer.annotate.records import rows_from_record
from vprefer.llm.journal import CHUNK_BYTES, READ_BYTES, chunks


_S, _F, _I = pl.String, pl.Float64, pl.Int64


def record_schema(aspects: list[str], nmax: int) -> dict:
    """The "done" record's fields, for polars' JSON reader (other fields and events are ignored)."""
    pos = [str(p) for p in range(1, nmax + 1)]
    return {
        "event": _S, "request_id": _S, "status": _S, "run_id": _S, "annotator": _S, "rubric": _S,
        "scale_max": _I, "prompt_id": _S, "shown": pl.List(_S), "permutation": _I,
        "scores": pl.Struct({p: pl.Struct({a: _F for a in aspects}) for p in pos}),
        "rationales": pl.Struct({p: pl.Struct({a: _S for a in aspects}) for p in pos}),
        "ranks": pl.Struct({a: pl.Struct({p: _I for p in pos}) for a in aspects}),
        "raw": _S, "input_tokens": _I, "output_tokens": _I, "cost_usd": _F, "latency_s": _F, "error": _S,
    }


def _good_lines(chunk: bytes) -> bytes:
    """The lines that parse (what :func:`vprefer.llm.journal.read` keeps)."""
    keep = []
    for line in chunk.splitlines():
        try:
            orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        keep.append(line)
    return b"\n".join(keep) + b"\n" if keep else b""


def _read(chunk: bytes, sch: dict) -> pl.DataFrame:
    try:
        return pl.read_ndjson(chunk, schema=sch)
    except pl.exceptions.PolarsError:  # a torn or garbled line: drop it, as the line reader does
        clean = _good_lines(chunk)
        return pl.read_ndjson(clean, schema=sch) if clean else pl.DataFrame(schema=sch)


def _fits(df: pl.DataFrame, aspects: list[str], nmax: int) -> bool:
    """Every ok answer's scores and rationales landed in the struct columns (none dropped by the schema)."""
    ok = df.filter(pl.col("status") == "ok")
    if ok.is_empty():
        return True
    n = ok["shown"].list.len()
    if n.max() > nmax:
        return False
    for p in range(1, nmax + 1):
        has = n >= p
        for a in aspects:
            for col in ("scores", "rationales"):
                v = ok[col].struct.field(str(p)).struct.field(a)
                if (v.is_null() & has).any():
                    return False
    return True


def _rows(df: pl.DataFrame, aspects: list[str], nmax: int) -> pl.DataFrame:
    """One row per (shown image, aspect), as ``rows_from_record`` makes them; ordered by position and aspect,
    then request (row order carries no meaning in the table; sorting 16M rows back would cost seconds)."""
    ok = pl.col("status") == "ok"
    raw = pl.when(pl.col("raw").is_not_null() & (pl.col("raw") != "")).then("raw").otherwise("error")
    parts = []
    for p in range(1, nmax + 1):
        at = df.filter(pl.col("shown").list.len() >= p)
        for j, a in enumerate(aspects):
            first = p == 1 and j == 0  # request totals ride on the first row only

            def total(c: str, zero):
                return pl.col(c) if first else pl.lit(zero, dtype=schema.SCHEMAS["annotations"][c]).alias(c)

            parts.append(at.select(
                "run_id", "request_id", "annotator", "rubric",
                "prompt_id", pl.col("shown").list.get(p - 1).alias("image_id"), pl.lit(p).alias("shown_position"),
                "permutation", pl.lit(a).alias("aspect"),
                pl.when(ok).then(pl.col("scores").struct.field(str(p)).struct.field(a)).alias("score"),
                "scale_max",
                pl.when(ok).then(pl.col("rationales").struct.field(str(p)).struct.field(a)).alias("rationale"),
                pl.when(ok).then(pl.col("ranks").struct.field(a).struct.field(str(p))).alias("rank"),
                "status", total("latency_s", 0.0), total("input_tokens", 0), total("output_tokens", 0),
                total("cost_usd", 0.0), pl.when(~ok).then(raw).alias("raw"),
            ))
    return pl.concat(parts).cast(schema.SCHEMAS["annotations"])


def _first_records(pieces: list[bytes], rids: list[str]) -> list[dict]:
    """The first "done" record of each of ``rids`` in these pieces of journal text, parsed line by line."""
    wanted, out = set(rids), []
    for piece in pieces:
        for line in _good_lines(piece).splitlines():
            rec = orjson.loads(line)
            if rec.get("event") == "done" and rec.get("request_id") in wanted:
                wanted.discard(rec["request_id"])
                out.append(rec)
        if not wanted:
            break
    return out


def _groups(path, sch: dict, chunk_bytes: int, read_bytes: int) -> Iterator[tuple[pl.DataFrame, list[bytes]]]:
    """The journal's "done" records, parsed ``read_bytes`` at a time and handed on about ``chunk_bytes`` at a
    time (one part of the table each), with the text they came from (for the rare per-record path)."""
    dfs: list[pl.DataFrame] = []
    raw: list[bytes] = []
    size = 0
    for piece in chunks(path, min(read_bytes, chunk_bytes)):
        if b'"done"' in piece:  # only the text held counts towards a part
            dfs.append(_read(piece, sch).filter(pl.col("event") == "done"))
            raw.append(piece)
            size += len(piece)
        if size >= chunk_bytes and dfs:
            yield pl.concat(dfs), raw
            dfs, raw, size = [], [], 0
    if dfs:
        yield pl.concat(dfs), raw


def unrecorded_rows(path, aspects: list[str], skip: Iterable[str], *, nmax: int = 8,
                    chunk_bytes: int = CHUNK_BYTES, read_bytes: int = READ_BYTES
                    ) -> Iterator[tuple[pl.DataFrame, list[str]]]:
    """``annotations`` rows of the first answer of every request not in ``skip``, a chunk at a time, with the
    request ids each chunk holds (a request answered twice counts once: the first answer was paid for)."""
    sch = record_schema(aspects, nmax)
    seen = pl.Series("request_id", list(skip), dtype=pl.String)
    for df, raw in _groups(path, sch, chunk_bytes, read_bytes):
        df = df.unique("request_id", keep="first", maintain_order=True)
        df = df.filter(~pl.col("request_id").is_in(seen.implode()))
        if df.is_empty():
            continue
        rids = df["request_id"].to_list()
        if _fits(df, aspects, nmax):
            rows = _rows(df, aspects, nmax)
        else:  # the line-by-line path, whose errors (a missing aspect) are the ones the table always gave
            recs = _first_records(raw, rids)
            rows = schema.frame("annotations", [row for rec in recs for row in rows_from_record(rec, aspects)])
        seen = pl.concat([seen, df["request_id"]])
        yield rows, rids

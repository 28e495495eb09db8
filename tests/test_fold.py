"""The columnar fold (vprefer/annotate/fold.py) gives the rows the per-record reference gives, loses nothing.

The reference is ``rows_from_record``, the row-by-row code the table was built with before; the journal holds
every shape an answer can take (ok, invalid with raw text, error without, a missing ranking, several set sizes),
duplicates, ids already folded, and a garbled line, and is read in small chunks so requests cross chunks.
"""

import orjson
import polars as pl
import pytest

from vprefer import schema
from vprefer.annotate.fold import unrecorded_rows
from vprefer.annotate.records import fold, rows_from_record
from vprefer.llm import Ledger
from vprefer.llm.journal import Journal
from vprefer.store import Run

ASPECTS = ["prompt_following", "aesthetics", "fidelity", "harmlessness"]


def answer(rid: str, n: int, *, status: str = "ok", seed: int = 0, ranks: bool = True, **over) -> dict:
    pos = [str(p) for p in range(1, n + 1)]
    ok = status == "ok"
    rec = {
        "event": "done", "request_id": rid, "status": status, "run_id": "r1", "annotator": "judge",
        "rubric": "vp@1", "scale_max": 5, "prompt_id": f"p-{rid}", "shown": [f"{rid}-img{p}" for p in pos],
        "permutation": seed % 3,
        "scores": {p: {a: (seed + int(p) + k) % 5 + 1 for k, a in enumerate(ASPECTS)} for p in pos} if ok else None,
        "rationales": {p: {a: f"why {rid} {p} {a} ü" for a in ASPECTS} for p in pos} if ok else None,
        "ranks": ({a: {p: (int(p) + seed) % n + 1 for p in pos} for a in (ASPECTS if ranks else ASPECTS[:2])}
                  if ok else None),
        "raw": None if ok else "not json {", "input_tokens": 1000 + seed, "output_tokens": 50 + seed,
        "cost_usd": 0.001 * (seed + 1), "latency_s": 0.1 * seed, "attempts": 1, "error": None,
    }
    rec.update(over)
    return rec


def journal(records: list[dict | bytes]) -> bytes:
    return b"".join(r if isinstance(r, bytes) else orjson.dumps(r) + b"\n" for r in records)


def reference(records: list[dict], skip: set[str]) -> pl.DataFrame:
    first, seen = [], set(skip)
    for r in records:
        if r.get("event") == "done" and r["request_id"] not in seen:
            seen.add(r["request_id"])
            first.append(r)
    return schema.frame("annotations", [row for rec in first for row in rows_from_record(rec, ASPECTS)])


def shapes() -> list[dict]:
    recs = []
    for i in range(60):
        recs.append({"event": "sent", "request_id": f"q{i}", "at": 1.0})
        kind = i % 6
        if kind == 0:
            recs.append(answer(f"q{i}", 4, seed=i))
        elif kind == 1:
            recs.append(answer(f"q{i}", 2, seed=i, ranks=False))
        elif kind == 2:
            recs.append(answer(f"q{i}", 3, status="invalid", seed=i))
        elif kind == 3:
            recs.append(answer(f"q{i}", 4, status="error", seed=i, raw="", error="HTTP 500 after 3 attempts"))
        elif kind == 4:
            recs.append(answer(f"q{i}", 4, seed=i))
            recs.append(answer(f"q{i}", 4, seed=i + 1))  # answered twice: the first was paid for
        else:
            recs.append(answer(f"q{i}", 1, seed=i))
    return recs


@pytest.mark.parametrize("chunk,read", [(512, 512), (4096, 4096), (1 << 20, 1 << 20), (4096, 512), (1 << 20, 700)])
def test_columnar_rows_equal_the_reference(tmp_path, chunk, read):
    # read < chunk: pieces parsed one by one, then grouped into one part (a request answered twice across two
    # pieces of a group, or across groups, still counts once)
    recs = shapes()
    path = tmp_path / "j.jsonl"
    path.write_bytes(journal(recs))
    skip = {"q0", "q7"}
    got = pl.concat([rows for rows, _ in unrecorded_rows(path, ASPECTS, skip, nmax=4, chunk_bytes=chunk,
                                                         read_bytes=read)])
    want = reference(recs, skip)
    assert got["request_id"].n_unique() == 58 and not got["request_id"].is_in(list(skip)).any()
    key = ["request_id", "shown_position", "aspect"]
    assert got.sort(key).equals(want.sort(key))  # same values and dtypes (row order carries no meaning)


@pytest.mark.parametrize("read", [1 << 24, 600])
def test_a_garbled_line_and_an_answer_wider_than_expected_lose_nothing(tmp_path, read):
    """A line torn by a crash is skipped (as the line reader skips it); an answer with more images than
    ``nmax`` cannot be held by the struct schema, so its chunk takes the per-record path — also when the
    chunk was read in pieces and the wide request was answered again in a later piece (the first counts)."""
    recs = [answer("a", 4, seed=1), answer("wide", 6, seed=2), answer("b", 3, seed=3)]
    again = answer("wide", 6, seed=9)
    path = tmp_path / "j.jsonl"
    path.write_bytes(journal([recs[0], b'{"event":"done","request_id":"x","sco\n', recs[1], recs[2], again]))
    got = pl.concat([rows for rows, _ in unrecorded_rows(path, ASPECTS, set(), nmax=4, read_bytes=read)])
    key = ["request_id", "shown_position", "aspect"]
    assert got.sort(key).equals(reference(recs, set()).sort(key))
    assert got.filter(pl.col("request_id") == "wide").height == 6 * 4


def test_fold_streams_into_the_table_once_and_a_second_fold_adds_nothing(tmp_path):
    run = Run(tmp_path / "run", create=True)
    recs = shapes()
    with Journal(run, "judge") as j:
        j.write_many(recs)
    led = Ledger(run, "judge")
    assert fold(run, led, ASPECTS) == 60
    table = run.read("annotations")
    assert table.sort("request_id", "shown_position", "aspect").equals(
        reference(recs, set()).sort("request_id", "shown_position", "aspect"))
    assert table["cost_usd"].sum() == pytest.approx(led.spent_usd)  # the paid answers, each once
    assert fold(run, led, ASPECTS) == 0
    assert fold(run, Ledger(run, "judge", recorded=table["request_id"].unique().to_list()), ASPECTS) == 0


def test_an_answer_missing_an_aspect_fails_as_it_always_did(tmp_path):
    bad = answer("a", 2)
    del bad["scores"]["2"]["fidelity"]
    path = tmp_path / "j.jsonl"
    path.write_bytes(journal([bad]))
    with pytest.raises(KeyError):
        list(unrecorded_rows(path, ASPECTS, set(), nmax=4))


def test_a_read_size_that_cannot_bound_memory_is_refused(tmp_path):
    # 0 would read nothing (a fold adding nothing, silently); a negative size reads the whole file at once
    from vprefer.llm.journal import chunks

    path = tmp_path / "j.jsonl"
    path.write_bytes(journal([answer("a", 2)]))
    for size in (0, -1):
        with pytest.raises(ValueError, match="positive"):
            list(chunks(path, size))
    assert len(list(chunks(path, 10))) == 1  # one line longer than a chunk: read on to its end

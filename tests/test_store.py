import json
import os

import polars as pl
import pytest

from vprefer import schema, store
from vprefer.store import Run

ROWS = {
    "prompts": [{"prompt_id": "p1", "prompt": "a red cube", "source": "t", "meta": json.dumps({"k": 1})}],
    "images": [{"image_id": "i1", "prompt_id": "p1", "uri": "images/i1.png", "generator": "g", "seed": 3,
                "width": 8, "height": 9}],
    "annotations": [{"run_id": "r", "request_id": "q", "annotator": "a", "rubric": "h", "prompt_id": "p1",
                     "image_id": "i1", "shown_position": 1, "permutation": 0, "aspect": "aesthetics",
                     "score": 4.0, "scale_max": 5, "rationale": "nice", "rank": 1, "status": "ok",
                     "latency_s": 0.2, "input_tokens": 10, "output_tokens": 5, "cost_usd": 0.001, "raw": None}],
    "rankings": [{"prompt_id": "p1", "aspect": "overall", "annotator": "human", "image_ids": ["i1", "i2"],
                  "scores": [-1.0, -1.0], "confidence": 1.0}],
    "pairs": [{"prompt_id": "p1", "win_image_id": "i1", "lose_image_id": "i2", "aspect": "overall",
               "annotator": "human", "margin": 0.0, "weight": 1.0, "tie": True}],
    "human": [{"task_id": 7, "annotator": "abc", "prompt_id": "p1", "image_id": "i1", "aspect": "fidelity",
               "score": 3.0, "rank": None}],
    "scores": [{"model": "m", "prompt_id": "p1", "image_id": "i1", "aspect": "overall", "score": 0.5}],
    "gold": [{"image_id": "g1", "source_image_id": "i1", "prompt_id": "p1", "uri": "images/gold/g1.png",
              "corruption": "blur+noise"}],
    "audit_annotations": [{"task_id": 7, "annotator": "abc", "kind": "sets", "gold": False, "prompt_id": "p1",
                           "lead_time_s": 12.5}],
    "gold_answers": [{"task_id": 8, "annotator": "abc", "aspect": "fidelity", "correct": 1.0}],
    "captions": [{"image_id": "i1", "style": "short", "caption": "a red cube", "annotator": "a:m",
                  "instruction": "short@abc123", "request_id": "q", "input_tokens": 10, "output_tokens": 5,
                  "cost_usd": 0.001}],
}


def test_every_table_round_trips(tmp_path):
    assert set(ROWS) == set(schema.SCHEMAS)
    run = Run(tmp_path / "run", create=True)
    for name, rows in ROWS.items():
        df = schema.frame(name, rows)
        run.write(name, df)
        assert run.read(name).equals(df), name
        run.append(name, df)
        assert run.read(name).height == 2
        run.compact(name)  # same natural key -> deduplicated
        assert run.read(name).equals(df), name
    assert run.counts() == {n: 1 for n in ROWS}


def test_append_parts_then_compact_keeps_every_distinct_row(tmp_path):
    run = Run(tmp_path, create=True)
    for k in range(5):
        run.append("prompts", schema.frame("prompts", [{"prompt_id": f"p{k}", "prompt": str(k), "source": "s"}]))
    assert run.read("prompts").height == 5
    run.compact("prompts")
    files = sorted(p.name for p in run.table_dir("prompts").iterdir())
    assert files == ["base-0000000004.parquet"]
    assert sorted(run.read("prompts")["prompt_id"]) == [f"p{k}" for k in range(5)]


def test_wrong_schema_names_file_and_columns(tmp_path):
    run = Run(tmp_path, create=True)
    d = run.table_dir("images")
    d.mkdir(parents=True)
    pl.DataFrame({"image_id": ["x"], "prompt_id": ["p"], "uri": ["u"], "seed": ["not-an-int"]}).write_parquet(
        d / "base-0000000000.parquet")
    with pytest.raises(schema.SchemaError) as e:
        run.read("images")
    msg = str(e.value)
    assert "base-0000000000.parquet" in msg
    assert "missing column 'generator'" in msg and "missing column 'width'" in msg
    assert "column 'seed' is String, expected Int64" in msg
    with pytest.raises(schema.SchemaError, match="missing column 'prompt'"):
        run.write("prompts", pl.DataFrame({"prompt_id": ["p"]}))


def test_crash_between_temp_write_and_rename_keeps_previous_table(tmp_path, monkeypatch):
    run = Run(tmp_path, create=True)
    old = schema.frame("prompts", [{"prompt_id": "p1", "prompt": "old", "source": "s"}])
    run.write("prompts", old)

    def crash(*a, **k):
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(store.os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        run.write("prompts", schema.frame("prompts", [{"prompt_id": "p2", "prompt": "new", "source": "s"}]))
    monkeypatch.undo()
    # previous table intact; the leftover temp file (if any) is never read
    assert Run(tmp_path).read("prompts").equals(old)


def test_streamed_compaction_keeps_every_row_in_order(tmp_path):
    """``dedupe=False`` (the fold's compaction) streams parts into the base: same rows, same order, duplicates
    kept, and the base then takes further parts."""
    run = Run(tmp_path, create=True)
    for k in range(4):
        run.append("prompts", schema.frame("prompts", [{"prompt_id": f"p{k % 3}", "prompt": str(k), "source": "s"}]))
    before = run.read("prompts")
    run.compact("prompts", dedupe=False)
    assert sorted(p.name for p in run.table_dir("prompts").iterdir()) == ["base-0000000003.parquet"]
    assert run.read("prompts").equals(before) and before.height == 4
    run.append("prompts", schema.frame("prompts", [{"prompt_id": "p9", "prompt": "9", "source": "s"}]))
    assert run.read("prompts")["prompt"].to_list() == ["0", "1", "2", "3", "9"]


def test_crash_mid_compaction_never_duplicates(tmp_path, monkeypatch):
    run = Run(tmp_path, create=True)
    for k in range(3):
        run.append("prompts", schema.frame("prompts", [{"prompt_id": f"p{k}", "prompt": "x", "source": "s"}]))
    # compaction wrote its base but "died" before deleting the folded parts
    monkeypatch.setattr(Run, "_cleanup", lambda self, name: None)
    run.compact("prompts")
    monkeypatch.undo()
    assert len(list(run.table_dir("prompts").glob("part-*"))) == 3
    assert run.read("prompts").height == 3


def test_manifest_records_provenance_without_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-SECRET-0123456789abcdef")
    monkeypatch.setattr("sys.argv", ["vprefer", "annotate", "--key", "sk-test-SECRET-0123456789abcdef"])
    run = Run(tmp_path, create=True)
    with run.command("demo", {"api_key": os.environ["OPENAI_API_KEY"], "lr": 1e-4}) as entry:
        entry["cost_usd"] = 0.5
        run.write("prompts", schema.frame("prompts", ROWS["prompts"]))
    text = run.manifest_path.read_text()
    assert "SECRET" not in text
    m = json.loads(text)
    cmd = m["commands"][-1]
    assert cmd["status"] == "ok" and cmd["recipe"]["lr"] == 1e-4 and cmd["cost_usd"] == 0.5
    assert "polars" in cmd["versions"] and m["counts"] == {"prompts": 1}


def test_not_a_run_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a vprefer run directory"):
        Run(tmp_path / "nope")

"""The ledger answers done / in flight / spent from one read of the journal, and stays right as lines land."""

import json

import pytest

from vprefer.llm import Journal, Ledger, read_journal
from vprefer.store import Run


def _journal(run, lines: list, torn: bytes = b""):
    path = Journal.path_for(run, "judge")
    path.parent.mkdir(parents=True, exist_ok=True)  # path_for only names the file (a dry run makes no folder)
    path.write_bytes(b"".join(json.dumps(x).encode() + b"\n" for x in lines) + torn)
    return path


def test_answers_from_one_read_first_done_wins_torn_line_ignored(tmp_path):
    run = Run(tmp_path / "run", create=True)
    _journal(run, [{"event": "sent", "request_id": "a"}, {"event": "done", "request_id": "a", "cost_usd": 1.0},
                   {"event": "sent", "request_id": "b"},  # in flight when the process died
                   {"event": "sent", "request_id": "c"}, {"event": "transient", "request_id": "c"},  # timed out?
                   {"event": "sent", "request_id": "f"}, {"event": "transient", "request_id": "f", "in_flight": False},
                   {"event": "sent", "request_id": "g"}, {"event": "error", "request_id": "g", "in_flight": False},
                   {"event": "sent", "request_id": "g"},  # asked again after the refusal, then the process died
                   {"event": "done", "request_id": "a", "cost_usd": 5.0},  # collected twice: not paid twice
                   {"event": "done", "request_id": "d", "cost_usd": 0.5}],
             torn=b'{"event": "done", "request_id": "e", "co')
    led = Ledger(run, "judge", recorded={"d", "z"}, recorded_usd=2.5)  # d and z are in the table already
    assert led.done == {"a", "d", "z"}
    assert led.in_flight() == {"b", "c", "g"}  # f was refused by the server: nothing runs there
    assert led.spent_usd == pytest.approx(2.5 + 1.0)
    assert [r["request_id"] for r in led.unrecorded()] == ["a"]
    led.mark_recorded(led.unrecorded())  # folded into the table: the total does not move
    assert led.unrecorded() == [] and led.spent_usd == pytest.approx(3.5)


def test_writes_are_durable_and_counted_without_rereading(tmp_path):
    run = Run(tmp_path / "run", create=True)
    led = Ledger(run, "judge")
    assert not led.path.exists()  # reading (a dry run) creates nothing
    with led:
        led.write({"event": "sent", "request_id": "x", "attempt": 1})
        assert led.in_flight() == {"x"}
        led.write({"event": "transient", "request_id": "x", "in_flight": False})
        assert led.in_flight() == set()
        led.write({"event": "sent", "request_id": "x", "attempt": 2})
        assert led.in_flight() == {"x"}
        led.write({"event": "done", "request_id": "x", "cost_usd": 0.25, "note": "key sk-abcdef0123456789abcd"})
    assert led.done == {"x"} and led.in_flight() == set() and led.spent_usd == pytest.approx(0.25)
    again = Ledger(run, "judge")  # a new process sees the same
    assert again.done == led.done and again.spent_usd == led.spent_usd
    assert [r["event"] for r in read_journal(led.path)] == ["sent", "transient", "sent", "done"]
    assert b"sk-abcdef" not in led.path.read_bytes()  # the journal's redaction holds through the ledger


def test_secrets_never_reach_the_journal_whatever_their_shape(tmp_path, monkeypatch):
    """Lines are searched as bytes for every secret (raw and JSON-escaped) and key shape; only lines that hold
    one are redacted record by record. A secret set after the journal opened is still masked."""
    run = Run(tmp_path / "run", create=True)
    monkeypatch.setenv("JUDGE_API_KEY", "plain-secret-value")
    with Journal(run, "x") as j:
        monkeypatch.setenv("OTHER_TOKEN", 'quote"and\\slash')
        for rec in [{"event": "done", "request_id": "a", "raw": "echo plain-secret-value back", "n": 123456},
                    {"event": "done", "request_id": "b", "error": 'bad key quote"and\\slash'},
                    {"event": "done", "request_id": "c", "raw": "Authorization: Bearer\nabcdefghijk123"},
                    {"event": "done", "request_id": "d", "raw": "nothing to hide", "cost_usd": 0.5}]:
            j.write_many([rec])  # one at a time: each line must be caught on its own
    text = j.path.read_bytes()
    assert b"plain-secret-value" not in text and b"quote" not in text and b"abcdefghijk123" not in text
    lines = list(read_journal(j.path))
    assert [r["request_id"] for r in lines] == ["a", "b", "c", "d"]
    assert lines[0]["raw"] == "echo *** back" and lines[0]["n"] == 123456
    assert lines[3] == {"event": "done", "request_id": "d", "raw": "nothing to hide", "cost_usd": 0.5}


def test_a_line_torn_by_a_crash_does_not_swallow_the_next_process_first_answer(tmp_path):
    """kill -9 mid-write leaves a line without its newline; the next process's first line used to be appended
    to it, the two read as one garbled line, and that answer (paid) was lost."""
    run = Run(tmp_path / "run", create=True)
    with Ledger(run, "x") as led:
        led.write({"event": "done", "request_id": "a", "cost_usd": 1.0})
    with open(led.path, "ab") as f:
        f.write(b'{"event":"done","requ')
    with Ledger(run, "x") as led:
        led.write({"event": "done", "request_id": "b", "cost_usd": 2.0})
    again = Ledger(run, "x")
    assert again.done == {"a", "b"} and again.spent_usd == pytest.approx(3.0)

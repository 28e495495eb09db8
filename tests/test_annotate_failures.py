"""Annotation failures that used to hide themselves: a refused run left its requests "in flight" (the corrected
rerun waited timeout_s for answers that never come), and an unreachable server exited 0 reporting errors for
requests that were in fact still to send."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from vprefer.annotate import annotate
from vprefer.annotate.records import ledger_for
from vprefer.cli import app
from vprefer.llm import FatalAPIError
from vprefer.llm.client import UnreachableError
from vprefer.store import Run
from vprefer.testing.helpers import free_port, local_preset, server_stats


def test_a_refused_request_is_not_left_in_flight(judge, synth_run, monkeypatch):
    """401 (a wrong key; a 404 from a wrong path is the same branch): the journal says the request ended, so
    the corrected rerun sends at once instead of looking up stored answers for timeout_s."""
    judge.state.faults.api_key = "right-key-123456"
    monkeypatch.setenv("VPREFER_JUDGE_KEY", "wrong-key-abcdef")
    p = local_preset(judge, store_completions=True, timeout_s=30)
    with pytest.raises(FatalAPIError, match="401"):
        annotate(synth_run, p)
    assert ledger_for(Run(synth_run), p.slug, p.annotator_id).in_flight() == set()
    monkeypatch.setenv("VPREFER_JUDGE_KEY", "right-key-123456")
    from vprefer.llm.client import Client

    looked_up = []
    real = Client.recover
    monkeypatch.setattr(Client, "recover", lambda self, rid, at=None: looked_up.append(rid) or real(self, rid, at))
    res = annotate(synth_run, p)
    assert res.ok == 12 and looked_up == []  # nothing waited for
    assert sorted(server_stats(judge)["answered"].values()) == [1] * 12


def test_an_unreachable_server_fails_the_run_with_one_line_and_true_counts(judge, synth_run):
    url = f"http://127.0.0.1:{free_port()}/v1"
    p = local_preset(judge, base_url=url, max_retries=2, backoff_base_s=0.01, backoff_max_s=0.02)
    with pytest.raises(UnreachableError) as e:
        annotate(synth_run, p)
    msg = str(e.value)
    assert url in msg and "0 answered" in msg and "12 still to send" in msg, msg
    led = ledger_for(Run(synth_run), p.slug, p.annotator_id)
    assert led.in_flight() == set() and led.done == set()  # never delivered: a rerun sends all, waits for none
    assert not Run(synth_run).has("annotations")
    entry = Run(synth_run).manifest()["commands"][-1]
    assert entry["status"].startswith("failed") and entry["pending"] == 12 and entry["error"] == 0
    # the corrected rerun sends everything
    assert annotate(synth_run, local_preset(judge)).ok == 12


def test_the_cli_exits_non_zero_naming_the_redacted_url(synth_run, tmp_path):
    port = free_port()
    preset = tmp_path / "p.yaml"
    preset.write_text(_local_judge().read_text().replace("max_retries: 6", "max_retries: 1"))
    r = CliRunner().invoke(app, ["annotate", str(synth_run), "--annotator", str(preset),
                                 "--base-url", f"http://user:TOPSECRET@127.0.0.1:{port}/v1?api-key=TOPSECRET"])
    assert r.exit_code == 1, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.output
    assert f"127.0.0.1:{port}/v1" in lines[0] and "cannot reach" in lines[0]
    assert "TOPSECRET" not in r.output


def _local_judge():
    from vprefer.recipes import find_asset

    return Path(find_asset("local-judge", "annotators", what="annotator preset"))


def test_a_token_in_the_base_url_reaches_no_file_of_the_run(judge, synth_run, capsys, monkeypatch):
    """``user:TOKEN@`` and ``?api-key=TOKEN`` in --base-url: every file of the run (manifest argv and resolved
    base_url, journal, tables, state) and everything printed is grepped for the token."""
    host = judge.base_url.split("//")[1]

    def cli(url: str, *more: str):
        args = ["annotate", str(synth_run), "--annotator", "local-judge", "--base-url", url, *more]
        monkeypatch.setattr("sys.argv", ["vprefer", *args])  # what the manifest records
        return CliRunner().invoke(app, args)

    r = cli(f"http://someone:TOPSECRET42@{host}", "--limit", "2")  # user info: answered
    assert r.exit_code == 0, r.output
    m = Run(synth_run).manifest()["commands"][-1]
    assert "***@" in m["recipe"]["annotator"]["base_url"] and any("***@" in a for a in m["argv"])
    r2 = cli(f"http://someone:TOPSECRET42@{host}?api-key=TOPSECRET42&sig=TOPSECRET42")  # a query: refused (404)
    r3 = cli(f"http://u:TOPSECRET42@127.0.0.1:{free_port()}/v1?token=TOPSECRET42")  # unreachable
    assert (r2.exit_code, r3.exit_code) == (1, 1)
    assert "api-key=***" in Run(synth_run).manifest()["commands"][-2]["argv"][-1]
    files = [f for f in synth_run.rglob("*") if f.is_file()]
    assert len(files) > 5
    for f in files:
        assert b"TOPSECRET42" not in f.read_bytes(), f
    assert "TOPSECRET42" not in r.output + r2.output + r3.output + capsys.readouterr().err

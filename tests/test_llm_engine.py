"""One engine for every paid LLM job: the three defects the four copies had, and old runs resuming unchanged.

Each test here failed on the code before ``vprefer.llm.run_job`` (wrong versions tried by hand: the caption
batch state file named by preset only; the caption estimate reading ``ledger.answers()`` per item; upsampling
without ``sent`` records)."""

import json
import time

import polars as pl
import pytest

from vprefer.annotate import annotate
from vprefer.annotate.requests import order_design
from vprefer.caption import caption
from vprefer.llm import read_journal
from vprefer.prompts import sample_prompts, upsample
from vprefer.store import Run
from vprefer.testing.helpers import local_preset, server_stats


def test_a_caption_batch_does_not_touch_the_annotation_order_design_or_its_batches(judge, synth_run):
    """A caption batch with the judge's preset used to write ``state/batches-<preset>.json``, which annotation
    reads as "this annotator asked here before designs were pinned": its next plan switched to random orders,
    and ``vprefer batches`` listed caption chunks as annotation batches."""
    from vprefer.annotate import batch_status

    p = local_preset(judge, mode="batch")
    assert caption(synth_run, p, style="short", mode="batch", poll_s=0.05, limit=3).ok == 3
    assert order_design(Run(synth_run), p) == "balanced"
    assert batch_status(synth_run, p) == []  # the caption batch is not an annotation batch
    assert (synth_run / "state" / f"batches-caption-{p.slug}-short.json").exists()


def _count_journal_reads(monkeypatch) -> list:
    import vprefer.llm.ledger as ledger_mod

    calls, real = [], ledger_mod.read

    def counting(path):
        calls.append(path)
        return real(path)

    monkeypatch.setattr(ledger_mod, "read", counting)
    return calls


@pytest.mark.parametrize("job", ["caption", "upsample"])
def test_estimates_do_not_reread_the_journal_for_every_item(judge, synth_run, monkeypatch, job):
    """The budget rule estimates every request before sending it; captions and upsampling read the whole
    journal for that (151 ms a call on a 20k-line journal: ~50 CPU-minutes for 20k items). The ledger keeps
    what the estimate needs as lines land: a run reads its journal a fixed number of times (the folds)."""
    p = local_preset(judge, concurrency=2)
    calls = _count_journal_reads(monkeypatch)
    if job == "caption":
        r = caption(synth_run, p, style="short", max_cost=1.0)
    else:
        r = upsample(synth_run, p, max_cost=1.0)
    assert r.ok >= 6
    assert len(calls) <= 3, f"{len(calls)} journal reads for {r.ok} requests"


def test_a_kill_during_upsampling_pays_nothing_twice(judge, tmp_path):
    """Upsampling journalled no ``sent`` line, so a request answered (and billed) just before a kill was sent
    and paid again by the rerun. Now it is fetched back from the server's stored completions."""
    (tmp_path / "p.txt").write_text("\n".join(f"a blue sphere number {i}" for i in range(5)))
    sample_prompts(tmp_path / "p.txt", tmp_path / "run")
    p = local_preset(judge, store_completions=True)
    assert upsample(tmp_path / "run", p).ok == 5
    journal = tmp_path / "run" / "journal" / f"upsample-{p.slug}-descriptive.jsonl"
    recs = list(read_journal(journal))
    sent = [r for r in recs if r["event"] == "sent"]
    assert len(sent) == 5 and all(r["at"] > 0 for r in sent)
    # a kill after the answers came back but before they were journalled or folded: only "sent" survives
    journal.write_text("".join(json.dumps({**r, "at": time.time() - 3600}) + "\n" for r in sent))
    run = Run(tmp_path / "run")
    run.write("prompts", run.read("prompts").filter(pl.col("source") != "upsample:descriptive"))
    r = upsample(tmp_path / "run", p)
    assert r.ok == 5 and r.recovered == 5
    assert sorted(server_stats(judge)["answered"].values()) == [1] * 5  # nothing billed twice
    assert run.read("prompts").filter(pl.col("source") == "upsample:descriptive").height == 5


def test_upsampling_and_captions_get_every_mode(judge, synth_run):
    """What existed for annotation only: offline chunks for ``vllm run-batch`` and the batch budget rule."""
    p = local_preset(judge)
    r = upsample(synth_run, p, mode="offline")
    assert r.chunk_files and r.ok == 0 and server_stats(judge)["requests"] == 0
    lines = [json.loads(x) for f in r.chunk_files for x in open(f)]
    assert len(lines) == 6 and {x["url"] for x in lines} == {"/v1/chat/completions"}
    one = caption(synth_run, p, style="short", limit=1).cost_usd
    b = caption(synth_run, local_preset(judge, mode="batch"), style="short", mode="batch", poll_s=0.05,
                max_cost=one * 3.5)
    assert b.stopped_for_budget and b.spent_total_usd <= one * 3.5
    assert Run(synth_run).read("captions").height < Run(synth_run).read("images")["image_id"].n_unique()


def test_a_run_journalled_by_the_old_runners_resumes_unchanged(judge, synth_run):
    """Journal formats and request ids are the same: answers journalled by the code before the engine (whose
    records had no ``attempt`` on ``sent``) are folded, not asked again."""
    p = local_preset(judge, permutations=1)
    first = annotate(synth_run, p, limit=3)
    assert first.ok == 3
    path = synth_run / "journal" / f"annotate-{p.slug}.jsonl"
    old = [{k: v for k, v in r.items() if k != "attempt"} for r in read_journal(path)]
    path.write_text("".join(json.dumps(r) + "\n" for r in old))
    run = Run(synth_run)
    run.write("annotations", run.read("annotations").head(0))  # as if the old process died before folding
    again = annotate(synth_run, p)
    assert again.already_done == 3 and again.ok == again.todo
    assert max(server_stats(judge)["answered"].values()) == 1

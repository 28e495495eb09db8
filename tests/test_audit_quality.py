"""Audit pieces that need no server: safe server settings, pairwise answers, rater quality, the ceiling, gold."""

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from vprefer import schema
from vprefer.audit.gold import corrupt, gold_correct
from vprefer.audit.human import human_pairs
from vprefer.audit.raters import ceiling, rater_signs, rater_table
from vprefer.audit.server import ServerError, check_exposure
from vprefer.audit.tasks import parse_pairwise, pairwise_pairs, shown_order


# ---------------------------------------------------------------------------- safe server
def test_document_root_is_never_the_whole_machine_by_default(tmp_path):
    import inspect

    from vprefer.audit.server import start

    assert inspect.signature(start).parameters["document_root"].default is None
    with pytest.raises(ServerError, match="--run RUN"):
        check_exposure(None)
    with pytest.raises(ServerError, match="--serve-whole-filesystem"):
        check_exposure("/")
    with pytest.raises(ServerError, match="--serve-whole-filesystem"):
        check_exposure(tmp_path / ".." / ".." / ".." / ".." / ".." / "..")  # resolves to /
    root, warnings = check_exposure("/", serve_whole_filesystem=True)
    assert root == Path("/") and any("every file" in w for w in warnings)
    root, warnings = check_exposure(tmp_path)
    assert root == tmp_path.resolve() and warnings == []


def test_a_host_other_than_loopback_warns(tmp_path):
    _, warnings = check_exposure(tmp_path, "0.0.0.0")
    assert len(warnings) == 1 and "0.0.0.0" in warnings[0] and "other machines" in warnings[0]
    assert check_exposure(tmp_path, "127.0.0.1")[1] == []


def test_cli_server_start_refuses_root_in_one_line(monkeypatch):
    from typer.testing import CliRunner

    from vprefer.cli import app

    for k in ("VPREFER_LS_USERNAME", "VPREFER_LS_PASSWORD", "VPREFER_LS_TOKEN"):
        monkeypatch.setenv(k, "x")
    r = CliRunner().invoke(app, ["audit", "server", "start", "--document-root", "/", "--port", "9"])
    assert r.exit_code == 1 and "refusing to serve /" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["audit", "server", "start", "--port", "9"])
    assert r.exit_code == 1 and "--run RUN" in r.output


# ---------------------------------------------------------------------------- pairwise answers
def test_pairwise_choices_become_ranks_and_majority_pairs():
    res = [{"from_name": "aesthetics", "type": "choices", "value": {"choices": ["Right"]}},
           {"from_name": "fidelity", "type": "choices", "value": {"choices": ["Tie"]}},
           {"from_name": "comment", "type": "textarea", "value": {"text": ["x"]}}]
    assert parse_pairwise(res, ["L", "R"]) == [("L", "aesthetics", 2), ("R", "aesthetics", 1),
                                               ("L", "fidelity", 1), ("R", "fidelity", 1)]
    # three people on one pair: two say y is better, one says x -> y wins, margin 1/3; fidelity all tie
    rows = []
    for tid, who, (rx, ry) in ((1, "a", (2, 1)), (1, "b", (2, 1)), (1, "c", (1, 2))):
        rows += [{"task_id": tid, "annotator": who, "prompt_id": "p", "image_id": "x", "aspect": "aesthetics",
                  "rank": rx}, {"task_id": tid, "annotator": who, "prompt_id": "p", "image_id": "y",
                                "aspect": "aesthetics", "rank": ry}]
        rows += [{"task_id": tid, "annotator": who, "prompt_id": "p", "image_id": i, "aspect": "fidelity", "rank": 1}
                 for i in "xy"]
    pairs = {p["aspect"]: p for p in pairwise_pairs(schema.frame("human", rows))}
    assert (pairs["aesthetics"]["win_image_id"], pairs["aesthetics"]["lose_image_id"]) == ("y", "x")
    assert pairs["aesthetics"]["margin"] == pytest.approx(1 / 3) and not pairs["aesthetics"]["tie"]
    assert pairs["fidelity"]["tie"]
    # the direct pairwise answer replaces the pair derived from a set task; excluded raters count for nothing
    sets = [{"task_id": 9, "annotator": "a", "prompt_id": "p", "image_id": i, "aspect": "aesthetics", "score": s}
            for i, s in (("x", 5.0), ("y", 1.0), ("z", 3.0))]
    _, hp = human_pairs(schema.frame("human", rows + sets), pairwise_tasks=[1])
    xy = hp.filter(pl.col("aspect") == "aesthetics", pl.col("win_image_id").is_in(["x", "y"]),
                   pl.col("lose_image_id").is_in(["x", "y"]))
    assert xy.height == 1 and xy["win_image_id"][0] == "y"
    _, hp = human_pairs(schema.frame("human", rows + sets), pairwise_tasks=[1], exclude=["a", "b"])
    xy = hp.filter(pl.col("aspect") == "aesthetics", pl.col("win_image_id").is_in(["x", "y"]),
                   pl.col("lose_image_id").is_in(["x", "y"]))
    assert xy["win_image_id"].to_list() == ["x"]  # only c is left, who preferred x
    assert hp.filter(pl.col("lose_image_id") == "z").height == 0  # a's set ratings are gone too


def test_shown_order_is_balanced_and_stable():
    flips = [shown_order(f"a{i}", f"b{i}")[0] == f"b{i}" for i in range(400)]
    assert 150 < sum(flips) < 250 and shown_order("a1", "b1") == shown_order("a1", "b1")


# ---------------------------------------------------------------------------- raters and the ceiling
def _human(answers):
    """answers: {(task, rater): {image: score}} on one aspect of prompt p."""
    return schema.frame("human", [{"task_id": t, "annotator": w, "prompt_id": "p", "image_id": i,
                                   "aspect": "aesthetics", "score": float(s)}
                                  for (t, w), v in answers.items() for i, s in v.items()])


def test_rater_agreement_with_others_and_judge_by_hand():
    good = {"x": 5, "y": 3, "z": 1}
    answers = {(1, "a"): good, (1, "b"): good, (1, "c"): {"x": 1, "y": 3, "z": 5}}  # c reverses every pair
    signs = rater_signs(_human(answers))
    assert signs.height == 9 and set(signs.filter(pl.col("annotator") == "c")["s"]) == {-1}
    judge = pl.DataFrame({"prompt_id": "p", "image_id": ["x", "y", "z"], "aspect": "aesthetics",
                          "score": [4.0, 3.0, 2.0]})
    meta = schema.frame("audit_annotations", [{"task_id": 1, "annotator": w, "kind": "sets", "gold": False,
                                               "prompt_id": "p", "lead_time_s": s} for w, s in
                                              (("a", 10.0), ("b", 20.0), ("c", 2.0))])
    gold = schema.frame("gold_answers", [{"task_id": 2, "annotator": w, "aspect": "fidelity", "correct": c}
                                         for w, c in (("a", 1.0), ("b", 1.0), ("c", 0.0))])
    t = {r["annotator"]: r for r in rater_table(signs, judge, meta, gold).to_dicts()}
    # a: the others (b agrees, c reverses) are split -> no majority -> a has no majority pairs; b likewise
    assert t["a"]["agree_majority"] is None and t["c"]["agree_majority"] == 0.0
    assert t["a"]["agree_judge"] == 1.0 and t["c"]["agree_judge"] == 0.0
    assert t["c"]["flagged"] and not t["a"]["flagged"] and "gold accuracy 0.00" in t["c"]["flag"]
    assert t["b"]["median_s_per_task"] == 20.0 and t["a"]["gold_tasks"] == 1
    # a fourth good rater: now a, b, d agree with their majority, c does not
    answers[(1, "d")] = good
    t = {r["annotator"]: r for r in rater_table(rater_signs(_human(answers)), judge, meta, gold).to_dicts()}
    assert t["a"]["agree_majority"] == 1.0 and t["c"]["agree_majority"] == 0.0


def test_ceiling_by_hand():
    # task 1: a and b agree on all 3 pairs; task 2: b ties x and y, which a orders
    answers = {(1, "a"): {"x": 5, "y": 3, "z": 1}, (1, "b"): {"x": 4, "y": 2, "z": 1},
               (2, "a"): {"x": 5, "y": 3, "z": 1}, (2, "b"): {"x": 3, "y": 3, "z": 1}, (3, "a"): {"x": 1, "y": 2}}
    c = ceiling(rater_signs(_human(answers)), n_boot=200)
    assert c["all"]["tasks"] == 2  # task 3 has a single rater
    # both orders of each pair of raters: task 1 6/6; task 2 a as gold 2/3 (b's tie is wrong), b as gold 2/2
    assert c["all"]["acc"] == pytest.approx(10 / 11) and c["all"]["comparisons"] == 11
    assert c["all"]["ci_lo"] <= c["all"]["acc"] <= c["all"]["ci_hi"] and c["all"]["ci_lo"] == pytest.approx(4 / 5)


# ---------------------------------------------------------------------------- gold
def test_gold_copy_is_visibly_worse_and_scored_right(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "x.png"
    Image.fromarray((rng.random((64, 64, 3)) > 0.5).astype(np.uint8) * 255).save(src)
    a = np.asarray(Image.open(src), float)
    b = np.asarray(corrupt(src, 1), float)
    assert a.shape == b.shape and np.abs(a - b).mean() > 40  # not a subtle change
    assert np.array_equal(np.asarray(corrupt(src, 1)), np.asarray(corrupt(src, 1)))
    vals = {"aesthetics": {"o": 4, "c": 2}, "fidelity": {"o": 3, "c": 3}, "overall": {"o": -2, "c": -1},
            "harmlessness": {"o": 1, "c": 5}}
    assert gold_correct(vals, "o", "c") == {"aesthetics": 1.0, "fidelity": 0.0, "overall": 0.0}

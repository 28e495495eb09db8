"""Audits against a real Label Studio started on 127.0.0.1 by this test session."""

import json
import os

import numpy as np
import polars as pl
import pytest

from vprefer.annotate import annotate
from vprefer.audit import AuditError, pull, push, write_report
from vprefer.audit.interfaces import committed
from vprefer.audit.labelstudio import connect, load_state, parse_result
from vprefer.audit.metrics import alpha_all_raters, qw_kappa
from vprefer.recipes import REPO
from vprefer.store import Run
from vprefer.testing.helpers import free_port, local_preset

pytestmark = pytest.mark.slow  # a real Label Studio server and headless Chromium

CREDS = {"VPREFER_LS_USERNAME": "admin@vprefer.test", "VPREFER_LS_PASSWORD": "audit-pass-123",
         "VPREFER_LS_TOKEN": "a1b2c3d4e5f6a7b8c9d0a1b2c3d4e5f6a7b8c9d0"}

@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    from vprefer.audit import server

    old = {k: os.environ.get(k) for k in CREDS}
    os.environ.update(CREDS)
    try:
        server.ensure_installed()
    except Exception as e:  # e.g. no package index reachable on this machine
        pytest.skip(f"Label Studio could not be installed into .venv-ls: {e}")
    data = tmp_path_factory.mktemp("ls-data")
    root = tmp_path_factory.getbasetemp()
    url = server.start(free_port(), data_dir=data, document_root=root)
    os.environ["VPREFER_TEST_LS_ROOT"] = str(root)
    yield url
    server.stop(data)
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_committed_interfaces_match_the_generator():
    for name, xml in committed().items():
        assert (REPO / "label_studio" / "interfaces" / name).read_text() == xml, name


# ---------------------------------------------------------------------------- metrics by hand
def test_metrics_against_reference_implementations():
    import krippendorff
    from sklearn.metrics import cohen_kappa_score

    h, j = [1, 2, 3, 4, 5, 5, 2], [1, 3, 3, 4, 4, 5, 1]
    assert qw_kappa(h, j) == pytest.approx(cohen_kappa_score(h, j, weights="quadratic", labels=[1, 2, 3, 4, 5]))
    # hand value: perfect agreement -> 1
    assert qw_kappa([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0)
    human = pl.DataFrame({"task_id": [1] * 6, "annotator": ["a", "a", "a", "b", "b", "b"], "prompt_id": "p",
                          "image_id": ["x", "y", "z"] * 2, "aspect": "aesthetics", "score": [1.0, 3, 5, 2, 3, 5],
                          "rank": [None] * 6}, schema_overrides={"rank": pl.Int32})
    judge = pl.DataFrame({"model": "judge", "prompt_id": "p", "image_id": ["x", "y", "z"], "aspect": "aesthetics",
                          "score": [1.2, 2.6, 4.4]})
    ref = krippendorff.alpha(reliability_data=np.array([[1, 3, 5], [2, 3, 5], [1, 3, 4]], float),
                             level_of_measurement="ordinal")
    assert alpha_all_raters(human, judge, "aesthetics") == pytest.approx(ref)


def test_parse_label_studio_results():
    res = [{"from_name": "img2_fidelity", "to_name": "img2", "type": "rating", "value": {"rating": 3}},
           {"from_name": "rank", "to_name": "images", "type": "ranker", "value": {"ranker": {"rank": ["2", "1"]}}},
           {"from_name": "comment", "type": "textarea", "value": {"text": ["fine"]}}]
    ratings, ranked = parse_result(res, ["i1", "i2"])
    assert ratings == [("i2", "fidelity", 3.0)] and ranked == ["i2", "i1"]


# ---------------------------------------------------------------------------- the real server
def rate(client, task, images, who=None, bias=0):
    """What a person does in the UI: star ratings for every image and aspect, a ranking, a comment."""
    result = []
    for i, _ in enumerate(images, 1):
        for a in ("prompt_following", "aesthetics", "fidelity", "harmlessness"):
            result.append({"from_name": f"img{i}_{a}", "to_name": f"img{i}", "type": "rating",
                           "value": {"rating": min(5, max(1, (i + bias) % 5 + 1))}})
    result.append({"from_name": "rank", "to_name": "images", "type": "ranker",
                   "value": {"ranker": {"rank": [str(i) for i in range(len(images), 0, -1)]}}})
    result.append({"from_name": "comment", "to_name": "img1", "type": "textarea", "value": {"text": ["ok"]}})
    kw = {"completed_by": who} if who else {}
    return client.annotations.create(id=task, result=result, **kw)


def test_push_annotate_pull_report(label_studio, judge, synth_run, tmp_path):
    annotate(synth_run, local_preset(judge))
    r = push(synth_run, label_studio, n=4, strategy="random", document_root=os.environ["VPREFER_TEST_LS_ROOT"])
    assert r["imported"] == 4
    again = push(synth_run, label_studio, n=4, strategy="random", document_root=os.environ["VPREFER_TEST_LS_ROOT"])  # idempotent
    assert again["imported"] == 0 and again["project_id"] == r["project_id"]
    more = push(synth_run, label_studio, n=6, strategy="disagreement", document_root=os.environ["VPREFER_TEST_LS_ROOT"])
    assert more["imported"] + more["already_there"] == 6
    run = Run(synth_run)
    state = load_state(run)
    assert len(state["tasks"]) == 4 + more["imported"] and "token" not in json.dumps(state).lower()
    client = connect(label_studio)
    tasks = list(client.tasks.list(project=r["project_id"]))
    assert all("ai_judgement" not in t.data for t in tasks)  # hidden from humans by default
    assert tasks[0].data["image_1"].startswith("/data/local-files/?d=")
    second = client.users.create(username="rater2", email="rater2@vprefer.test", password="rater-pass-123")
    for k, t in enumerate(tasks):
        rate(client, t.id, t.data["vprefer_images"])
        if k < 2:  # two tasks get a second human: the human-human ceiling
            rate(client, t.id, t.data["vprefer_images"], who=second.id, bias=1)
    p = pull(synth_run)
    assert p["annotators"] == 2 and p["annotations"] == len(tasks) + 2
    human = run.read("human")
    assert set(human["annotator"].str.len_chars()) == {12}  # hashed, not the Label Studio user id
    assert str(second.id) not in set(human["annotator"])
    assert run.read("pairs").filter(pl.col("annotator") == "human").height > 0
    m = write_report(synth_run, tmp_path / "audit", n_boot=50)
    assert m["human_human"]["tasks"] == 2
    assert set(m["judge"]) >= {"aesthetics", "fidelity", "prompt_following", "overall"}
    for f in ("report.md", "report.html", "judge_agreement.png", "confusion.png", "position_bias.png"):
        assert (tmp_path / "audit" / f).exists(), f
    assert "Human vs AI judge" in (tmp_path / "audit" / "report.md").read_text()


def test_errors_are_one_clear_line_and_change_nothing(label_studio, judge, synth_run, monkeypatch):
    with pytest.raises(AuditError, match="not reachable"):
        push(synth_run, "http://127.0.0.1:9", n=2)
    monkeypatch.setenv("VPREFER_LS_TOKEN", "wrong-token-000")
    with pytest.raises(AuditError, match="refused the token"):
        push(synth_run, label_studio, n=2)
    monkeypatch.setenv("VPREFER_LS_TOKEN", CREDS["VPREFER_LS_TOKEN"])
    r = push(synth_run, label_studio, n=2, inline=True, show_ai=False)
    client = connect(label_studio)
    client.projects.delete(r["project_id"])
    state_before = (synth_run / "state" / "label_studio.json").read_text()
    with pytest.raises(AuditError, match="no longer exists"):
        pull(synth_run)
    with pytest.raises(AuditError, match="no longer exists"):
        push(synth_run, label_studio, n=3)
    assert (synth_run / "state" / "label_studio.json").read_text() == state_before
    assert not Run(synth_run).has("human")


def test_labeling_page_renders_in_headless_chromium(label_studio, judge, synth_run):
    """Opens a task's labeling page as an annotator would and checks images and controls render."""
    import shutil
    import time

    if not shutil.which("chromium") or not shutil.which("chromedriver"):
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By

    r = push(synth_run, label_studio, n=1, document_root=os.environ["VPREFER_TEST_LS_ROOT"])
    tid = next(iter(load_state(Run(synth_run))["tasks"]))
    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              f"--user-data-dir={synth_run.parent / 'chrome-profile'}", "--window-size=1400,1100"):
        opts.add_argument(a)
    opts.binary_location = shutil.which("chromium")
    from selenium.webdriver.chrome.service import Service
    drv = webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver")))
    try:
        drv.get(f"{label_studio}/user/login")
        drv.find_element(By.NAME, "email").send_keys(CREDS["VPREFER_LS_USERNAME"])
        drv.find_element(By.NAME, "password").send_keys(CREDS["VPREFER_LS_PASSWORD"])
        drv.find_element(By.CSS_SELECTOR, "button[type=submit], input[type=submit]").click()
        time.sleep(2)
        drv.get(f"{label_studio}/projects/{r['project_id']}/data?task={tid}")
        deadline, loaded = time.time() + 60, 0
        while time.time() < deadline:
            loaded = drv.execute_script(
                "return [...document.images].filter(i => i.src.includes('local-files') && i.naturalWidth > 0).length")
            stars = drv.execute_script("return document.querySelectorAll('.ant-rate, [class*=rating]').length")
            if loaded >= 3 and stars >= 12:
                break
            time.sleep(1)
        out = REPO / "test-artifacts"
        out.mkdir(exist_ok=True)
        drv.save_screenshot(str(out / "labeling-page.png"))
        text = drv.find_element(By.TAG_NAME, "body").text
    finally:
        drv.quit()
    assert loaded >= 3, "the set's images did not load from local-files storage"
    assert stars >= 12, "rating controls did not render"
    assert "Prompt following" in text and "Rank the images" in text


# ---------------------------------------------------------------------------- overlap, gold, pairwise, raters
def judge_like(client, task, who, good: bool, gold_ids: set, lead_time: float):
    """A scripted rater: a good one orders images by their id (smaller is better) and always puts a gold copy last;
    a bad one gives the reverse of every order. Strict orders only, so the ceiling can be worked out by hand."""
    ids = task.data["vprefer_images"]
    order = sorted(ids, key=lambda i: (i in gold_ids, i))  # best first
    if not good:
        order = order[::-1]
    rank = {iid: r for r, iid in enumerate(order, 1)}
    result = []
    if "image_a" in task.data:  # pairwise
        choice = "Left" if rank[ids[0]] < rank[ids[1]] else "Right"
        result = [{"from_name": a, "to_name": "left", "type": "choices", "value": {"choices": [choice]}}
                  for a in ("prompt_following", "aesthetics", "fidelity", "harmlessness")]
    else:
        for i, iid in enumerate(ids, 1):
            for a in ("prompt_following", "aesthetics", "fidelity", "harmlessness"):
                result.append({"from_name": f"img{i}_{a}", "to_name": f"img{i}", "type": "rating",
                               "value": {"rating": 6 - rank[iid]}})
        result.append({"from_name": "rank", "to_name": "images", "type": "ranker",
                       "value": {"ranker": {"rank": [str(ids.index(x) + 1) for x in order]}}})
    return client.annotations.create(id=task.id, result=result, completed_by=who, lead_time=lead_time)


def test_overlap_gold_pairwise_and_rater_quality(label_studio, judge, synth_run, tmp_path):
    from vprefer.audit.labelstudio import _annotator_hash

    annotate(synth_run, local_preset(judge))
    run = Run(synth_run)
    root = os.environ["VPREFER_TEST_LS_ROOT"]
    r = push(synth_run, label_studio, n=3, overlap=3, gold=2, document_root=root)
    assert r["imported"] == 5 and r["gold"] == 2 and set(r["projects"]) == {"sets-3"}
    p = push(synth_run, label_studio, n=4, interface="pairwise", strategy="disagreement", overlap=3, gold=1,
             document_root=root)
    assert p["imported"] == 5 and set(p["projects"]) == {"sets-3", "pairwise"}
    assert push(synth_run, label_studio, n=4, interface="pairwise", strategy="disagreement", overlap=3, gold=1,
                document_root=root)["imported"] == 0
    client = connect(label_studio)
    sets_project = client.projects.get(r["projects"]["sets-3"])
    assert sets_project.maximum_annotations == 3 and client.projects.get(p["projects"]["pairwise"]).maximum_annotations == 3
    assert 'name="img3"' in sets_project.label_config and "img4" not in sets_project.label_config  # no empty slots
    gold = run.read("gold")
    assert gold.height == 2 and not set(gold["image_id"]) & set(run.read("images")["image_id"])
    assert all((synth_run / u).is_file() for u in gold["uri"])
    tasks = list(client.tasks.list(project=r["projects"]["sets-3"])) + list(client.tasks.list(project=p["projects"]["pairwise"]))
    golds = [t for t in tasks if t.data["vprefer_gold"]]
    assert len(tasks) == 10 and len(golds) == 3
    assert all(set(t.data["vprefer_images"]) & set(gold["image_id"]) for t in golds)
    assert all("/gold/" in (t.data.get("image_1", "") + t.data.get("image_a", "") + t.data.get("image_b", ""))
               or any("/gold/" in t.data.get(f"image_{i}", "") for i in (2, 3)) for t in golds)
    raters = [client.users.create(username=f"r{i}", email=f"r{i}@vprefer.test", password="rater-pass-123")
              for i in range(3)]
    times = (10.0, 20.0, 2.0)
    gold_ids = set(gold["image_id"])
    for k, t in enumerate(tasks):
        for i, u in enumerate(raters):
            judge_like(client, t, u.id, good=i < 2, gold_ids=gold_ids, lead_time=times[i] + k)
            if k == 0 and i == 0:  # one of three people: the task is not done yet
                assert not client.tasks.get(t.id).is_labeled
        if k == 0:
            assert client.tasks.get(t.id).is_labeled
    pulled = pull(synth_run)
    assert pulled["annotators"] == 3 and pulled["annotations"] == 30 and pulled["gold_answers"] == 9
    human, pairs = run.read("human"), run.read("pairs").filter(pl.col("annotator") == "human")
    assert not set(human["image_id"]) & gold_ids  # gold answers are never preference data
    assert not (set(pairs["win_image_id"]) | set(pairs["lose_image_id"])) & gold_ids
    h = {_annotator_hash(label_studio, u.id): i for i, u in enumerate(raters)}
    meta = run.read("audit_annotations")
    assert meta.height == 30 and meta.filter(pl.col("gold")).height == 9
    for who, i in h.items():  # lead_time as recorded by Label Studio
        got = sorted(meta.filter(pl.col("annotator") == who)["lead_time_s"].to_list())
        assert got == pytest.approx(sorted(times[i] + k for k in range(10)))
    ga = run.read("gold_answers")
    acc = {h[w]: c for w, c in ga.group_by("annotator").agg(pl.col("correct").mean()).rows()}
    assert acc == {0: 1.0, 1: 1.0, 2: 0.0}
    # pairwise answers are in the human pairs: 2 of 3 votes -> margin 1/3, in the good raters' direction
    pw = [t for t in tasks if "image_a" in t.data and not t.data["vprefer_gold"]]
    a, b = sorted(pw[0].data["vprefer_images"])
    row = pairs.filter(pl.col("aspect") == "fidelity", pl.col("win_image_id").is_in([a, b]),
                       pl.col("lose_image_id").is_in([a, b]))
    assert row.height == 1 and row["win_image_id"][0] == a and row["margin"][0] == pytest.approx(1 / 3)

    m = write_report(synth_run, tmp_path / "audit", n_boot=50)
    raters_t = {h[x["annotator"]]: x for x in m["raters"]}
    assert raters_t[2]["flagged"] and not raters_t[0]["flagged"] and not raters_t[1]["flagged"]
    # the bad rater disagrees with the two others everywhere; a good rater's two others split: no majority
    assert raters_t[2]["agree_majority"] == 0.0 and raters_t[0]["agree_majority"] is None
    assert raters_t[0]["agree_judge"] == pytest.approx(1 - raters_t[2]["agree_judge"])
    assert raters_t[1]["median_s_per_task"] == pytest.approx(20 + 4.5) and raters_t[0]["gold_tasks"] == 3
    # by hand: on every pair two raters agree and one reverses -> of the 6 ordered rater pairs 2 agree
    assert m["ceiling"]["all"]["tasks"] == 7 and m["ceiling"]["all"]["acc"] == pytest.approx(1 / 3)
    for f in ("report.md", "report.html", "raters.png", "ceiling.png"):
        assert (tmp_path / "audit" / f).exists(), f
    md = (tmp_path / "audit" / "report.md").read_text()
    assert "Human-human ceiling" in md and "flagged" in md

    m = write_report(synth_run, tmp_path / "audit2", n_boot=50, exclude="flagged")
    assert [h[x] for x in m["excluded_raters"]] == [2] and m["ceiling"]["all"]["acc"] == 1.0
    assert load_state(run)["excluded_raters"] == m["excluded_raters"]
    pairs = run.read("pairs").filter(pl.col("annotator") == "human")
    row = pairs.filter(pl.col("aspect") == "fidelity", pl.col("win_image_id").is_in([a, b]),
                       pl.col("lose_image_id").is_in([a, b]))
    assert row["win_image_id"][0] == a and row["margin"][0] == 1.0  # the excluded rater's vote is gone
    pull(synth_run)  # a later pull keeps the exclusion
    again = run.read("pairs").filter(pl.col("annotator") == "human", pl.col("aspect") == "fidelity",
                                     pl.col("win_image_id") == a, pl.col("lose_image_id") == b)
    assert again["margin"][0] == 1.0
    with pytest.raises(Exception, match="no rater 'nobody'"):
        write_report(synth_run, tmp_path / "audit3", n_boot=50, exclude="nobody")

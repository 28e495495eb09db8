"""Push image sets to Label Studio and pull human judgements back into the run.

State lives in ``RUN/state/label_studio.json``: one Label Studio project per
interface (``sets-K`` for image sets of K images, so a small set never shows empty
image slots; ``pairwise`` for Left / Right / Tie), and task id -> kind, image ids in
the order shown, gold item. It is rewritten atomically only after the server
accepted a change, so a failure (server down, wrong token, deleted project) leaves
nothing half-written. The token comes from ``VPREFER_LS_TOKEN`` and is never stored.

Overlap: ``maximum_annotations`` (Label Studio's "annotations per task", in the
open-source edition too) is set on every project of the run, so N people see each
task and the report can state the human-human ceiling.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

import httpx
import polars as pl

from vprefer import schema
from vprefer.audit import tasks
from vprefer.audit.gold import ensure_gold, gold_correct
from vprefer.audit.human import rebuild
from vprefer.audit.interfaces import pairwise_xml, sets_xml
from vprefer.errors import ServiceError
from vprefer.ids import short_hash
from vprefer.store import Result, Run, as_run, atomic_write_json


class AuditError(ServiceError):
    """Label Studio is down, refuses the token, or lost the project; or the audit was asked something impossible."""


def _state_path(run: Run) -> Path:
    return run.subdir("state") / "label_studio.json"


def load_state(run: Run | str | Path) -> dict:
    """The audit state; a state written before projects per interface is read as its one ``sets-K`` project."""
    p = _state_path(as_run(run))
    s = json.loads(p.read_text()) if p.exists() else {"tasks": {}}
    if "project_id" in s:
        key = f"sets-{s.get('k', 4)}"
        s.setdefault("projects", {})[key] = {"project_id": s.pop("project_id"), "storage_id": s.pop("storage_id", None),
                                             "show_ai": s.pop("show_ai", False), "inline": s.pop("inline", False),
                                             "k": s.pop("k", 4)}
        for t in s["tasks"].values():
            t.setdefault("kind", "sets")
            t.setdefault("project", key)
    s.setdefault("projects", {})
    return s


def connect(url: str, token: str | None = None):
    from label_studio_sdk import LabelStudio

    token = token or os.environ.get("VPREFER_LS_TOKEN")
    if not token:
        raise AuditError("set VPREFER_LS_TOKEN (the Label Studio API token) in the environment")
    client = LabelStudio(base_url=url, api_key=token)
    try:
        client.users.whoami()
    except httpx.ConnectError:
        raise AuditError(f"Label Studio at {url} is not reachable; start it with `vprefer audit server start`") from None
    except Exception as e:  # the SDK raises ApiError with a status code
        if getattr(e, "status_code", None) in (401, 403):
            raise AuditError(f"Label Studio at {url} refused the token ({e.status_code}); check VPREFER_LS_TOKEN") from None
        raise AuditError(f"Label Studio at {url} answered {getattr(e, 'status_code', '?')}: {str(e)[:200]}") from None
    return client


def _check_projects(client, run: Run, state: dict) -> None:
    """Every project this run pushed to must still exist: otherwise stop before changing anything."""
    for p in state["projects"].values():
        try:
            client.projects.get(p["project_id"])
        except Exception as e:
            if getattr(e, "status_code", None) == 404:
                raise AuditError(f"Label Studio project {p['project_id']} of this run no longer exists; nothing was "
                                 f"changed (delete {_state_path(run)} to start a new audit)") from None
            raise


def _project(client, run: Run, state: dict, key: str, label_config: str, overlap: int):
    """The run's project for one interface, created if new; its annotations per task set to ``overlap``."""
    if key in state["projects"]:
        project = client.projects.get(state["projects"][key]["project_id"])
    else:
        title = f"vprefer audit {run.path.name} {short_hash(str(run.path.resolve()), n=6)} {key}"
        found = [p for p in client.projects.list() if p.title == title]  # from a push that died before saving
        project = found[0] if found else client.projects.create(
            title=title, label_config=label_config, maximum_annotations=overlap,
            description="vprefer human audit: " + ("which image is better, per aspect." if key == "pairwise" else
                                                   "rate each image on four aspects, rank the set."))
    if project.maximum_annotations != overlap:
        project = client.projects.update(project.id, maximum_annotations=overlap)
    return project


def image_sets(run: Run | str | Path) -> pl.DataFrame:
    """One row per prompt: its image ids, uris and absolute paths (sorted by image id), prompt text and meta."""
    run = as_run(run)
    return (run.image_paths().sort("prompt_id", "image_id").group_by("prompt_id", maintain_order=True)
            .agg(pl.col("image_id").alias("image_ids"), pl.col("uri").alias("uris"), pl.col("path").alias("paths"),
                 pl.col("prompt").first())
            .join(run.read("prompts").select("prompt_id", "meta"), on="prompt_id"))


def select(run: Run | str | Path, n: int, strategy: str, seed: int = 0) -> list[str]:
    """Prompt ids of the image sets to audit."""
    run = as_run(run)
    sets = image_sets(run)
    ids = sets["prompt_id"].to_list()
    rng = random.Random(seed)
    if strategy == "random":
        return rng.sample(ids, min(n, len(ids)))
    if strategy == "stratified":
        strata = {}
        for pid, meta in sets.select("prompt_id", "meta").iter_rows():
            key = (json.loads(meta).get("category") if meta else None) or "none"
            strata.setdefault(key, []).append(pid)
        for v in strata.values():
            rng.shuffle(v)
        out, keys = [], sorted(strata)
        while len(out) < min(n, len(ids)):  # round-robin over strata
            for key in keys:
                if strata[key] and len(out) < n:
                    out.append(strata[key].pop())
        return out
    if strategy == "disagreement":
        if not run.has("annotations"):
            raise AuditError("--strategy disagreement needs annotations (run `vprefer annotate` first)")
        ann = run.read("annotations").filter(pl.col("status") == "ok")
        dis = ann.group_by("prompt_id", "image_id", "aspect").agg(pl.col("score").std().fill_null(0).alias("sd"))
        if run.has("scores"):  # VP-Score vs judge: rank disagreement within the set
            judge = ann.group_by("prompt_id", "image_id", "aspect").agg(pl.col("score").mean().alias("j"))
            vp = run.read("scores").group_by("prompt_id", "image_id", "aspect").agg(pl.col("score").mean().alias("v"))
            both = judge.join(vp, on=["prompt_id", "image_id", "aspect"]).with_columns(
                (pl.col("j").rank().over("prompt_id", "aspect") - pl.col("v").rank().over("prompt_id", "aspect"))
                .abs().alias("rd"))
            dis = dis.join(both.select("prompt_id", "image_id", "aspect", "rd"), on=["prompt_id", "image_id", "aspect"],
                           how="left").with_columns((pl.col("sd") + pl.col("rd").fill_null(0)).alias("sd"))
        ranked = dis.group_by("prompt_id").agg(pl.col("sd").mean()).sort(["sd", "prompt_id"], descending=[True, False])
        return ranked["prompt_id"].head(n).to_list()
    raise AuditError(f"unknown strategy {strategy!r}: random, stratified or disagreement")


def _ai_summary(run: Run, pid: str, image_ids: list[str]) -> str:
    ann = run.read("annotations").filter(pl.col("prompt_id") == pid, pl.col("status") == "ok")
    m = ann.group_by("image_id", "aspect").agg(pl.col("score").mean())
    parts = []
    for i, iid in enumerate(image_ids, 1):
        s = {a: v for _, a, v in m.filter(pl.col("image_id") == iid).rows()}
        parts.append(f"Image {i}: " + ", ".join(f"{a} {v:.1f}" for a, v in sorted(s.items())))
    return "AI judge - " + " | ".join(parts)


@dataclass
class PushResult(Result):
    project_id: int  # the (last) project pushed to
    imported: int  # tasks created now
    already_there: int  # chosen tasks the projects had from an earlier push
    url: str  # where people annotate
    gold: int = 0  # gold tasks among those chosen
    projects: dict = None  # interface key -> project id


def _image_ref(path: Path, root: Path, inline: bool) -> str:
    from vprefer.images import jpeg_data_url

    path = path.resolve()
    if inline:
        return jpeg_data_url(path, 512)
    if not path.is_relative_to(root):
        raise AuditError(f"{path} is outside the Label Studio document root {root}; pass the root the "
                         "server was started with (--document-root), or --inline")
    return f"/data/local-files/?d={path.relative_to(root).as_posix()}"


def _planned(run: Run, interface: str, n: int, strategy: str, gold: int, seed: int) -> list[dict]:
    """The tasks to exist after this push: identity, image ids in the order shown, gold item (original, copy)."""
    sets = image_sets(run)
    paths = dict(zip(run.image_paths()["image_id"], run.image_paths()["path"]))
    out = []
    if interface == "sets":
        by = {r["prompt_id"]: r for r in sets.iter_rows(named=True)}
        for pid in select(run, n, strategy, seed):
            out.append({"id": pid, "prompt_id": pid, "image_ids": by[pid]["image_ids"], "gold": None})
    elif interface == "pairwise":
        for pid, a, b in tasks.select_pairs(run, n, strategy, seed):
            out.append({"id": f"{pid}|{a}|{b}", "prompt_id": pid, "image_ids": tasks.shown_order(a, b, seed),
                        "gold": None})
    else:
        raise AuditError(f"unknown interface {interface!r}: {' or '.join(tasks.INTERFACES)}")
    members = {r["prompt_id"]: r["image_ids"] for r in sets.iter_rows(named=True)}
    for g in ensure_gold(run, gold, seed).iter_rows(named=True):
        orig, copy = g["source_image_id"], g["image_id"]
        paths[copy] = str((run.path / g["uri"]).resolve())
        if interface == "pairwise":
            ids = tasks.shown_order(orig, copy, seed)
        else:  # the same size as the real sets: the copy takes the place of another image of the prompt
            others = [i for i in members[g["prompt_id"]] if i != orig]
            ids = [orig, copy] + others[1:]
            random.Random(f"{seed}|{copy}").shuffle(ids)
        out.append({"id": f"gold|{interface}|{copy}", "prompt_id": g["prompt_id"], "image_ids": ids,
                    "gold": {"original": orig, "copy": copy}})
    for t in out:
        t["paths"] = [paths[i] for i in t["image_ids"]]
    return out


def push(run_dir: Run | str | Path, url: str, *, n: int, strategy: str = "random", interface: str = "sets",
         overlap: int = 1, gold: int = 0, show_ai: bool = False, inline: bool = False, seed: int = 0,
         token: str | None = None, document_root: str | Path | None = None) -> PushResult:
    """``document_root`` must be the server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT (``audit server start``;
    default: the run folder, what ``audit server start --run RUN`` uses): local-files URLs are resolved against
    it. The project's storage is ``RUN/images`` (Label Studio wants a storage strictly inside its root and
    serves a file only from a storage of a project the user may see). ``overlap``: how many people annotate each task (every project of the run)."""
    run = as_run(run_dir)
    if overlap < 1:
        raise AuditError(f"--overlap must be at least 1, got {overlap}")
    root = Path(document_root).resolve() if document_root is not None else run.path.resolve()
    if interface not in tasks.INTERFACES:
        raise AuditError(f"unknown interface {interface!r}: {' or '.join(tasks.INTERFACES)}")
    state = load_state(run)
    client = connect(url, token)  # before gold images are written: a stopped server leaves the run untouched
    _check_projects(client, run, state)
    planned = _planned(run, interface, n, strategy, gold, seed)
    for p in state["projects"].values():  # overlap applies to the whole audit
        client.projects.update(p["project_id"], maximum_annotations=overlap)
    by_key: dict[str, list[dict]] = {}
    for t in planned:
        by_key.setdefault("pairwise" if interface == "pairwise" else f"sets-{len(t['image_ids'])}", []).append(t)
    imported, pid_last, ai = 0, None, run.has("annotations") and show_ai
    prompts = dict(run.read("prompts").select("prompt_id", "prompt").iter_rows())
    for key, group in sorted(by_key.items()):
        k = len(group[0]["image_ids"])
        xml = pairwise_xml() if key == "pairwise" else sets_xml(k, show_ai=show_ai)
        project = _project(client, run, state, key, xml, overlap)
        meta = state["projects"].setdefault(key, {"project_id": project.id, "storage_id": None, "show_ai": show_ai,
                                                  "inline": inline, "k": k, "kind": interface})
        if not inline and meta.get("storage_id") is None:
            st = client.import_storage.local.create(project=project.id, path=str((run.path / "images").resolve()),
                                                    title="vprefer run images",
                                                    use_blob_urls=False)
            meta["storage_id"] = st.id
        present = {t.data.get("vprefer_set"): t.id for t in client.tasks.list(project=project.id)}
        new = [t for t in group if t["id"] not in present]
        known = {(v["project"], v["prompt_id"], tuple(v["image_ids"])) for v in state["tasks"].values()}
        for t in group:  # imported by a push that died before saving its state: record them now
            if t["id"] in present and (key, t["prompt_id"], tuple(t["image_ids"])) not in known:
                state["tasks"][str(present[t["id"]])] = {"kind": interface, "project": key, "prompt_id": t["prompt_id"],
                                                         "image_ids": t["image_ids"], "gold": t["gold"]}
        data = []
        for t in new:
            d = {"prompt": prompts[t["prompt_id"]],
                 "vprefer_set": t["id"], "vprefer_images": t["image_ids"], "vprefer_gold": t["gold"] is not None}
            refs = [_image_ref(Path(x), root, inline) for x in t["paths"]]
            if key == "pairwise":
                d["image_a"], d["image_b"] = refs
            else:
                d["items"] = [{"id": str(i), "title": f"Image {i}", "body": ""} for i in range(1, k + 1)]
                d.update({f"image_{i}": r for i, r in enumerate(refs, 1)})
                if ai and t["gold"] is None:
                    d["ai_judgement"] = _ai_summary(run, t["prompt_id"], t["image_ids"])
            data.append(d)
        ids = []
        if data:
            res = client.projects.import_tasks(project.id, request=data, return_task_ids=True)
            ids = list(res.task_ids or [])
            if len(ids) != len(data):
                raise AuditError(f"Label Studio created {len(ids)} of {len(data)} tasks; rerun push to add the rest")
        for tid, t in zip(ids, new):
            state["tasks"][str(tid)] = {"kind": interface, "project": key, "prompt_id": t["prompt_id"],
                                        "image_ids": t["image_ids"], "gold": t["gold"]}
        imported += len(new)
        pid_last = project.id
    state.update(base_url=url, overlap=overlap)
    atomic_write_json(_state_path(run), state)
    return PushResult(pid_last, imported, len(planned) - imported, f"{url}/projects/{pid_last}/data",
                      sum(t["gold"] is not None for t in planned), {k: v["project_id"] for k, v in state["projects"].items()})


def _annotator_hash(url: str, user_id) -> str:
    return hashlib.sha256(f"{url}|{user_id}".encode()).hexdigest()[:12]


def parse_result(result: list[dict], image_ids: list[str]) -> tuple[list[tuple[str, str, float]], list[str]]:
    """(image_id, aspect, score) ratings and the ranked image ids (best first) from one annotation."""
    ratings, ranked = [], []
    for r in result:
        v = r.get("value") or {}
        if r.get("type") == "rating" and str(r.get("from_name", "")).startswith("img"):
            head, _, aspect = r["from_name"].partition("_")
            i = int(head[3:])
            if 1 <= i <= len(image_ids):
                ratings.append((image_ids[i - 1], aspect, float(v["rating"])))
        elif r.get("type") == "ranker":
            lists = [x for x in (v.get("ranker") or {}).values() if isinstance(x, list)]
            if lists:
                ranked = [image_ids[int(x) - 1] for x in lists[0] if str(x).isdigit() and 1 <= int(x) <= len(image_ids)]
    return ratings, ranked


@dataclass
class PullResult(Result):
    annotations: int  # completed annotations (task x person), gold tasks included
    rows: int  # rows of the human table they became
    annotators: int
    tasks_missing: int  # tasks deleted on the server since the push
    gold_answers: int = 0  # annotations of gold tasks (kept out of the human table)


def _answers(kind: str, result: list[dict], image_ids: list[str]) -> tuple[list[dict], dict[str, dict[str, float]]]:
    """Human-table rows (without task/annotator/prompt) and aspect -> image -> value (higher is better)."""
    rows, values = [], {}
    if kind == "pairwise":
        for iid, aspect, rank in tasks.parse_pairwise(result, image_ids):
            rows.append({"image_id": iid, "aspect": aspect, "score": None, "rank": rank})
            values.setdefault(aspect, {})[iid] = -rank
        return rows, values
    ratings, ranked = parse_result(result, image_ids)
    for iid, aspect, score in ratings:
        rows.append({"image_id": iid, "aspect": aspect, "score": score, "rank": None})
        values.setdefault(aspect, {})[iid] = score
    for pos, iid in enumerate(ranked, 1):
        rows.append({"image_id": iid, "aspect": schema.OVERALL, "score": None, "rank": pos})
        values.setdefault(schema.OVERALL, {})[iid] = -pos
    return rows, values


def pull(run_dir: Run | str | Path, url: str | None = None, *, token: str | None = None) -> PullResult:
    """People's judgements of every pushed task replace that task's rows; human rankings/pairs are rebuilt.

    Per annotation the time Label Studio measured (``lead_time``) goes to ``audit_annotations``; answers on gold
    tasks go to ``gold_answers`` (right or wrong per gold aspect), never to ``human``."""
    run = as_run(run_dir)
    state = load_state(run)
    if not state["projects"]:
        raise AuditError(f"{run_dir}: nothing pushed to Label Studio yet; run `vprefer audit push` first")
    url = url or state["base_url"]
    client = connect(url, token)
    _check_projects(client, run, state)
    rows, meta, gold_rows, missing = [], [], [], 0
    for tid, info in state["tasks"].items():
        try:
            anns = client.annotations.list(id=int(tid))
        except Exception as e:
            if getattr(e, "status_code", None) == 404:
                missing += 1
                continue
            raise
        for a in anns:
            if a.was_cancelled:
                continue
            who = _annotator_hash(url, a.completed_by)
            kind, g = info.get("kind", "sets"), info.get("gold")
            answer, values = _answers(kind, a.result or [], info["image_ids"])
            meta.append({"task_id": int(tid), "annotator": who, "kind": kind, "gold": g is not None,
                         "prompt_id": info["prompt_id"], "lead_time_s": a.lead_time})
            if g is not None:
                gold_rows += [{"task_id": int(tid), "annotator": who, "aspect": asp, "correct": c}
                              for asp, c in gold_correct(values, g["original"], g["copy"]).items()]
                continue
            rows += [{"task_id": int(tid), "annotator": who, "prompt_id": info["prompt_id"], **r} for r in answer]
    new = schema.frame("human", rows)
    pushed = [int(t) for t in state["tasks"]]
    with run.command("audit pull", {"base_url": url, "projects": {k: v["project_id"] for k, v in state["projects"].items()}}):
        # every pushed task is replaced, also by nothing: a task whose annotations were deleted loses its rows
        run.replace_rows("human", new, "task_id", replacing=[t for t in pushed if not state["tasks"][str(t)].get("gold")])
        run.replace_rows("audit_annotations", schema.frame("audit_annotations", meta), "task_id", replacing=pushed)
        run.replace_rows("gold_answers", schema.frame("gold_answers", gold_rows), "task_id", replacing=pushed)
        rebuild(run, state)
    return PullResult(new.select("task_id", "annotator").unique().height + sum(m["gold"] for m in meta), new.height,
                      len({m["annotator"] for m in meta}), missing, sum(m["gold"] for m in meta))

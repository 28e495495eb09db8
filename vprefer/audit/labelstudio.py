"""Push image sets to Label Studio and pull human judgements back into the run.

State lives in ``RUN/state/label_studio.json`` (project id, storage id, task id ->
image set in the order shown); it is rewritten atomically only after the server
accepted a change, so a failure (server down, wrong token, deleted project)
leaves nothing half-written. The token comes from ``VPREFER_LS_TOKEN`` and is
never stored.
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
from vprefer.audit.interfaces import sets_xml
from vprefer.errors import ServiceError
from vprefer.ids import short_hash
from vprefer.rankings import ranking_pairs
from vprefer.store import Result, Run, as_run, atomic_write_json


class AuditError(ServiceError):
    """Label Studio is down, refuses the token, or lost the project; or the audit was asked something impossible."""


def _state_path(run: Run) -> Path:
    return run.subdir("state") / "label_studio.json"


def load_state(run: Run | str | Path) -> dict:
    p = _state_path(as_run(run))
    return json.loads(p.read_text()) if p.exists() else {"tasks": {}}


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


def _project(client, run: Run, state: dict, k: int, show_ai: bool):
    pid = state.get("project_id")
    if pid is not None:
        try:
            return client.projects.get(pid)
        except Exception as e:
            if getattr(e, "status_code", None) == 404:
                raise AuditError(f"Label Studio project {pid} of this run no longer exists; delete "
                                 f"{_state_path(run)} to start a new one") from None
            raise
    title = f"vprefer audit {run.path.name} {short_hash(str(run.path.resolve()), n=6)}"
    for p in client.projects.list():
        if p.title == title:  # created by a push that died before saving its state
            return p
    return client.projects.create(title=title, label_config=sets_xml(k, show_ai=show_ai),
                                  description="vprefer human audit: rate each image on four aspects, rank the set.")


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
    project_id: int
    imported: int  # tasks created now
    already_there: int  # chosen image sets the project had from an earlier push
    url: str  # where people annotate


def push(run_dir: Run | str | Path, url: str, *, n: int, strategy: str = "random", show_ai: bool = False,
         inline: bool = False, seed: int = 0, token: str | None = None, document_root: str | Path = "/") -> PushResult:
    """``document_root`` must be the server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT (``audit server start
    --document-root``): local-files URLs are resolved against it."""
    from vprefer.images import jpeg_data_url

    run = as_run(run_dir)
    root = Path(document_root).resolve()
    state = load_state(run)
    chosen = select(run, n, strategy, seed)
    sets = image_sets(run).filter(pl.col("prompt_id").is_in(chosen))
    k = max(4, max((len(x) for x in sets["image_ids"].to_list()), default=4))
    client = connect(url, token)
    project = _project(client, run, state, k, show_ai)
    if not inline and state.get("storage_id") is None:
        st = client.import_storage.local.create(project=project.id, path=str((run.path / "images").resolve()),
                                                title="vprefer run images", use_blob_urls=False)
        state["storage_id"] = st.id
    present = {t.data.get("vprefer_set") for t in client.tasks.list(project=project.id)}
    tasks, order = [], []
    for r in sets.iter_rows(named=True):
        if r["prompt_id"] in present:
            continue
        data = {"prompt": r["prompt"], "vprefer_set": r["prompt_id"], "vprefer_images": r["image_ids"],
                "items": [{"id": str(i), "title": f"Image {i}", "body": ""} for i in range(1, len(r["image_ids"]) + 1)]}
        for i in range(1, k + 1):
            if i <= len(r["paths"]):
                path = Path(r["paths"][i - 1]).resolve()
                if not inline and not path.is_relative_to(root):
                    raise AuditError(f"{path} is outside the Label Studio document root {root}; pass the root the "
                                     "server was started with (--document-root), or --inline")
                data[f"image_{i}"] = (jpeg_data_url(path, 512) if inline else
                                      f"/data/local-files/?d={path.relative_to(root).as_posix()}")
            else:
                data[f"image_{i}"] = ""
        if show_ai and run.has("annotations"):
            data["ai_judgement"] = _ai_summary(run, r["prompt_id"], r["image_ids"])
        tasks.append(data)
        order.append((r["prompt_id"], r["image_ids"]))
    ids = []
    if tasks:
        res = client.projects.import_tasks(project.id, request=tasks, return_task_ids=True)
        ids = list(res.task_ids or [])
        if len(ids) != len(tasks):
            raise AuditError(f"Label Studio created {len(ids)} of {len(tasks)} tasks; rerun push to add the rest")
    state.update(project_id=project.id, base_url=url, show_ai=show_ai, inline=inline, k=k)
    for tid, (pid, iids) in zip(ids, order):
        state["tasks"][str(tid)] = {"prompt_id": pid, "image_ids": iids}
    atomic_write_json(_state_path(run), state)
    return PushResult(project.id, len(tasks), len(chosen) - len(tasks), f"{url}/projects/{project.id}/data")


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
    annotations: int  # completed annotations (task x person)
    rows: int  # rows of the human table they became
    annotators: int
    tasks_missing: int  # tasks deleted on the server since the push


def pull(run_dir: Run | str | Path, url: str | None = None, *, token: str | None = None) -> PullResult:
    """People's judgements of every pushed task replace that task's rows; human rankings/pairs are rebuilt."""
    run = as_run(run_dir)
    state = load_state(run)
    if "project_id" not in state:
        raise AuditError(f"{run_dir}: nothing pushed to Label Studio yet; run `vprefer audit push` first")
    url = url or state["base_url"]
    client = connect(url, token)
    try:
        client.projects.get(state["project_id"])
    except Exception as e:
        if getattr(e, "status_code", None) == 404:
            raise AuditError(f"Label Studio project {state['project_id']} no longer exists; nothing was changed") from None
        raise
    rows, missing = [], 0
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
            ratings, ranked = parse_result(a.result or [], info["image_ids"])
            for iid, aspect, score in ratings:
                rows.append({"task_id": int(tid), "annotator": who, "prompt_id": info["prompt_id"], "image_id": iid,
                             "aspect": aspect, "score": score, "rank": None})
            for pos, iid in enumerate(ranked, 1):
                rows.append({"task_id": int(tid), "annotator": who, "prompt_id": info["prompt_id"], "image_id": iid,
                             "aspect": schema.OVERALL, "score": None, "rank": pos})
    new = schema.frame("human", rows)
    with run.command("audit pull", {"base_url": url, "project_id": state["project_id"]}):
        # every pushed task is replaced, also by nothing: a task whose annotations were deleted loses its rows
        run.replace_rows("human", new, "task_id", replacing=[int(t) for t in state["tasks"]])
        rk, pairs = human_pairs(run.read("human"))
        for name, frame in (("rankings", rk), ("pairs", pairs)):
            run.replace_rows(name, frame, "annotator", replacing=[schema.HUMAN])
    return PullResult(new.select("task_id", "annotator").unique().height, new.height, new["annotator"].n_unique(),
                      missing)


def human_pairs(human: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Mean human score per image and aspect (overall: minus the mean rank) -> rankings and pairs, annotator human."""
    scored = human.filter(pl.col("score").is_not_null()).group_by("prompt_id", "image_id", "aspect").agg(pl.col("score").mean())
    ranked = (human.filter(pl.col("rank").is_not_null()).group_by("prompt_id", "image_id", "aspect")
              .agg((-pl.col("rank").cast(pl.Float64).mean()).alias("score")))
    both = pl.concat([scored, ranked]).sort("prompt_id", "aspect", "image_id")
    rk, pairs = [], []
    for (pid, aspect), g in both.group_by(["prompt_id", "aspect"], maintain_order=True):
        ids, sc = g["image_id"].to_list(), g["score"].to_list()
        rk.append({"prompt_id": pid, "aspect": aspect, "annotator": schema.HUMAN, "image_ids": ids, "scores": sc,
                   "confidence": 1.0})
        pairs += ranking_pairs(pid, ids, sc, aspect, schema.HUMAN)
    return schema.frame("rankings", rk), schema.frame("pairs", pairs)

"""API image generators: an OpenAI-protocol ``images.generate`` endpoint beside diffusers pipelines.

VisionPrefer's and ShareGPT-4o-Image's image sets mixed open pipelines with
proprietary generators (DALL-E 3, GPT-4o's image model); a generation recipe may
name either kind, so one image set mixes them. An API generator goes through the
client layer (``vprefer.llm``) with annotation's guarantees:

* a request id is a content hash of (endpoint settings, prompt text, seed
  index), so the same image is never asked for twice, whichever process asks;
* the journal (``RUN/journal/generate-<generator>.jsonl``) records ``sent``
  before a request leaves, and ``done`` only after the image file is stored
  (content-addressed, atomic); the ``images`` row is folded from the journal,
  so ``kill -9`` anywhere loses no paid image and a rerun asks only for what is
  missing;
* ``--max-cost`` caps this run's total spend on API generators (the same send
  loop and budget rule as annotation: in-flight estimates are reserved);
  ``--dry-run`` prints the cost without sending.

The one exposure left: a request *in flight* when the process was killed was
generated (and billed) by the server, but the images API keeps no copy to fetch
back (chat completions have stored completions; images do not), so the rerun
sends it again. Their number is reported (``resent``), at most ``concurrency``
per crash.

Under ``accelerate launch`` each process sends its share of the prompts and
cannot see the others' reservations, so each gets an equal share of what is
left under the cap (``generate`` divides it).

Price: ``price_per_image`` per returned image (DALL-E 3: $0.04 standard 1024²),
plus token prices where the server bills tokens (gpt-image-1 returns ``usage``).
"""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass, field
from typing import Optional

import openai
from pydantic import BaseModel, ConfigDict, Field

from vprefer import ids, schema
from vprefer.errors import MissingError
from vprefer.images import BadImage, check_bytes
from vprefer.ingest import store_image
from vprefer.llm import Client, Ledger, Outcome, PermanentError, Report, ended, send_all
from vprefer.llm.settings import env_or, key_from_env, slug
from vprefer.store import Run


class _Prices(BaseModel):  # the client layer's price shape (token prices; images are priced per image)
    input_per_1m: float = 0.0
    output_per_1m: float = 0.0
    batch_discount: float = 1.0


class ImageAPISpec(BaseModel):
    """An OpenAI-protocol image endpoint. The API key is read from ``api_key_env`` only, never from the recipe."""
    model_config = ConfigDict(extra="forbid")
    model: str
    size: str = Field("1024x1024", pattern=r"^\d+x\d+$|^auto$")
    quality: Optional[str] = Field(None, description="standard | hd (DALL-E 3); low | medium | high (gpt-image-1)")
    style: Optional[str] = Field(None, description="vivid | natural (DALL-E 3 only)")
    response_format: Optional[str] = Field("b64_json", description="DALL-E 2/3 need b64_json; null for "
                                           "gpt-image-1, which always returns base64 and rejects the field")
    extra: dict = Field(default_factory=dict, description="other images.generate parameters, sent as given")
    price_per_image: float = Field(..., ge=0, description="USD per returned image")
    input_per_1m: float = Field(0.0, ge=0, description="USD per 1M input tokens, if the server bills tokens")
    output_per_1m: float = Field(0.0, ge=0, description="USD per 1M output tokens, if the server bills tokens")
    est_output_tokens: int = Field(0, ge=0, description="output tokens one image is expected to bill (estimates)")
    base_url: Optional[str] = None
    base_url_env: Optional[str] = Field(None, description="env var holding the base URL (wins over base_url)")
    api_key_env: str = "OPENAI_API_KEY"
    api_key_required: bool = True
    concurrency: int = Field(4, ge=1, le=1024)
    max_retries: int = Field(6, ge=0)
    timeout_s: float = Field(180.0, gt=0)
    backoff_base_s: float = Field(1.0, gt=0)
    backoff_max_s: float = Field(60.0, gt=0)


@dataclass
class Endpoint:
    """An :class:`ImageAPISpec` bound to its generator's name: what the client layer needs (ClientSettings)."""
    name: str
    spec: ImageAPISpec
    temperature: float = 0.0
    seed: None = None
    store_completions: bool = False

    def __getattr__(self, key):  # model, concurrency, retries, timeouts, api_key_env: the spec's
        return getattr(self.spec, key)

    @property
    def prices(self) -> _Prices:
        return _Prices(input_per_1m=self.spec.input_per_1m, output_per_1m=self.spec.output_per_1m)

    @property
    def annotator_id(self) -> str:
        return f"{self.name}:{self.spec.model}"

    @property
    def slug(self) -> str:
        return slug(self.annotator_id)

    def resolved_base_url(self) -> str | None:
        return env_or(self.spec.base_url_env, self.spec.base_url)

    def api_key(self) -> str:
        return key_from_env(self.spec.api_key_env, required=self.spec.api_key_required,
                            what=f"generator {self.name!r}")

    def resolved(self) -> dict:
        return {"name": self.name, **self.spec.model_dump()}

    def body(self, prompt: str) -> dict:
        s = self.spec
        b = {"model": s.model, "prompt": prompt, "n": 1, "size": s.size, **s.extra}
        b.update({k: v for k, v in (("quality", s.quality), ("style", s.style),
                                    ("response_format", s.response_format)) if v is not None})
        return b

    def request_id(self, prompt: str, seed: int) -> str:
        """Content hash of everything that decides the image (the name is not: renaming pays nothing twice)."""
        return ids.short_hash("images.generate", self.body(prompt), seed, n=24)

    def cost(self, images: int, tin: int, tout: int) -> float:
        s = self.spec
        return images * s.price_per_image + (tin * s.input_per_1m + tout * s.output_per_1m) / 1e6

    def estimate(self, prompt: str) -> float:
        return self.cost(1, len(prompt) // 4 + 1, self.spec.est_output_tokens)


@dataclass
class APIResult:
    todo: int = 0
    generated: int = 0
    errors: int = 0  # refused, or retries ran out: none is recorded, a rerun asks again
    resent: int = 0  # in flight when an earlier process died: generated again (the API keeps no copy)
    cost_usd: float = 0.0
    est_cost_usd: float = 0.0
    stopped_for_budget: bool = False
    messages: list[str] = field(default_factory=list)


def journal_name(ep: Endpoint) -> str:
    return ep.slug


def spent(run: Run, ep: Endpoint) -> float:
    """Everything this generator has paid on the run (its journal; images rows carry no cost)."""
    return Ledger(run, journal_name(ep), kind="generate").spent_usd


def fold(run: Run, ledger: Ledger, generator: str) -> int:
    """Add ``images`` rows for journalled images the table lacks (each file was stored before its record)."""
    have = {tuple(r) for r in run.read_or_empty("images").select("prompt_id", "generator", "seed").iter_rows()}
    rows = [{k: r[k] for k in ("image_id", "prompt_id", "uri", "seed", "width", "height")} | {"generator": generator}
            for r in ledger.answers() if r.get("status") == "ok" and (r["prompt_id"], generator, r["seed"]) not in have]
    missing = [r["uri"] for r in rows if not (run.path / r["uri"]).exists()]
    if missing:
        raise MissingError(f"{run.path}: journalled images are missing on disk ({', '.join(missing[:3])}); "
                           f"restore them or delete {ledger.path} to generate them again")
    if rows:
        run.append("images", schema.frame("images", rows))
    return len(rows)


def generate_api(run: Run, ep: Endpoint, todo: list[tuple[str, str, int]], *, budget: float | None = None,
                 dry_run: bool = False) -> APIResult:
    """``todo``: (prompt id, prompt, seed) not in the ``images`` table yet; ``budget``: USD this generator may
    still spend on the run, on top of what its journal holds."""
    ledger = Ledger(run, journal_name(ep), kind="generate")
    fold(run, ledger, ep.name)
    keyed = [(pid, text, seed, ep.request_id(text, seed)) for pid, text, seed in todo]
    keyed = [k for k in keyed if k[3] not in ledger.done]
    res = APIResult(todo=len(keyed), est_cost_usd=sum(ep.estimate(k[1]) for k in keyed))
    if dry_run or not keyed:
        return res
    ep.api_key()
    report = Report(planned=len(keyed), todo=len(keyed))
    in_flight_before = ledger.in_flight()
    res.resent = sum(1 for k in keyed if k[3] in in_flight_before)

    async def one(client: Client, item) -> Outcome:
        pid, text, seed, rid = item
        t0 = time.monotonic()
        await ledger.awrite({"event": "sent", "request_id": rid})
        try:
            r = await client.images(ep.body(text), rid)
            if not r.data or not r.data[0].b64_json:
                raise ValueError("the server returned no base64 image (set response_format: b64_json)")
            chk = check_bytes(base64.b64decode(r.data[0].b64_json), f"{ep.name} seed {seed}")
            iid, uri = await asyncio.to_thread(store_image, run, chk)  # the file is durable before the record
        except (PermanentError, ValueError, BadImage, openai.APIError) as e:  # APIError: stays pending for a rerun
            await ledger.awrite(ended(rid, e))
            return Outcome("pending" if isinstance(e, openai.APIError) else "error")
        u = r.usage
        tin, tout = (u.input_tokens or 0, u.output_tokens or 0) if u is not None else (0, 0)
        c = ep.cost(len(r.data), tin, tout)
        await ledger.awrite({"event": "done", "status": "ok", "request_id": rid, "prompt_id": pid, "seed": seed,
                             "image_id": iid, "uri": uri, "width": chk.width, "height": chk.height,
                             "input_tokens": tin, "output_tokens": tout, "cost_usd": c,
                             "revised_prompt": r.data[0].revised_prompt, "latency_s": time.monotonic() - t0})
        return Outcome("ok", tin, tout, c)

    async def go() -> None:
        async with Client(ep, report) as client:
            await send_all(keyed, lambda it: one(client, it), ledger=ledger, report=report,
                           concurrency=ep.spec.concurrency, estimate=lambda it: ep.estimate(it[1]),
                           budget=None if budget is None else ledger.spent_usd + budget)

    with ledger:
        try:
            asyncio.run(go())
        finally:
            fold(run, ledger, ep.name)
    res.generated, res.errors, res.cost_usd = report.ok, report.error + report.pending, report.cost_usd
    res.stopped_for_budget = report.stopped_for_budget
    return res

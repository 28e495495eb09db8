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
* ``--max-cost`` caps this run's total spend on API generators (the same engine,
  :func:`vprefer.llm.run_job`, and budget rule as annotation: in-flight estimates are reserved);
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

import base64
from dataclasses import dataclass, field
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field

from vprefer import ids, schema
from vprefer.errors import MissingError
from vprefer.images import BadImage, check_bytes
from vprefer.ingest import store_image
from vprefer.llm import ChatJob, Client, Ledger, PermanentError, run_job
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


@dataclass(frozen=True)
class Item:
    request_id: str
    prompt_id: str
    prompt: str
    seed: int


class ImagesJob(ChatJob[Item]):
    """One API generator's images on the client layer's engine: an item is (prompt, seed); a request is
    ``images.generate``; an answer is stored (content-addressed, atomic) before its ``done`` record; rows fold
    into ``images``. The images API has no Batch API and no stored completions: online only, and a request in
    flight at a crash is sent again (counted as ``resent``)."""

    kind, command = "generate", "generate (API)"
    bad_input = ()
    invalid_retries = 0  # an unusable image was billed: ended, not asked again in this run (a rerun asks)
    modes = ("online",)

    def __init__(self, run: Run, ep: Endpoint, todo: list[tuple[str, str, int]]):
        self.run, self.settings, self.name = run, ep, journal_name(ep)
        self.todo = [Item(ep.request_id(text, seed), pid, text, seed) for pid, text, seed in todo]

    def plan(self, run: Run, limit: int | None, *, dry_run: bool) -> list[Item]:
        return self.todo

    def body(self, it: Item) -> dict:
        return self.settings.body(it.prompt)

    async def call(self, client: Client, body: dict, rid: str):
        return await client.images(body, rid)

    def answer_of(self, resp):
        return resp, None

    def tokens(self, resp) -> tuple[int, int]:
        u = resp.usage
        return (u.input_tokens or 0, u.output_tokens or 0) if u is not None else (0, 0)

    def price(self, resp, tin: int, tout: int, *, batch: bool) -> float:
        return self.settings.cost(len(resp.data or []), tin, tout)

    def parse(self, it: Item, resp, finish_reason) -> dict:
        """Decode and store the image; a missing or broken image is a permanent error of this request."""
        try:
            if not resp.data or not resp.data[0].b64_json:
                raise ValueError("the server returned no base64 image (set response_format: b64_json)")
            chk = check_bytes(base64.b64decode(resp.data[0].b64_json), f"{self.settings.name} seed {it.seed}")
        except (ValueError, BadImage) as e:
            raise PermanentError(str(e)) from None
        iid, uri = store_image(self.run, chk)  # the file is durable before the record
        return {"image_id": iid, "uri": uri, "width": chk.width, "height": chk.height,
                "revised_prompt": resp.data[0].revised_prompt}

    def record(self, it: Item, result, *, status, raw, usage, cost_usd, latency_s, attempts, error) -> dict:
        return {"event": "done", "status": status, "request_id": it.request_id, "prompt_id": it.prompt_id,
                "seed": it.seed, **(result or {}), "input_tokens": usage[0], "output_tokens": usage[1],
                "cost_usd": cost_usd, "latency_s": latency_s, **({"error": error} if error else {})}

    def fold(self, run: Run, ledger: Ledger) -> int:
        return fold(run, ledger, self.settings.name)

    def estimate(self, it: Item, ledger: Ledger, *, batch: bool, upper: bool = False) -> float:
        return self.settings.estimate(it.prompt)

    def manifest(self) -> dict:
        return {"generator": self.settings.resolved()}


def generate_api(run: Run, ep: Endpoint, todo: list[tuple[str, str, int]], *, budget: float | None = None,
                 dry_run: bool = False) -> APIResult:
    """``todo``: (prompt id, prompt, seed) not in the ``images`` table yet; ``budget``: USD this generator may
    still spend on the run, on top of what its journal holds (under ``accelerate launch`` each process's share)."""
    job = ImagesJob(run, ep, todo)
    before = Ledger(run, job.name, kind=job.kind)
    resent = sum(1 for it in job.todo if it.request_id in before.in_flight())
    cap = None if budget is None else before.spent_usd + budget
    r = run_job(run, job, mode="online", max_cost=cap, dry_run=dry_run)
    res = APIResult(todo=r.todo, est_cost_usd=r.est_cost_usd)
    if dry_run or not r.todo:
        return res
    res.generated, res.errors, res.cost_usd = r.ok, r.error + r.pending + r.invalid, r.cost_usd
    res.stopped_for_budget, res.resent = r.stopped_for_budget, resent
    return res

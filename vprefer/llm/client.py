"""Talking to an OpenAI-compatible server: one retry policy for every job.

Retries are ours, not the client's (``max_retries=0``), so that every attempt
is visible and the policy is explicit: 429, 5xx, timeouts and connection
errors are retried with exponential backoff and full jitter, honouring
``Retry-After``; 401/403/404 stop the whole run (a wrong key or model name will
not fix itself); any other 4xx is a :class:`PermanentError` for that request.
"""

from __future__ import annotations

import asyncio
import random
import time

import openai
import orjson
from openai.types.chat import ChatCompletion
from openai.types import ImagesResponse

from vprefer.errors import ServiceError
from vprefer.llm.pool import SHARD, Pool, Server, label_for
from vprefer.llm.report import Report
from vprefer.llm.settings import ClientSettings
from vprefer.secrets import redact_url


class FatalAPIError(ServiceError):
    """The server refuses the whole run (bad key, unknown model): stop, lose nothing, say why.

    ``request_id``: the request it was raised for, so the send loop journals that request's end (a refusal
    leaves nothing running on the server: without that line the corrected rerun waited ``timeout_s`` for an
    answer that never comes)."""

    in_flight = False  # whether the server may still be working on the request (see :func:`ended`)

    def __init__(self, message: str, request_id: str | None = None):
        super().__init__(message)
        self.request_id = request_id


class UnreachableError(FatalAPIError):
    """Connections to the server failed through every retry: the run stops (sending the rest would fail the
    same way) and says which URL, so ``annotate && pairs`` does not carry on as if it had worked."""

    def __init__(self, message: str, request_id: str | None = None, *, in_flight: bool = False):
        super().__init__(message, request_id)
        self.in_flight = in_flight


class PermanentError(Exception):
    """This request will never succeed as sent (a 4xx other than auth/not-found): record it, move on."""


def retry_after(exc: openai.APIStatusError) -> float | None:
    h = exc.response.headers if exc.response is not None else {}
    for key, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        try:
            if h.get(key) is not None:
                return float(h[key]) * scale
        except ValueError:
            pass
    return None


def reached(e: BaseException) -> bool:
    """Whether a failed connection may have delivered the request: not when the connection was never made
    (refused, no route, DNS, a connect timeout); a read timeout or a dropped connection may have."""
    cause = e.__cause__
    # by name: the openai client may ship its own copy of httpx (``httpx2`` here), whose classes are not httpx's
    return not any(c.__name__ in ("ConnectError", "ConnectTimeout") for c in type(cause).__mro__) if cause else True


def backoff(attempt: int, settings: ClientSettings, hint: float | None) -> float:
    if hint is not None:
        return min(settings.backoff_max_s, hint) + random.uniform(0, 0.1 * settings.backoff_base_s)
    return random.uniform(0, min(settings.backoff_max_s, settings.backoff_base_s * 2 ** attempt))


def short_error(e: Exception) -> str:
    """Server messages can be long (and echo the request); one line of them is enough to act on."""
    msg = getattr(e, "message", None) or str(e)
    return msg[:300]


def ended(rid: str, e: BaseException) -> dict:
    """The journal line for an attempt that ended without an answer. ``in_flight`` says whether the server may
    still be working on it: only after a timeout or a dropped connection; a refusal (429/5xx after every
    retry, a 4xx) or an unusable answer leaves nothing running there (see :mod:`vprefer.llm.journal`)."""
    if isinstance(e, openai.APIError):  # retries exhausted
        return {"event": "transient", "request_id": rid, "error": short_error(e),
                "in_flight": isinstance(e, openai.APIConnectionError) and reached(e)}
    if isinstance(e, FatalAPIError):  # refused (401/403/404), or the server could not be reached at all
        return {"event": "transient", "request_id": rid, "error": str(e)[:300], "in_flight": e.in_flight}
    return {"event": "error", "request_id": rid, "error": str(e)[:300], "in_flight": False}


class Client:
    """An async chat-completions client with the module's retry policy; retries are counted on ``report``.

    Settings with several base URLs (``resolved_base_urls()``) make a :class:`~vprefer.llm.pool.Pool`:
    every attempt goes to the least-loaded healthy server, and a retry after a server's failure goes to
    another server at once when one is healthy (no backoff: the failure was that server's).
    """

    def __init__(self, settings: ClientSettings, report: Report | None = None):
        self.settings, self.report = settings, report
        urls = base_urls(settings)
        key = settings.api_key()
        shards = max(1, -(-settings.concurrency // SHARD))
        self.pool = Pool([Server(label_for(u, i), [openai.AsyncOpenAI(api_key=key, base_url=u, max_retries=0,
                                                                      timeout=settings.timeout_s)
                                                   for _ in range(shards)])
                          for i, u in enumerate(urls)],
                         cooldown_base_s=settings.backoff_base_s, cooldown_max_s=settings.backoff_max_s)
        if report is not None and len(urls) > 1:
            report.servers = self.pool.stats
        self.openai = self.pool.servers[0].clients[0]

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.pool.close()

    async def chat(self, body: dict, rid: str) -> "Completion":
        """One chat completion; raises FatalAPIError, PermanentError, or the last transient error.

        The answer is read as raw bytes and decoded with orjson into a :class:`Completion` (ChatCompletion's
        fields, read lazily): building the pydantic ChatCompletion cost ~1.7 ms of CPU per request (profiled).
        """
        raw = await self.post("/chat/completions", body, rid, bytes)
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise PermanentError(f"the server's answer is not JSON: {raw[:120]!r}") from None
        if not isinstance(data, dict):
            raise PermanentError(f"the server's answer is not a JSON object: {raw[:120]!r}")
        return Completion(data)

    async def images(self, body: dict, rid: str) -> ImagesResponse:
        """One ``images.generate`` call (API image generators), under the same retry policy."""
        return await self.post("/images/generations", body, rid, ImagesResponse)

    async def post(self, path: str, body: dict, rid: str, cast_to: type):
        s, pool = self.settings, self.pool
        for attempt in range(s.max_retries + 1):
            last = attempt == s.max_retries
            server = pool.pick()
            pool.begin(server)
            hint = None
            try:
                # post() is what chat.completions.create() calls after a recursive TypedDict transform of the
                # params; our body is already wire-ready JSON, and that transform cost more CPU than everything
                # else per request (profiled).
                resp = await server.client.post(path, cast_to=cast_to, body=body,
                                                options={"headers": {"X-Vprefer-Request-Id": rid}})
                pool.succeeded(server)
                return resp
            except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as e:
                pool.failed(server, transient=False)
                raise FatalAPIError(f"{s.name}: server {server.label} refused the request ({e.status_code}: "
                                    f"{short_error(e)}); check {s.api_key_env}, the base URL and the model name",
                                    rid) from None
            except (openai.RateLimitError, openai.InternalServerError) as e:
                hint = retry_after(e)
                pool.failed(server, hint)
                if last:
                    raise
            except openai.APITimeoutError as e:  # the server may be slow, not gone: this request stays pending
                pool.failed(server)
                if last and reached(e):
                    raise
                if last:
                    raise self._unreachable(server, e, rid) from None
            except openai.APIConnectionError as e:
                pool.failed(server)
                if last:
                    raise self._unreachable(server, e, rid) from None
            except openai.APIStatusError as e:
                if e.status_code == 409 or e.status_code >= 500:
                    hint = retry_after(e)
                    pool.failed(server, hint)
                    if last:
                        raise
                else:
                    pool.failed(server, transient=False)
                    raise PermanentError(f"HTTP {e.status_code}: {short_error(e)}") from None
            except BaseException:
                pool.failed(server, transient=False)
                raise
            if self.report is not None:
                self.report.retries += 1
            if not pool.healthy_besides(server):  # another server is up: retry there at once
                await asyncio.sleep(backoff(attempt, s, hint))
        raise AssertionError("unreachable")

    def _unreachable(self, server: Server, e: BaseException, rid: str) -> UnreachableError:
        why = str(e.__cause__ or e).strip() or type(e.__cause__ or e).__name__
        return UnreachableError(f"{self.settings.name}: cannot reach {redact_url(str(server.client.base_url))} "
                                f"({why[:120]}) after {self.settings.max_retries + 1} attempts; check the base "
                                "URL and that the server is up", rid, in_flight=reached(e))

    async def recover(self, rid: str, sent_at: float | None = None) -> ChatCompletion | None:
        """The completion stored for a request that was in flight when the last process died, if any
        (needs ``store_completions``: the request carried ``metadata.vprefer_request_id``). In a pool the
        answer is stored on whichever server gave it, so each is asked.

        A request sent less than ``timeout_s`` before (``sent_at``, wall clock) may still be running on the
        server: its answer is stored only when it finishes. Sending it again now would pay twice, so the
        lookup is repeated (backing off to 2 s) until it is found or ``sent_at + timeout_s`` has passed —
        after that the server has given up on it too. A resume long after the crash does not wait."""
        deadline = (sent_at or 0.0) + self.settings.timeout_s
        if self.report is not None:
            self.report.recovering += 1  # shown in the progress line: the wait can last up to timeout_s
        try:
            return await self._recover(rid, deadline)
        finally:
            if self.report is not None:
                self.report.recovering -= 1

    async def _recover(self, rid: str, deadline: float) -> ChatCompletion | None:
        pause = 0.1
        while True:
            for server in self.pool.servers:
                try:
                    page = await server.client.chat.completions.list(metadata={"vprefer_request_id": rid})
                except openai.APIError:
                    continue
                if page.data:
                    if self.report is not None:
                        self.report.recovered += 1
                    return page.data[0]
            left = deadline - time.time()
            if left <= 0:
                return None
            await asyncio.sleep(min(pause, left))
            pause = min(2.0, pause * 2)


def base_urls(settings: ClientSettings) -> list[str | None]:
    """The servers to send to: the settings' pool (``resolved_base_urls()``) or their one base URL."""
    many = getattr(settings, "resolved_base_urls", None)
    urls = list(many()) if many is not None else []
    return urls or [settings.resolved_base_url()]


class Completion:
    """A decoded JSON object read like the openai model it is (``resp.choices[0].message.content``,
    ``resp.usage.prompt_tokens``); absent fields read ``None``, as the model's optional fields do."""

    __slots__ = ("_d",)

    def __init__(self, data: dict):
        self._d = data

    def __getattr__(self, key: str):
        if key.startswith("__") or key == "_d":  # copy/pickle probes, and before __init__ ran
            raise AttributeError(key)
        return _wrap(self._d.get(key))

    def model_dump(self) -> dict:
        return self._d


def _wrap(v):
    if isinstance(v, dict):
        return Completion(v)
    if isinstance(v, list):
        return [_wrap(x) for x in v]
    return v


def usage(resp) -> tuple[int, int]:
    """(input, output) tokens a completion was billed for; servers may leave usage out."""
    u = resp.usage
    if u is None:
        return 0, 0
    return u.prompt_tokens or 0, u.completion_tokens or 0


def sync_client(settings: ClientSettings) -> openai.OpenAI:
    """For the Batch API's few, cheap, idempotent calls the openai client's own retries are enough."""
    return openai.OpenAI(api_key=settings.api_key(), base_url=base_urls(settings)[0],  # a pool: its first server
                         max_retries=settings.max_retries, timeout=settings.timeout_s)

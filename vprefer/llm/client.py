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

import openai
from openai.types.chat import ChatCompletion

from vprefer.errors import ServiceError
from vprefer.llm.report import Report
from vprefer.llm.settings import ClientSettings


class FatalAPIError(ServiceError):
    """The server refuses the whole run (bad key, unknown model): stop, lose nothing, say why."""


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


def backoff(attempt: int, settings: ClientSettings, hint: float | None) -> float:
    if hint is not None:
        return min(settings.backoff_max_s, hint) + random.uniform(0, 0.1 * settings.backoff_base_s)
    return random.uniform(0, min(settings.backoff_max_s, settings.backoff_base_s * 2 ** attempt))


def short_error(e: Exception) -> str:
    """Server messages can be long (and echo the request); one line of them is enough to act on."""
    msg = getattr(e, "message", None) or str(e)
    return msg[:300]


class Client:
    """An async chat-completions client with the module's retry policy; retries are counted on ``report``."""

    def __init__(self, settings: ClientSettings, report: Report | None = None):
        self.settings, self.report = settings, report
        self.openai = openai.AsyncOpenAI(api_key=settings.api_key(), base_url=settings.resolved_base_url(),
                                         max_retries=0, timeout=settings.timeout_s)

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.openai.close()

    async def chat(self, body: dict, rid: str) -> ChatCompletion:
        """One chat completion; raises FatalAPIError, PermanentError, or the last transient error."""
        s = self.settings
        for attempt in range(s.max_retries + 1):
            last = attempt == s.max_retries
            try:
                # post() is what chat.completions.create() calls after a recursive TypedDict transform of the
                # params; our body is already wire-ready JSON, and that transform cost more CPU than everything
                # else per request (profiled).
                return await self.openai.post("/chat/completions", cast_to=ChatCompletion, body=body,
                                              options={"headers": {"X-Vprefer-Request-Id": rid}})
            except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as e:
                raise FatalAPIError(f"{s.name}: server refused the request ({e.status_code}: {short_error(e)}); "
                                    f"check {s.api_key_env}, the base URL and the model name") from None
            except (openai.RateLimitError, openai.InternalServerError) as e:
                if last:
                    raise
                delay = backoff(attempt, s, retry_after(e))
            except (openai.APITimeoutError, openai.APIConnectionError):
                if last:
                    raise
                delay = backoff(attempt, s, None)
            except openai.APIStatusError as e:
                if e.status_code == 409 or e.status_code >= 500:
                    if last:
                        raise
                    delay = backoff(attempt, s, retry_after(e))
                else:
                    raise PermanentError(f"HTTP {e.status_code}: {short_error(e)}") from None
            if self.report is not None:
                self.report.retries += 1
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def recover(self, rid: str) -> ChatCompletion | None:
        """The completion stored for a request that was in flight when the last process died, if any
        (needs ``store_completions``: the request carried ``metadata.vprefer_request_id``)."""
        try:
            page = await self.openai.chat.completions.list(metadata={"vprefer_request_id": rid})
        except openai.APIError:
            return None
        resp = page.data[0] if page.data else None
        if resp is not None and self.report is not None:
            self.report.recovered += 1
        return resp


def usage(resp) -> tuple[int, int]:
    """(input, output) tokens a completion was billed for; servers may leave usage out."""
    u = resp.usage
    if u is None:
        return 0, 0
    return u.prompt_tokens or 0, u.completion_tokens or 0


def sync_client(settings: ClientSettings) -> openai.OpenAI:
    """For the Batch API's few, cheap, idempotent calls the openai client's own retries are enough."""
    return openai.OpenAI(api_key=settings.api_key(), base_url=settings.resolved_base_url(),
                         max_retries=settings.max_retries, timeout=settings.timeout_s)

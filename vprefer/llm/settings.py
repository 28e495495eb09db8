"""What the client layer needs to know about a model endpoint, and what a request costs.

A structural type rather than a class: the settings come from an annotator
preset (``annotators/*.yaml``, defined in ``vprefer.annotate``), but stages that
run before annotation (prompt upsampling) use the same presets and must not
import ``annotate``. Anything with these attributes can be sent through
``vprefer.llm``; everything else in a preset (rubric, permutations, image
detail) is about *what* to ask and stays with the job that asks it.
"""

from __future__ import annotations

import os
import re
from typing import Protocol

from vprefer.recipes import RecipeError


class Prices(Protocol):
    input_per_1m: float
    output_per_1m: float
    batch_discount: float


class BatchLimits(Protocol):
    max_requests_per_file: int
    max_bytes_per_file: int
    poll_interval_s: float
    completion_window: str


class ClientSettings(Protocol):
    name: str
    model: str
    concurrency: int
    max_retries: int
    timeout_s: float
    backoff_base_s: float
    backoff_max_s: float
    temperature: float
    seed: int | None
    store_completions: bool
    api_key_env: str
    prices: Prices
    batch: BatchLimits

    @property
    def annotator_id(self) -> str: ...

    @property
    def slug(self) -> str: ...

    def resolved_base_url(self) -> str | None: ...

    def api_key(self) -> str: ...

    def resolved(self) -> dict: ...


def slug(annotator_id: str) -> str:
    """``annotator_id`` made safe for a file name (journals, batch state)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", annotator_id)


def env_or(env: str | None, value: str | None) -> str | None:
    """The variable ``env`` when it is set and not empty, else ``value`` (base URLs a deployment overrides)."""
    return os.environ[env] if env and os.environ.get(env) else value


def key_from_env(env: str, *, required: bool, what: str) -> str:
    """The API key, only ever from the environment; a clear error when it is needed and missing."""
    key = os.environ.get(env)
    if key:
        return key
    if required:
        raise RecipeError(f"{what} needs an API key: set the environment variable {env} "
                          "(keys are never read from files or flags)")
    return "not-needed"


def cost(settings: ClientSettings, input_tokens: int, output_tokens: int, *, batch: bool) -> float:
    """USD for one request at the preset's prices; batch answers are billed at the batch discount."""
    p = settings.prices
    c = (input_tokens * p.input_per_1m + output_tokens * p.output_per_1m) / 1e6
    return c * (p.batch_discount if batch else 1.0)

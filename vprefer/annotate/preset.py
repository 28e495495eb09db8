"""Annotator presets: which server, which model, how hard to push it, what it costs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from vprefer.llm.settings import env_or, key_from_env, slug
from vprefer.recipes import Recipe, find_asset


class Prices(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input_per_1m: float = Field(0.0, ge=0, description="USD per 1M input tokens (online price)")
    output_per_1m: float = Field(0.0, ge=0, description="USD per 1M output tokens (online price)")
    batch_discount: float = Field(0.5, gt=0, le=1, description="Batch API price multiplier (OpenAI: half price)")


class BatchSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_requests_per_file: int = Field(50_000, ge=1, le=50_000)
    max_bytes_per_file: int = Field(200_000_000, ge=1_000, le=200_000_000)
    poll_interval_s: float = Field(30.0, gt=0)
    completion_window: str = "24h"


class AnnotatorPreset(Recipe):
    name: str
    model: str
    base_url: Optional[str] = None
    base_url_env: Optional[str] = Field(None, description="env var holding the base URL (wins over base_url)")
    base_urls: list[str] = Field(default_factory=list, description="a pool of interchangeable servers (replicas): "
                                 "least-outstanding-requests routing, failing servers taken out and retried later; "
                                 "wins over base_url")
    base_urls_env: Optional[str] = Field(None, description="env var holding the pool's URLs, comma-separated "
                                         "(wins over base_urls)")
    mode: Literal["online", "batch", "offline"] = "online"  # offline: chunk files for `vllm run-batch`
    api_key_env: str = "OPENAI_API_KEY"
    api_key_required: bool = True
    concurrency: int = Field(16, ge=1, le=4096)
    max_retries: int = Field(6, ge=0, description="retries on 429/5xx/timeouts/connection errors")
    invalid_retries: int = Field(2, ge=0, description="re-asks after an answer fails validation")
    timeout_s: float = Field(120.0, gt=0)
    backoff_base_s: float = Field(1.0, gt=0)
    backoff_max_s: float = Field(60.0, gt=0)
    image_detail: Literal["low", "high", "auto"] = "low"
    image_max_side: Optional[int] = Field(None, ge=64, description="default: 512 for low, 768 for high/auto")
    temperature: float = 0.0
    seed: Optional[int] = 0
    max_tokens: int = Field(2048, ge=16)
    structured_output: bool = True
    store_completions: bool = Field(False, description="send store+metadata so answers to requests in flight at "
                                                       "a crash can be fetched back instead of paid again")
    rubric: str = "visionprefer-v1"
    permutations: int = Field(1, ge=1, le=24)
    order_design: Optional[Literal["balanced", "random"]] = Field(
        None, description="how the permutations' orders are chosen (vprefer/annotate/orders.py); default: "
                          "balanced for a run's first requests, else the design its requests were planned with")
    output_tokens_per_image: Optional[int] = Field(None, ge=1, description="override the output estimate (default: "
                                                   "this run's measured answers, else the rubric's answer shape)")
    prices: Prices = Prices()
    batch: BatchSettings = BatchSettings()

    @classmethod
    def load(cls, name_or_path: str | Path, **overrides) -> "AnnotatorPreset":
        return cls.from_yaml(find_asset(name_or_path, "annotators", what="annotator preset"), **overrides)

    @property
    def annotator_id(self) -> str:
        """What annotation rows record: preset name and model (never the URL, which may embed a token)."""
        return f"{self.name}:{self.model}"

    @property
    def slug(self) -> str:
        return slug(self.annotator_id)

    @property
    def max_side(self) -> int:
        return self.image_max_side or (512 if self.image_detail == "low" else 768)

    def resolved_base_url(self) -> str | None:
        return env_or(self.base_url_env, self.base_url)

    def resolved_base_urls(self) -> list[str]:
        """The pool (empty: the one server of :meth:`resolved_base_url`)."""
        if self.base_urls_env and os.environ.get(self.base_urls_env):
            return [u.strip() for u in os.environ[self.base_urls_env].split(",") if u.strip()]
        return list(self.base_urls)

    def api_key(self) -> str:
        return key_from_env(self.api_key_env, required=self.api_key_required, what=f"annotator {self.name!r}")

"""Rewards as a list: a recipe names several scorers, each becomes one reward per image, combined per group.

A recipe's ``rewards:`` list holds :class:`RewardSpec` entries (a bare string is ``{source: ...}``)::

    rewards:
      - {source: runs/vp-score, aspects: {overall: 1.0, aesthetics: 0.5}, weight: 1.0}   # a VP-Score folder
      - {source: mypkg.rewards:ocr_reward, weight: 0.5}        # any callable fn(prompts, pixels) -> (B,)
      - {source: "http://10.0.0.5:8123", timeout: 120}         # a reward server (vprefer serve-reward, ...)

``load_rewards(specs)`` -> :class:`LoadedReward` list; ``score_rewards(rewards, prompts, pixels)`` ->
``{name: (B,) tensor}`` for ``vprefer.rl.grpo_math.combine_rewards(scores, reward_weights(rewards), groups)``.
"""

from __future__ import annotations

import base64
import importlib
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field

from vprefer.errors import InputError, ServiceError
from vprefer.recipes import Recipe, RecipeError
from vprefer.secrets import redact_url

_CALLABLE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


class RewardSpec(BaseModel):
    """One reward of the list. ``source``: a VP-Score folder or hub id, ``module:function`` (or a class with
    ``score_pixels``, built without arguments), or ``http(s)://host:port`` (the protocol of
    ``vprefer.rl.reward_server``)."""

    model_config = ConfigDict(extra="forbid")
    source: str
    name: str | None = Field(None, description="label in logs and in combine_rewards; default from the source")
    weight: float = Field(1.0, description="weight of this reward's group advantage in combine_rewards")
    aspects: dict[str, float] | None = Field(None, description="VP-Score aspects (or a server's score names) "
                                             "and their weights; default {overall: 1} / the server's reward")
    timeout: float = Field(60.0, gt=0, description="remote: seconds per request")
    retries: int = Field(2, ge=0, description="remote: tries after the first on a connection error or 5xx")
    batch_size: int = Field(32, ge=1, description="images per request / per scoring call")

    @property
    def kind(self) -> str:
        if self.source.startswith(("http://", "https://")):
            return "http"
        if _CALLABLE.fullmatch(self.source) and not Path(self.source).exists():
            return "python"
        return "vpscore"

    def label(self) -> str:
        if self.name:
            return self.name
        if self.kind == "http":
            return "remote"
        if self.kind == "python":
            return self.source.rsplit(":", 1)[1]
        return "vpscore"


class _RewardList(Recipe):
    rewards: list[RewardSpec]


def reward_specs(entries: Sequence[RewardSpec | str | Mapping[str, Any]], source: str = "rewards") -> list[RewardSpec]:
    """A recipe's ``rewards:`` entries, validated (a bad key is one line naming it); names must be unique."""
    data = [{"source": e} if isinstance(e, str) else e.model_dump() if isinstance(e, RewardSpec) else dict(e)
            for e in entries]
    specs = _RewardList.validated({"rewards": data}, source).rewards
    if not specs:
        raise InputError(f"{source}: the rewards list is empty")
    names = [s.label() for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(f"{source}: two rewards are named {dup}: give each a distinct `name:`")
    return specs


@dataclass
class LoadedReward:
    """One reward ready to score: ``self(prompts, pixels)`` -> (B,) float tensor on the CPU, no gradient."""

    name: str
    weight: float
    fn: Callable[[list[str], torch.Tensor], torch.Tensor]
    spec: RewardSpec | None = None

    def __call__(self, prompts: Sequence[str], pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            r = self.fn(list(prompts), pixels)
        r = torch.as_tensor(r, dtype=torch.float32).detach().cpu().reshape(-1)
        if r.numel() != pixels.shape[0]:
            raise InputError(f"reward {self.name} returned {r.numel()} scores for {pixels.shape[0]} images")
        return r


def _weighted(scores: Mapping[str, Any], weights: Mapping[str, float], what: str) -> torch.Tensor:
    missing = [a for a in weights if a not in scores]
    if missing:
        raise InputError(f"{what} has no {missing}; it gives {sorted(scores)}")
    w = sum(abs(float(x)) for x in weights.values()) or 1.0
    return sum(float(weights[a]) * torch.as_tensor(scores[a], dtype=torch.float32) for a in weights) / w


def _score_pixels_fn(obj, aspects: Mapping[str, float] | None, batch_size: int):
    names = list(obj.aspects)
    weights = dict(aspects or ({"overall": 1.0} if "overall" in names else {a: 1.0 for a in names}))
    unknown = [a for a in weights if a not in names]
    if unknown:
        raise InputError(f"aspects {unknown} are not among the reward's aspects {names}")
    keys = list(weights)

    def fn(prompts, pixels):
        dev = getattr(obj, "device", pixels.device)
        cols = torch.cat([obj.score_pixels(prompts[i:i + batch_size], pixels[i:i + batch_size].to(dev), aspects=keys)
                          .float().cpu() for i in range(0, len(prompts), batch_size)])
        return _weighted({a: cols[:, k] for k, a in enumerate(keys)}, weights, "the reward")
    return fn


def _python_fn(spec: RewardSpec):
    module, attr = spec.source.rsplit(":", 1)
    try:
        obj = getattr(importlib.import_module(module), attr)
    except ModuleNotFoundError as e:
        raise InputError(f"reward {spec.source}: cannot import module {e.name!r}") from None
    except AttributeError:
        raise InputError(f"reward {spec.source}: module {module} has no {attr!r}") from None
    if isinstance(obj, type):
        obj = obj()
    if hasattr(obj, "score_pixels") and hasattr(obj, "aspects"):
        return _score_pixels_fn(obj, spec.aspects, spec.batch_size)
    if not callable(obj):
        raise InputError(f"reward {spec.source} is not callable")

    def fn(prompts, pixels):
        out = obj(prompts, pixels)
        if not isinstance(out, Mapping):
            return out
        weights = spec.aspects or ({next(iter(out)): 1.0} if len(out) == 1 else None)
        if weights is None:
            raise InputError(f"reward {spec.source} returns several scores {sorted(out)}: choose with `aspects:`")
        return _weighted(out, weights, f"reward {spec.source}")
    return fn


def load_reward_spec(spec: RewardSpec) -> LoadedReward:
    if spec.kind == "http":
        remote = RemoteReward(spec.source, timeout=spec.timeout, retries=spec.retries, batch_size=spec.batch_size)
        weights = dict(spec.aspects or {"reward": 1.0})
        fn = lambda prompts, pixels: _weighted(remote.score(prompts, pixels), weights, f"reward server {remote}")  # noqa: E731
    elif spec.kind == "python":
        fn = _python_fn(spec)
    else:
        fn = _score_pixels_fn(load_reward(spec.source), spec.aspects, spec.batch_size)
    return LoadedReward(spec.label(), spec.weight, fn, spec)


def load_reward(spec) -> object | None:
    """A reward to evaluate or to train ReFL on: a VP-Score folder/hub id, any object with ``score_pixels`` and
    ``aspects``, or (scored only, no gradient) ``http(s)://`` / ``module:function`` as in a ``rewards:`` list,
    so a judge behind ``vprefer serve-reward`` can be the held-out reward that watches for reward hacking."""
    if spec is None:
        return None
    if hasattr(spec, "score_pixels"):
        if isinstance(spec, torch.nn.Module):  # a reward passed as an object is frozen too: no stray grads
            spec.requires_grad_(False).eval()
        return spec
    if scored_only(spec):
        return ScoreOnlyReward(load_reward_spec(RewardSpec(source=spec)))
    from vprefer.reward import VPScore

    rm = VPScore.from_pretrained(spec)
    rm.requires_grad_(False)
    return rm


def scored_only(spec) -> bool:
    """Whether a reward given by name is one that scores without a gradient (``http(s)://``, ``module:function``):
    fine for GRPO and for watching, not for ReFL."""
    return isinstance(spec, str) and RewardSpec(source=spec).kind != "vpscore"


class ScoreOnlyReward:
    """A list reward seen through the ``score_pixels`` interface (one aspect, ``reward``)."""

    aspects = ["reward"]

    def __init__(self, reward: "LoadedReward"):
        self.reward = reward

    def score_pixels(self, prompts, pixels, aspects=None, normalize=True) -> torch.Tensor:
        return self.reward(prompts, pixels).to(pixels.device)[:, None]


def weighted_reward(reward, prompts: Sequence[str], pixels: torch.Tensor, weights: dict[str, float]) -> torch.Tensor:
    """``reward``'s aspects present in ``weights``, weighted and normalised by the weights' absolute sum."""
    aspects = [a for a in weights if a in reward.aspects]
    if not aspects:
        raise RecipeError(f"reward_aspects {list(weights)} match none of the reward's aspects {reward.aspects}")
    r = reward.score_pixels(list(prompts), pixels, aspects=aspects)
    w = torch.tensor([weights[a] for a in aspects], device=r.device, dtype=r.dtype)
    return (r * w).sum(1) / w.abs().sum()


def load_rewards(entries: Sequence[RewardSpec | str | Mapping[str, Any]]) -> list[LoadedReward]:
    return [load_reward_spec(s) for s in reward_specs(entries)]


def score_rewards(rewards: Sequence[LoadedReward], prompts: Sequence[str], pixels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every reward of the list on one batch -> ``{name: (B,) tensor}`` (CPU, float32)."""
    return {r.name: r(prompts, pixels) for r in rewards}


def reward_weights(rewards: Sequence[LoadedReward]) -> dict[str, float]:
    return {r.name: r.weight for r in rewards}


# ---------------------------------------------------------------------------------------------- the client
class RemoteReward:
    """Client of a reward server (``vprefer serve-reward`` or any server speaking its protocol).

    ``score(prompts, pixels)`` sends ``batch_size`` images a request as PNGs and returns ``{name: (B,)}``.
    A connection error, timeout or 5xx is retried ``retries`` times (0.5 s, 1 s, ... apart), then raises one
    :class:`ServiceError` line; a 4xx is not retried. ``user:token@`` in the URL is sent as HTTP basic auth and
    query parameters are kept; neither is ever printed (messages show :func:`redact_url` of the URL).
    """

    def __init__(self, url: str, *, timeout: float = 60.0, retries: int = 2, batch_size: int = 32):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError(f"reward server URL must be http(s)://host:port; got {redact_url(url)!r}")
        self.headers = {"Content-Type": "application/json"}
        if parts.username is not None:
            cred = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
            self.headers["Authorization"] = "Basic " + base64.b64encode(cred.encode()).decode()
        netloc = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
        base = parts._replace(netloc=netloc, path=parts.path.rstrip("/"))
        self._score_url = urllib.parse.urlunsplit(base._replace(path=base.path + "/score"))
        self.shown = redact_url(urllib.parse.urlunsplit(parts._replace(path=parts.path.rstrip("/"))))
        self.timeout, self.retries, self.batch_size = timeout, retries, batch_size

    def __repr__(self) -> str:
        return self.shown

    def _post(self, body: bytes) -> dict:
        why = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(0.5 * 2 ** (attempt - 1))
            req = urllib.request.Request(self._score_url, data=body, headers=self.headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as e:
                try:
                    detail = json.loads(e.read()).get("error", "")
                except Exception:
                    detail = ""
                why = f"HTTP {e.code}" + (f": {detail}" if detail else "")
                if e.code < 500:
                    raise ServiceError(f"reward server {self.shown} refused the request ({why})") from None
            except (urllib.error.URLError, OSError) as e:  # refused, unreachable, timed out, reset
                why = str(getattr(e, "reason", e))
            except json.JSONDecodeError:
                raise ServiceError(f"reward server {self.shown} answered something that is not JSON") from None
        raise ServiceError(f"reward server {self.shown} unreachable after {self.retries + 1} tries ({why}); "
                           "is `vprefer serve-reward` running there?")

    def score(self, prompts: Sequence[str], pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        from vprefer.rl.reward_server import encode_png

        prompts = list(prompts)
        if len(prompts) != pixels.shape[0]:
            raise InputError(f"{len(prompts)} prompts for {pixels.shape[0]} images")
        parts: dict[str, list[float]] = {}
        for lo in range(0, len(prompts), self.batch_size):
            chunk = prompts[lo:lo + self.batch_size]
            body = json.dumps({"prompts": chunk, "images": [encode_png(p) for p in pixels[lo:lo + self.batch_size]]})
            ans = self._post(body.encode())
            scores = ans.get("scores") if isinstance(ans, dict) else None
            if not isinstance(scores, dict) or any(not isinstance(v, list) or len(v) != len(chunk)
                                                   for v in scores.values()):
                raise ServiceError(f"reward server {self.shown} answered without {len(chunk)} scores per name")
            for k, v in scores.items():
                parts.setdefault(k, []).extend(v)
        return {k: torch.tensor(v, dtype=torch.float32) for k, v in parts.items()}

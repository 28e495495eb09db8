"""Stable content-hash ids, so that re-runs and separate runs join cleanly."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ``json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)`` builds this encoder on every call;
# one shared encoder gives the same bytes (ids never change) at a fraction of the cost (planning hashes
# every request id).
_ENCODER = json.JSONEncoder(sort_keys=True, ensure_ascii=False, default=str)


def short_hash(*parts: Any, n: int = 16) -> str:
    """Hash of the JSON encoding of ``parts`` (order-sensitive), ``n`` hex chars."""
    blob = _ENCODER.encode(parts).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def prompt_id(prompt: str) -> str:
    """Same text -> same id, whatever the source (so sources can be merged)."""
    return short_hash("prompt", prompt.strip())

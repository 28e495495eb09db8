"""Keep API keys and tokens out of everything vprefer writes or prints.

Keys are only ever read from the environment (the variable *name* is what
presets and recipes store). As a second line of defence, every manifest,
journal line, log record and error message goes through :func:`redact`, which
masks the current values of secret-looking environment variables,
key-shaped strings, and the credentials a URL can carry (``user:TOKEN@`` user
info, ``?api-key=TOKEN`` and other credential-looking query parameters: a
``--base-url`` pasted from a dashboard often has one), so a key pasted into the
wrong place still never lands on disk.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any

MASK = "***"
_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH)", re.I)
_KEY_SHAPES = re.compile(
    r"(sk-[A-Za-z0-9_\-]{12,}|Bearer\s+[A-Za-z0-9._\-]{8,}|eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9._\-]+)"
)

# user info of any URL: ``scheme://user:pass@host`` -> ``scheme://***@host``
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#@\s'\"]+@")
# a query or fragment parameter whose name looks like a credential: its value is masked, its name kept
_CRED_PARAM = re.compile(r"(?i)([?&;#][A-Za-z0-9_.\-]*(?:key|token|secret|passw|pwd|auth|sig|credential|session)"
                         r"[A-Za-z0-9_.\-]*=)[^&;#\s'\"]+")


def redact_url(text: str) -> str:
    """``text`` (a URL, a command line, a message) with URL user info and credential-looking query
    parameters masked; the host, port and path stay, so a message still says which server."""
    return _CRED_PARAM.sub(r"\1" + MASK, _USERINFO.sub(r"\1" + MASK + "@", text))


def secret_values() -> list[str]:
    """Values of environment variables whose names look secret (longest first)."""
    vals = {v for k, v in os.environ.items() if _SECRET_NAME.search(k) and len(v) >= 6}
    return sorted(vals, key=len, reverse=True)


_cache: tuple[int, list[str]] = (-1, [])


def _current_secrets() -> list[str]:
    """:func:`secret_values`, re-read when the environment's size changes (scanning it on every journal line
    was a tenth of the client's CPU per request)."""
    global _cache
    if _cache[0] != len(os.environ):
        _cache = (len(os.environ), secret_values())
    return _cache[1]


def redact_lines(data: bytes, records: list[Any], encode) -> bytes:
    """JSON lines of ``records`` (``data``, encoded by ``encode``) with secrets masked. Nearly every line has
    none: the bytes are searched once for every secret (raw and JSON-escaped) and every key shape's prefix,
    and only when something is found are the records redacted one by one and encoded again."""
    needles = [b"sk-", b"Bearer", b"eyJ", b"://"]
    for s in _current_secrets():
        needles += [s.encode(), json.dumps(s, ensure_ascii=False)[1:-1].encode()]
    if not any(n in data for n in needles):
        return data
    return b"".join(encode(redact(r)) + b"\n" for r in records)


def redact(obj: Any) -> Any:
    """Return ``obj`` with every secret value masked; recurses into dicts, lists, tuples."""
    secrets = secret_values()
    return _redact(obj, secrets)


def _redact(obj: Any, secrets: list[str]) -> Any:
    if isinstance(obj, str):
        for s in secrets:
            if s in obj:
                obj = obj.replace(s, MASK)
        obj = _KEY_SHAPES.sub(MASK, obj)
        return redact_url(obj) if "://" in obj or "=" in obj else obj
    if isinstance(obj, dict):
        return {k: _redact(v, secrets) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_redact(v, secrets) for v in obj)
    return obj


class RedactingFilter(logging.Filter):
    """A logging filter that masks secrets in the formatted message."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = ()
        return True


def install_log_redaction() -> None:
    root = logging.getLogger()
    for h in root.handlers:
        if not any(isinstance(f, RedactingFilter) for f in h.filters):
            h.addFilter(RedactingFilter())
    if not any(isinstance(f, RedactingFilter) for f in root.filters):
        root.addFilter(RedactingFilter())

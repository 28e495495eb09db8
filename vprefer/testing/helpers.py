"""Small helpers the tests share: in-memory images, a preset pointed at the stand-in judge, its counters.

They live here rather than in ``tests/conftest.py`` so tests import them like any module.
"""

from __future__ import annotations

import io
import json
import urllib.request
from pathlib import Path

from PIL import Image


def png_bytes(color=(200, 30, 30), size=(32, 24), fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def write_png(path: Path, color=(200, 30, 30), size=(32, 24)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(color, size))
    return path


def local_preset(judge, **kw):
    from vprefer.annotate import AnnotatorPreset

    base = {"base_url": judge.base_url, "permutations": 2, "concurrency": 4}
    base.update(kw)
    return AnnotatorPreset.load("local-judge", **base)


def server_stats(judge) -> dict:
    with urllib.request.urlopen(judge.base_url.replace("/v1", "/_stats")) as r:
        return json.loads(r.read())

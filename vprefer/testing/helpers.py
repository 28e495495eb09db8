"""Small helpers the tests share: in-memory images, a preset pointed at the stand-in judge, its counters.

They live here rather than in ``tests/conftest.py`` so tests import them like any module.
"""

from __future__ import annotations

import io
import json
import socket
import urllib.request
from pathlib import Path

from PIL import Image


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now (for a server started in another process)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def tiny_reward_recipe(tmp_path: Path, **over):
    """The ``vp-score-tiny`` recipe for a quick test: 3 steps, a quarter of the prompts held out, overrides given
    as ``section__field=value``. The tiny backbone is shared by the tests of a session folder, one per kind
    (whichever test runs first builds it), so tests give the same result in any order."""
    from vprefer.reward.recipe import RewardRecipe
    from vprefer.testing.stand_ins import ensure_backbone

    r = RewardRecipe.load("vp-score-tiny")
    r.training.max_steps, r.training.save_steps, r.training.logging_steps = 3, 1000, 1000
    r.training.val_fraction = 0.25
    for k, v in over.items():
        obj, _, attr = k.rpartition("__")
        setattr(getattr(r, obj) if obj else r, attr, v)
    r.backbone.name_or_path = str(Path(tmp_path).parent / f"tiny-{r.backbone.kind}")
    ensure_backbone(r)
    return r

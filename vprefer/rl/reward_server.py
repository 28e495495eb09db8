"""A reward over HTTP: the protocol, and a server for any reward with ``score_pixels`` (VP-Score).

RL frameworks (Flow-GRPO, DanceGRPO, Flow-Factory, UniRL, verl) score images through a separate reward
service; ``vprefer serve-reward`` makes VP-Score one, and :class:`vprefer.rl.rewards.RemoteReward` is the
client the project's own loops use. Protocol (JSON, UTF-8):

``POST /score`` ``{"prompts": [str, ...], "images": [base64 PNG, ...]}`` (same length, one prompt per image)
  -> 200 ``{"scores": {name: [float, ...]}}``: one list per served aspect, plus ``"reward"``, their weighted
  combination ``sum(w_a s_a) / sum(|w_a|)`` (as ``vprefer.rl.common.weighted_reward``).
  A malformed request -> 400 ``{"error": "..."}``; a failure while scoring -> 500 ``{"error": "..."}``.
``GET /health`` -> 200 ``{"status": "ok", "names": [...], "weights": {aspect: w}}``.

Images are decoded to RGB pixels in [0, 1] (uint8 / 255) and scored in chunks of ``batch_size`` images of
one size, one request at a time (a lock: the model is shared by the server's threads).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Mapping, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from vprefer.errors import InputError
from vprefer.secrets import redact_url

log = logging.getLogger(__name__)
MAX_BODY = 512 * 1024 * 1024


def encode_png(pixels: torch.Tensor) -> str:
    """One image (3, H, W) in [0, 1] -> base64 PNG (8 bits a channel: the pixels are rounded to k/255)."""
    arr = (pixels.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="PNG", compress_level=1)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_png(data: str) -> torch.Tensor:
    """base64 PNG (or any image PIL reads) -> (3, H, W) float32 in [0, 1]."""
    img = Image.open(io.BytesIO(base64.b64decode(data, validate=True))).convert("RGB")
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255


def quantized(pixels: torch.Tensor) -> torch.Tensor:
    """The pixels a server receives for ``pixels``: rounded to k/255 as the PNG stores them."""
    return (pixels.detach().float().clamp(0, 1) * 255).round() / 255


def parse_request(body: bytes) -> tuple[list[str], list[torch.Tensor]]:
    """A ``/score`` body -> (prompts, images); raises InputError (-> 400) naming what is wrong."""
    try:
        req = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"the body is not JSON ({e.msg if hasattr(e, 'msg') else e})") from None
    if not isinstance(req, dict) or not isinstance(req.get("prompts"), list) or not isinstance(req.get("images"), list):
        raise InputError('expected {"prompts": [str, ...], "images": [base64 PNG, ...]}')
    prompts, images = req["prompts"], req["images"]
    if len(prompts) != len(images):
        raise InputError(f"{len(prompts)} prompts for {len(images)} images: give one prompt per image")
    if not all(isinstance(p, str) for p in prompts):
        raise InputError("every prompt must be a string")
    out = []
    for i, data in enumerate(images):
        try:
            out.append(decode_png(data))
        except (TypeError, ValueError, binascii.Error, UnidentifiedImageError, OSError) as e:
            raise InputError(f"images[{i}] is not a base64-encoded image ({type(e).__name__})") from None
    return prompts, out


def score_images(reward, weights: Mapping[str, float], prompts: Sequence[str], images: Sequence[torch.Tensor],
                 batch_size: int = 32) -> dict[str, list[float]]:
    """Scores of ``images`` (each (3, H, W) in [0, 1]) by ``reward.score_pixels`` for the aspects in ``weights``,
    plus ``"reward"`` (their weighted combination); chunks of ``batch_size`` images of one size."""
    aspects = list(weights)
    w = torch.tensor([float(weights[a]) for a in aspects])
    cols = torch.zeros(len(images), len(aspects))
    by_size: dict[tuple, list[int]] = {}
    for i, im in enumerate(images):
        by_size.setdefault(tuple(im.shape), []).append(i)
    device = getattr(reward, "device", torch.device("cpu"))
    with torch.no_grad():
        for idx in by_size.values():
            for lo in range(0, len(idx), batch_size):
                part = idx[lo:lo + batch_size]
                px = torch.stack([images[i] for i in part]).to(device)
                cols[part] = reward.score_pixels([prompts[i] for i in part], px, aspects=aspects).float().cpu()
    out = {a: cols[:, k].tolist() for k, a in enumerate(aspects)}
    out["reward"] = ((cols * w).sum(1) / w.abs().sum()).tolist()
    return out


class _Handler(BaseHTTPRequestHandler):
    server: "RewardServer"
    protocol_version = "HTTP/1.1"

    def _send(self, code: int, obj: dict) -> None:
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        if self.path.split("?")[0].rstrip("/") == "/health":
            return self._send(200, {"status": "ok", "names": [*self.server.weights, "reward"],
                                    "weights": dict(self.server.weights)})
        self._send(404, {"error": "unknown path: GET /health or POST /score"})

    def do_POST(self):  # noqa: N802
        if self.path.split("?")[0].rstrip("/") != "/score":
            return self._send(404, {"error": "unknown path: POST /score"})
        try:
            n = int(self.headers.get("Content-Length") or -1)
        except ValueError:
            n = -1
        if not 0 <= n <= MAX_BODY:
            self.close_connection = True
            return self._send(400 if n < 0 else 413, {"error": "a Content-Length header (at most 512 MiB) is required"})
        body = self.rfile.read(n)
        try:
            prompts, images = parse_request(body)
        except InputError as e:
            return self._send(400, {"error": str(e)})
        try:
            with self.server.lock:
                scores = score_images(self.server.reward, self.server.weights, prompts, images, self.server.batch_size)
        except Exception as e:  # a bug or an out-of-memory in the model: the client gets a line, we keep serving
            log.exception("scoring failed")
            return self._send(500, {"error": f"scoring failed: {type(e).__name__}: {e}"})
        self._send(200, {"scores": scores})

    def log_message(self, format, *args):  # noqa: A002 - the request line may carry ?token=...
        log.debug("%s %s", self.address_string(), redact_url(format % args))


class RewardServer(ThreadingHTTPServer):
    """Serves ``reward`` (an object with ``score_pixels(prompts, pixels, aspects=...)`` and ``aspects``) over the
    protocol above. ``port=0`` picks a free port (see :attr:`url`). ``start()`` serves from a daemon thread
    (tests, benchmarks); ``serve_forever()`` blocks (the CLI)."""

    daemon_threads = True

    def __init__(self, reward, weights: Mapping[str, float] | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 batch_size: int = 32):
        weights = dict(weights or ({"overall": 1.0} if "overall" in reward.aspects else {a: 1.0 for a in reward.aspects}))
        unknown = [a for a in weights if a not in reward.aspects]
        if unknown:
            raise InputError(f"aspects {unknown} are not among the reward's aspects {list(reward.aspects)}")
        if not weights or not sum(abs(w) for w in weights.values()):
            raise InputError("the aspect weights are all zero: give at least one non-zero weight")
        if batch_size < 1:
            raise InputError(f"batch size must be >= 1; got {batch_size}")
        self.reward, self.weights, self.batch_size = reward, weights, batch_size
        self.lock = threading.Lock()
        self._thread: threading.Thread | None = None
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "RewardServer":
        self._thread = threading.Thread(target=self.serve_forever, name="reward-server", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=10)
        self.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

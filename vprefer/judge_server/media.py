"""What the stand-in server answers to caption requests and to ``/v1/images/generations``.

Captions are derived from pixels (documented rules, nothing learned): the
dominant saturated colour (nearest palette prototype), the background's
brightness, and grain/glitch noise, in one sentence (when the instruction asks
for one) or a 60-120-word paragraph. They are billed like a real server: the
instruction and text at ~4 characters a token, 85 tokens per low-detail image,
the answer at ~4 characters a token.

Generated images are deterministic in (model, prompt, index): the synthetic
world's drawing of the colour and shape the prompt names (random ones when it
names none), so a judge can tell a generator that follows the prompt. Each is
billed ``IMAGE_PRICE_TOKENS`` output tokens (gpt-image-1 style ``usage``), and
the server keeps a running bill in ``/_stats`` to check client-side accounting.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
import time

import numpy as np
from PIL import Image

from vprefer.testing.colours import PALETTE
from vprefer.judge_server.scoring import stats
from vprefer.testing.synthetic import COLOURS, SHAPES, Spec, draw

_NAMES = list(PALETTE)


def is_caption_request(system: str, text: str, images: list) -> bool:
    """Images but nothing to judge them against: no rubric scale ("from 1 (worst) to 5") and no quoted
    ``Prompt: "..."`` (every judge request names the prompt its images were generated for)."""
    return bool(images) and "(worst)" not in system and not re.search(r'Prompt:\s*"', text)


def describe(im: Image.Image) -> dict:
    s = stats(im)
    a = np.asarray(im.convert("RGB").resize((32, 32)), dtype=np.float32)
    sat = ((a.max(-1) - a.min(-1)) / 255.0).reshape(-1)
    nearest = s["nearest"]
    fg = nearest[sat > 0.35]
    colour = _NAMES[int(np.bincount(fg).argmax())] if fg.size else None
    share = float(fg.size) / nearest.size
    lum = float((a @ np.array([0.299, 0.587, 0.114], dtype=np.float32)).mean() / 255.0)
    return {"colour": colour, "share": share, "bright": lum > 0.6, "noisy": s["noise"] > 0.06,
            "contrast": s["lum_std"]}


def caption_text(system: str, im: Image.Image) -> str:
    d = describe(im)
    bg = "a light, plain background" if d["bright"] else "a dark, muted background"
    subject = f"a {d['colour']} shape" if d["colour"] else "an almost colourless, abstract pattern"
    noise = "scattered glitch blocks and grainy noise" if d["noisy"] else "clean, smooth edges"
    if "one sentence" in system:
        return f"{subject[0].upper()}{subject[1:]} on {bg}, with {noise}."
    fill = f"about {d['share']:.0%} of the frame" if d["colour"] else "the whole frame"
    return (f"{subject[0].upper()}{subject[1:]} sits in the middle of the picture on {bg}. The subject covers "
            f"{fill}, with {noise}. It is a flat, simple graphic rather than a photograph: there is no text, no "
            f"person and no other object, and the colours are {'strong' if d['share'] > 0.2 else 'weak'} "
            f"against the background, with {'high' if d['contrast'] > 0.25 else 'low'} contrast. The lighting is "
            "even and shadowless, the composition is centred and symmetrical, and the edges of the frame are "
            "empty, like an icon or a sticker drawn on paper. (Stand-in captioner: pixel statistics only.)")


IMAGE_PRICE_TOKENS = 1056  # what gpt-image-1 bills for one 1024x1024 image at "low" quality
_SIZES = re.compile(r"^(\d+)x(\d+)$")


def image_for(prompt: str, model: str, index: int, size: str) -> bytes:
    m = _SIZES.match(size or "1024x1024")
    w, h = (int(m.group(1)), int(m.group(2))) if m else (1024, 1024)
    seed = int.from_bytes(hashlib.sha256(f"{model}\n{prompt}\n{index}".encode()).digest()[:4], "big")
    words = set(re.findall(r"[a-z]+", prompt.lower()))
    colour = next((c for c in COLOURS if c in words), list(COLOURS)[seed % len(COLOURS)])
    shape = next((s for s in SHAPES if s in words), SHAPES[seed % len(SHAPES)])
    im = draw(Spec(colour, shape, noise=0.0, contrast=1.0), size=min(w, h), seed=seed)
    if (w, h) != im.size:
        im = im.resize((w, h), Image.Resampling.NEAREST)
    a = np.array(im)  # the seed in the low bits of the first row: no two (model, prompt, index) share bytes
    bits = np.array([(seed >> i) & 1 for i in range(min(32, a.shape[1]))], dtype=np.uint8)
    a[0, :bits.size, 0] = (a[0, :bits.size, 0] & 0xFE) | bits
    im = Image.fromarray(a)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def generations(body: dict) -> dict:
    """An ``images.generate`` answer: b64 PNGs and gpt-image-1-style usage."""
    prompt, n = str(body.get("prompt") or ""), int(body.get("n") or 1)
    if not prompt.strip():
        raise ValueError("prompt must not be empty")
    data = [{"b64_json": base64.b64encode(image_for(prompt, str(body.get("model")), i, body.get("size"))).decode(),
             "revised_prompt": prompt} for i in range(n)]
    tin = len(prompt) // 4 + 1
    return {"created": int(time.time()), "data": data,
            "usage": {"input_tokens": tin, "output_tokens": IMAGE_PRICE_TOKENS * n,
                      "total_tokens": tin + IMAGE_PRICE_TOKENS * n,
                      "input_tokens_details": {"text_tokens": tin, "image_tokens": 0}}}

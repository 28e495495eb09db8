"""VP-Score: a vision-language backbone with one small head per aspect (plus overall).

Two backbone families, chosen by recipe:

* ``clip`` — any transformers dual encoder with ``get_image_features`` and
  ``get_text_features`` (CLIP, SigLIP). The heads read ``[img, txt, img * txt]``
  of the L2-normalised embeddings: the product term is what lets a head judge
  whether the image matches the prompt.
* ``blip`` — ``BlipForImageTextRetrieval`` used as ImageReward does: the text
  encoder cross-attends to the image patches and the heads read the [CLS] state.

``similarity_prior`` (dual encoders; ``true`` or a list of aspects): each named head also adds a learned
multiple of the image-text cosine, started at the backbone's own logit scale, and its last layer starts at
zero, so training starts from the backbone's zero-shot score (as PickScore and HPS fine-tune CLIP's score)
instead of from random heads, which noisy pairs can leave worse than zero-shot. Only aspects that are about
the prompt should get it: a cosine start on aesthetics or harmlessness is a wrong start that the heads must
unlearn (on the learnable world: prompt-following 0.59 -> 0.77 with it, harmlessness 1.00 -> 0.70 with it on
every head; BENCHMARKS.md).

Scores are standardised with the mean/std measured on held-out images after
training (stored as ``calibration``): 0 is an average image of the training
distribution, +1 one standard deviation better. ``normalize=False`` gives raw
head outputs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from vprefer import __version__
from vprefer.errors import InputError, MissingError

CONFIG = "vpscore_config.json"
PRIOR_KEY = "similarity_prior.scale"  # stored beside the heads' weights


def _backbone_class(kind: str):
    from transformers import AutoModel, BlipForImageTextRetrieval

    return BlipForImageTextRetrieval if kind == "blip" else AutoModel


def load_backbone(kind: str, name_or_path: str, quantization: str = "none", dtype: torch.dtype | None = None):
    from transformers import AutoImageProcessor, AutoTokenizer, BitsAndBytesConfig

    kw: dict = {"use_safetensors": True}
    if dtype is not None:
        kw["dtype"] = dtype
    if quantization != "none":
        kw["quantization_config"] = (BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                        bnb_4bit_compute_dtype=dtype or torch.float32)
                                     if quantization == "4bit" else BitsAndBytesConfig(load_in_8bit=True))
        kw["device_map"] = {"": "cuda" if torch.cuda.is_available() else "cpu"}
    model = _backbone_class(kind).from_pretrained(name_or_path, **kw)
    if quantization != "none":
        _own_cpu_weights(model)
    return model, AutoTokenizer.from_pretrained(name_or_path), AutoImageProcessor.from_pretrained(name_or_path)


def _own_cpu_weights(model) -> None:
    """Copy the weights a quantized load left as views of the memory-mapped checkpoint (embeddings, norms).

    Quantizing reads every page of the file, and one such view keeps the whole mapping, and so every page of
    it, resident in this process: measured on CLIP-L 4-bit on CPU, 1.6 GB of RSS held by a 150 MB embedding.
    """
    import ctypes
    import gc
    import itertools

    for t in itertools.chain(model.parameters(), model.buffers()):
        if t.device.type == "cpu" and t.dtype.is_floating_point:
            t.data = t.data.clone()

    gc.collect()
    try:  # glibc keeps the quantizer's freed fp32 temporaries (1.6 GB on CLIP-L) unless asked to give them back
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def default_workers() -> int:
    """Threads that prepare images for :meth:`VPScore.pixel_batches`: one per core this process may use, at
    most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(8, cores)


def _pooled(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _pixel_size(proc) -> tuple[int, int]:
    """(height, width) the backbone sees: crop size if the processor crops, else its resize target."""
    for attr in ("crop_size", "size"):
        s = getattr(proc, attr, None)
        if s is None:
            continue
        get = s.get if isinstance(s, dict) else (lambda k, s=s: getattr(s, k, None))
        if get("height") and get("width"):
            return int(get("height")), int(get("width"))
        if get("shortest_edge"):
            return int(get("shortest_edge")), int(get("shortest_edge"))
    raise ValueError("cannot tell the backbone's input size from its image processor")


def prior_aspects(setting: bool | Sequence[str] | None, aspects: Sequence[str]) -> list[str]:
    """``true`` is every aspect (configs saved before the list form), ``false`` none."""
    if setting is True:
        return list(aspects)
    unknown = sorted(set(setting or ()) - set(aspects))
    if unknown:
        raise InputError(f"similarity_prior names {unknown}, which are not among the aspects {list(aspects)}")
    return [a for a in aspects if a in (setting or ())]


class VPScore(nn.Module):
    def __init__(self, backbone, tokenizer, image_processor, *, kind: str, base: str, aspects: Sequence[str],
                 head_hidden: int = 256, max_text_len: int = 35, quantization: str = "none", lora: bool = False,
                 similarity_prior: bool | Sequence[str] = False):
        super().__init__()
        if similarity_prior and kind != "clip":
            raise InputError("similarity_prior needs a dual encoder (kind: clip): a BLIP cross-encoder has no "
                             "image-text cosine")
        self.backbone, self.tokenizer, self.image_processor = backbone, tokenizer, image_processor
        self.kind, self.base, self.aspects = kind, base, list(aspects)
        self.head_hidden, self.max_text_len, self.quantization, self.lora = head_hidden, max_text_len, quantization, lora
        cfg = backbone.config
        if kind == "blip":
            dim = cfg.text_config.hidden_size
        else:
            proj = getattr(cfg, "projection_dim", None)
            dim = 3 * (proj or cfg.vision_config.hidden_size)
        self.heads = nn.ModuleDict({a: nn.Sequential(nn.Linear(dim, head_hidden), nn.GELU(), nn.Linear(head_hidden, 1))
                                    for a in self.aspects})
        self.similarity_prior = prior_aspects(similarity_prior, self.aspects)
        if self.similarity_prior:
            ls = getattr(backbone, "logit_scale", None)
            start = float(ls.detach().float().exp().clamp(max=100)) if ls is not None else 10.0
            on = torch.tensor([a in self.similarity_prior for a in self.aspects], dtype=torch.float32)
            self.prior_scale = nn.Parameter(on * start)
            self.register_buffer("prior_on", on, persistent=False)  # the other heads never see the cosine
            with torch.no_grad():
                for a in self.similarity_prior:
                    self.heads[a][-1].weight.zero_()
                    self.heads[a][-1].bias.zero_()
        self.calibration: dict[str, tuple[float, float]] = {}
        self.pixel_size = _pixel_size(image_processor)
        self.register_buffer("pixel_mean", torch.tensor(image_processor.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(image_processor.image_std).view(1, 3, 1, 1), persistent=False)

    # ------------------------------------------------------------------ forward
    def features(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        bb = self.backbone
        if self.kind == "blip":
            img = bb.vision_model(pixel_values=pixel_values)[0]
            att = torch.ones(img.shape[:2], dtype=torch.long, device=img.device)
            txt = bb.text_encoder(input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=img,
                                  encoder_attention_mask=att)[0]
            return txt[:, 0, :].float()
        img = F.normalize(_pooled(bb.get_image_features(pixel_values=pixel_values)).float(), dim=-1)
        txt = F.normalize(_pooled(bb.get_text_features(input_ids=input_ids, attention_mask=attention_mask)).float(), dim=-1)
        return torch.cat([img, txt, img * txt], dim=-1)

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Raw scores, shape (batch, len(aspects)), in ``self.aspects`` order."""
        f = self.features(pixel_values, input_ids, attention_mask)
        heads = [self.heads[a][0].weight.dtype for a in self.aspects]
        out = torch.cat([self.heads[a](f.to(heads[k])) for k, a in enumerate(self.aspects)], dim=-1).float()
        if self.similarity_prior:  # features are [img, txt, img * txt]: the last third sums to the cosine
            cos = f[:, 2 * f.shape[1] // 3:].float().sum(-1, keepdim=True)
            out = out + cos * (self.prior_scale.float() * self.prior_on)
        return out

    def tokenize(self, prompts: Sequence[str], device) -> tuple[torch.Tensor, torch.Tensor]:
        # SigLIP was trained on max-length padding; the others on dynamic padding
        pad = "max_length" if getattr(self.backbone.config, "model_type", "") == "siglip" else True
        t = self.tokenizer(list(prompts), padding=pad, truncation=True, max_length=self.max_text_len,
                           return_tensors="pt")
        return t["input_ids"].to(device), t["attention_mask"].to(device)

    @property
    def device(self) -> torch.device:
        return next(self.heads.parameters()).device

    def _calibrate(self, raw: torch.Tensor, aspects: list[str]) -> torch.Tensor:
        mean = torch.tensor([self.calibration.get(a, (0.0, 1.0))[0] for a in aspects], device=raw.device)
        std = torch.tensor([self.calibration.get(a, (0.0, 1.0))[1] for a in aspects], device=raw.device)
        return (raw - mean) / std

    # ------------------------------------------------------------------ scoring
    @torch.inference_mode()
    def score(self, prompts: str | Sequence[str], images: Image.Image | str | Path | Sequence[Image.Image | str | Path],
              aspects: Sequence[str] | None = None, batch_size: int = 32, normalize: bool = True,
              workers: int | None = None) -> dict[str, list[float]]:
        """Scores for (prompt, image) pairs, batched; ``{aspect: [score, ...]}``. Images are prepared by
        :meth:`pixel_batches` in ``workers`` threads while the model scores the batch before.

        One prompt (a string, or a list of one) scores every image against it, as ImageReward's
        ``score(prompt, images)`` and HPSv2's ``score(images, prompt)`` do: a string used to be read as a
        list of its characters."""
        if isinstance(images, (str, Path, Image.Image)):
            images = [images]
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if len(prompts) == 1 and len(images) > 1:
            prompts = prompts * len(images)
        if len(prompts) != len(images):
            raise InputError(f"{len(prompts)} prompts but {len(images)} images")
        aspects = list(aspects or self.aspects)
        idx = [self.aspects.index(a) for a in aspects]
        self.eval()
        out = []
        dtype = next(p.dtype for p in self.backbone.parameters() if p.is_floating_point())
        for i, px in zip(range(0, len(images), batch_size), self.pixel_batches(images, batch_size, workers),
                         strict=True):
            ids, mask = self.tokenize(prompts[i:i + batch_size], self.device)
            raw = self(px.to(self.device, dtype, non_blocking=True), ids, mask)[:, idx]
            out.append(self._calibrate(raw, aspects) if normalize else raw)
        s = torch.cat(out).cpu() if out else torch.zeros(0, len(aspects))
        return {a: s[:, k].tolist() for k, a in enumerate(aspects)}

    def pixel_batches(self, images: Sequence[Image.Image | str | Path], batch_size: int = 32,
                      workers: int | None = None) -> Iterator[torch.Tensor]:
        """The backbone's input for ``images``, ``batch_size`` at a time, on the CPU in order.

        Decoding and resizing run in ``workers`` threads (default: one per core, at most 8), each on a slice of
        a batch, and the next batch is started before this one is handed over: with one thread an H100 waited
        on the CPU (``score()`` at 0.33 of the bare CLIP-L forward). PIL and numpy release the GIL as they work.
        """
        workers = max(1, workers or default_workers())  # 0 or None: the default
        seen: set[int] = set()
        for x in images:  # one lazily opened PIL image in two slices would be read by two threads at once
            if isinstance(x, Image.Image):
                if id(x) in seen:
                    x.load()
                seen.add(id(x))

        def prep(lo: int, hi: int) -> torch.Tensor:
            ims = [Image.open(x).convert("RGB") if isinstance(x, (str, Path)) else x.convert("RGB")
                   for x in images[lo:hi]]
            return self.image_processor(images=ims, return_tensors="pt")["pixel_values"]

        def submit(i: int) -> list:
            n = min(batch_size, len(images) - i)
            cuts = [i + n * k // workers for k in range(workers + 1)]
            return [pool.submit(prep, a, b) for a, b in zip(cuts, cuts[1:]) if b > a]

        starts = list(range(0, len(images), batch_size))
        pool = ThreadPoolExecutor(workers)
        try:
            nxt = submit(starts[0]) if starts else []
            for k in range(len(starts)):
                px = torch.cat([f.result() for f in nxt])
                if k + 1 < len(starts):
                    nxt = submit(starts[k + 1])
                yield px
        finally:  # also when the caller stops early: slices of the batch ahead not started yet are dropped
            pool.shutdown(wait=True, cancel_futures=True)

    def score_pixels(self, prompts: str | Sequence[str], pixels: torch.Tensor, aspects: Sequence[str] | None = None,
                     normalize: bool = True) -> torch.Tensor:
        """Differentiable scores for a pixel tensor (B, 3, H, W) in [0, 1]; returns (B, len(aspects)).

        Resizing and normalisation are done with torch ops (no PIL round trip), so
        gradients flow back to ``pixels`` — what ReFL needs.
        """
        aspects = list(aspects or self.aspects)
        if isinstance(prompts, str):  # one prompt for the whole batch
            prompts = [prompts] * pixels.shape[0]
        x = F.interpolate(pixels.float(), size=self.pixel_size, mode="bicubic", align_corners=False, antialias=True)
        x = (x - self.pixel_mean) / self.pixel_std
        dtype = next(p.dtype for p in self.backbone.parameters() if p.is_floating_point())
        ids, mask = self.tokenize(prompts, pixels.device)
        raw = self(x.to(dtype), ids, mask)[:, [self.aspects.index(a) for a in aspects]]
        return self._calibrate(raw, aspects) if normalize else raw

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, out: str | Path) -> Path:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        from peft import PeftModel

        if self.lora and isinstance(self.backbone, PeftModel):
            self.backbone.save_pretrained(out / "adapter", safe_serialization=True)
            if Path(self.base).is_dir():  # a local base travels with the model (hub ids are referenced)
                shutil.copytree(self.base, out / "backbone", dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("*.bin", "*.pt", "*.pkl"))
        else:
            self.backbone.save_pretrained(out / "backbone", safe_serialization=True)
        self.tokenizer.save_pretrained(out / "backbone")
        self.image_processor.save_pretrained(out / "backbone")
        heads = dict(self.heads.state_dict())
        if self.similarity_prior:
            heads[PRIOR_KEY] = self.prior_scale
        save_file({k: v.detach().cpu().contiguous().float() for k, v in heads.items()}, str(out / "heads.safetensors"))
        cfg = {"format": "vpscore/1", "vprefer": __version__, "kind": self.kind, "base": self.base,
               "aspects": self.aspects, "head_hidden": self.head_hidden, "max_text_len": self.max_text_len,
               "quantization": self.quantization, "lora": self.lora, "calibration": self.calibration,
               "similarity_prior": self.similarity_prior}
        (out / CONFIG).write_text(json.dumps(cfg, indent=2))
        return out

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | Path, *, device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None, merge_lora: bool = True) -> "VPScore":
        """Load a saved VP-Score (local folder or hub id). Weights are read with safetensors only."""
        path = Path(path_or_hub_id)
        if not (path / CONFIG).exists():
            if path.exists() or re.match(r"^[./~]", str(path_or_hub_id)):
                raise MissingError(f"{path} is not a VP-Score folder (no {CONFIG})")
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(str(path_or_hub_id), allow_patterns=["*.json", "*.safetensors", "*.txt",
                                                                                "**/*.json", "**/*.safetensors", "**/*.txt"]))
        cfg = json.loads((path / CONFIG).read_text())
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype is None and device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        base_dir = path / "backbone"
        weights_at = str(base_dir) if (base_dir / "config.json").exists() else cfg["base"]
        backbone, tok, proc = load_backbone(cfg["kind"], weights_at, cfg["quantization"], dtype)
        if cfg["lora"]:
            from peft import PeftModel

            backbone = PeftModel.from_pretrained(backbone, str(path / "adapter"))
            if merge_lora and cfg["quantization"] == "none":
                backbone = backbone.merge_and_unload()
        model = cls(backbone, tok, proc, kind=cfg["kind"], base=cfg["base"], aspects=cfg["aspects"],
                    head_hidden=cfg["head_hidden"], max_text_len=cfg["max_text_len"],
                    quantization=cfg["quantization"], lora=cfg["lora"] and not merge_lora,
                    similarity_prior=cfg.get("similarity_prior", False))  # models saved before it had none
        heads = load_file(str(path / "heads.safetensors"))
        if model.similarity_prior:
            with torch.no_grad():
                model.prior_scale.copy_(heads.pop(PRIOR_KEY))
        model.heads.load_state_dict(heads)
        model.calibration = {a: tuple(v) for a, v in cfg.get("calibration", {}).items()}
        if cfg["quantization"] == "none":
            model.to(device)
            if dtype is not None:
                model.backbone.to(dtype)
        else:
            model.heads.to(device)
        return model.eval()

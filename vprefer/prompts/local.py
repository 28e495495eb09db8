"""A local prompt rewriter (``--annotator local:DIR``): a causal LM with the LoRA that ``vprefer rl prompts``
trained, loaded with plain transformers + peft, no server. Greedy decoding, so a rerun writes the same text.

It speaks the same instructions as the zero-shot upsampler (``STYLES``), which is what makes the two comparable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from vprefer.recipes import RecipeError


def messages(original: str, style: str) -> list[dict]:
    from vprefer.prompts.upsample import STYLES

    if style not in STYLES:
        raise RecipeError(f"style must be one of {sorted(STYLES)}, got {style!r}")
    return [{"role": "system", "content": STYLES[style]}, {"role": "user", "content": original}]


def completion_text(c) -> str:
    """A completion (chat messages or plain text) -> one cleaned line."""
    t = c[-1]["content"] if isinstance(c, list) else str(c)
    return " ".join(t.replace("\n", " ").strip().strip('"').split())


def load_tokenizer(path: str | Path):
    """``AutoTokenizer``, except for a folder whose ``tokenizer_config.json`` declares the generic class
    (``TokenizersBackend`` or its alias ``PreTrainedTokenizerFast``, what ``save_pretrained`` writes for a
    tokenizer built from a ``tokenizers`` object): that one is its ``tokenizer.json`` as written.
    transformers 5 maps a Qwen2 config to ``Qwen2Tokenizer`` whatever the folder declares, which turned the
    world rewriter's word-level tokenizer into a byte-level one that read every word as unknown."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    cfg = Path(path) / "tokenizer_config.json"
    if cfg.exists() and json.loads(cfg.read_text()).get("tokenizer_class") in ("TokenizersBackend", "PreTrainedTokenizerFast"):
        return PreTrainedTokenizerFast.from_pretrained(str(path))
    return AutoTokenizer.from_pretrained(str(path))


def load_policy(path: str, adapter: str | Path | None = None, device: str | None = None):
    """The rewriter as a user loads it: transformers (+ peft for the adapter)."""
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(adapter or path)
    model = AutoModelForCausalLM.from_pretrained(path)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    return model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval(), tok


@torch.no_grad()
def rewrite(model, tok, originals: Sequence[str], style: str, *, max_new_tokens: int = 128) -> list[str]:
    """Greedy rewrites (deterministic: what evaluation and local upsampling use)."""
    tok.padding_side = "left"
    chats = [tok.apply_chat_template(messages(o, style), tokenize=False, add_generation_prompt=True) for o in originals]
    enc = tok(chats, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    return [completion_text(tok.decode(o[enc["input_ids"].shape[1]:], skip_special_tokens=True)) for o in out]


class LocalRewriter:
    """What ``prompts upsample`` needs of an annotator, for a trained rewriter folder."""

    def __init__(self, folder: str | Path, batch_size: int = 16):
        self.folder = Path(folder)
        meta = self.folder / "vprefer_prompt_opt.json"
        if not meta.exists():
            raise RecipeError(f"{self.folder} is not a rewriter trained by `vprefer rl prompts` (no {meta.name})")
        info = json.loads(meta.read_text())
        self.policy, self.trained_style, self.batch_size = info["policy"], info.get("style"), batch_size
        self.annotator_id = f"local:{self.folder.name}"
        self.slug = "local-" + "".join(ch if ch.isalnum() else "-" for ch in self.folder.name)
        self._model = None

    def resolved(self) -> dict:
        return {"local": str(self.folder), "policy": self.policy, "style": self.trained_style}

    def rewrite(self, originals: Sequence[str], style: str) -> list[str]:
        if self._model is None:
            self._model = load_policy(self.policy, adapter=self.folder)
        model, tok = self._model
        return [t for i in range(0, len(originals), self.batch_size)
                for t in rewrite(model, tok, originals[i:i + self.batch_size], style)]

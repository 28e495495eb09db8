"""Tiny backbones built from configs, for tests, the demo and CPU benchmarks.

They are real transformers architectures (CLIP, SigLIP, BLIP) with random
weights, saved with ``save_pretrained`` and loaded back through the same
``from_pretrained`` path a hub id takes, together with a word-level tokenizer
built from local files and an image processor: no download, ever.
"""

from __future__ import annotations

import re
from pathlib import Path

WORDS = ("a an the on of in as for with and plain background centre frame flat icon drawn simply poster sticker "
         "minimalist style white paper variant red green blue yellow purple orange pink black gray brown cyan "
         "circle square triangle cat dog photo painting").split()


def tiny_tokenizer(out: Path, words=WORDS, max_len: int = 64):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    vocab = {w: i for i, w in enumerate(specials + sorted(set(words) | {str(d) for d in range(10)}))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", model_max_length=max_len)
    fast.save_pretrained(out)
    return fast


def make_tiny_backbone(kind: str, out: str | Path, *, hidden: int = 64, layers: int = 2, image_size: int = 32,
                       patch: int = 4, proj: int = 32) -> Path:
    """Write a tiny random backbone of ``kind`` ('clip', 'siglip', 'blip', or 'clip-mid') to ``out``."""
    import torch
    from transformers import (
        BlipConfig,
        BlipForImageTextRetrieval,
        BlipImageProcessor,
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        SiglipConfig,
        SiglipImageProcessor,
        SiglipModel,
    )

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    tok = tiny_tokenizer(out)
    vocab = len(tok)
    common = dict(hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                  num_attention_heads=max(1, hidden // 32))
    vis = dict(common, image_size=image_size, patch_size=patch)
    ids = dict(pad_token_id=0, bos_token_id=2, eos_token_id=3)
    proc_kw = dict(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    if kind in ("clip", "clip-mid"):
        cfg = CLIPConfig(text_config=dict(common, vocab_size=vocab, max_position_embeddings=64, **ids),
                         vision_config=vis, projection_dim=proj)
        CLIPModel(cfg).save_pretrained(out)
        CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
                           **proc_kw).save_pretrained(out)
    elif kind == "siglip":
        cfg = SiglipConfig(text_config=dict(common, vocab_size=vocab, max_position_embeddings=64, **ids),
                           vision_config=vis)
        SiglipModel(cfg).save_pretrained(out)
        SiglipImageProcessor(size={"height": image_size, "width": image_size}, **proc_kw).save_pretrained(out)
    elif kind == "blip":
        cfg = BlipConfig(text_config=dict(common, vocab_size=vocab, max_position_embeddings=64,
                                          encoder_hidden_size=hidden, **ids),
                         vision_config=vis, projection_dim=proj, image_text_hidden_size=proj)
        BlipForImageTextRetrieval(cfg).save_pretrained(out)
        BlipImageProcessor(size={"height": image_size, "width": image_size}, **proc_kw).save_pretrained(out)
    else:
        raise ValueError(f"unknown tiny backbone kind {kind!r}")
    return out


def words_of(texts) -> list[str]:
    return sorted({w for t in texts for w in re.findall(r"\w+", t.lower())})

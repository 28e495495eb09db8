"""A tiny causal LM with a character-level tokenizer and a chat template, built from configs and local files:
the stand-in prompt rewriter for GRPO tests, the demo and CPU benchmarks (no download)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

CHARS = "abcdefghijklmnopqrstuvwxyz0123456789 ,.'-:;!?()\n"
SPECIAL = ["<pad>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def chat_lm(tok, vocab: dict[str, int], *, unk_token: str, hidden: int, layers: int, max_len: int):
    """A randomly initialised Qwen2 and its fast tokenizer around ``tok`` (a ``tokenizers`` object over
    ``vocab``, which starts with ``SPECIAL``), with the chat template and Qwen's special tokens: what the
    tiny LM and the world's rewriter share. Seed torch before calling for reproducible weights."""
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>",
                                   bos_token=None, unk_token=unk_token, model_max_length=max_len)
    fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|endoftext|>"]})
    fast.chat_template = CHAT_TEMPLATE
    cfg = Qwen2Config(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_len,
                      pad_token_id=vocab["<pad>"], eos_token_id=vocab["<|im_end|>"], bos_token_id=None,
                      tie_word_embeddings=True)
    model = Qwen2ForCausalLM(cfg)
    model.generation_config.eos_token_id = vocab["<|im_end|>"]
    model.generation_config.pad_token_id = vocab["<pad>"]
    return model, fast


def make_tiny_causal_lm(out: str | Path, *, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Qwen2 architecture, random weights; text is lower-cased characters (unknown ones map to a space)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    out = Path(out)
    torch.manual_seed(seed)
    vocab = {t: i for i, t in enumerate(SPECIAL + list(CHARS))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=" "))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # one token per character
    tok.decoder = decoders.Fuse()
    model, fast = chat_lm(tok, vocab, unk_token=" ", hidden=hidden, layers=layers, max_len=512)
    model.save_pretrained(out, safe_serialization=True)
    fast.save_pretrained(out)
    (out / "vprefer_stand_in.json").write_text(json.dumps({"kind": "tiny causal LM", "chars": CHARS}))
    return out

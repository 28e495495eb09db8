"""A small causal LM that has learned to write world captions: where the GRPO prompt rewriter starts (issue 28).

The real recipe starts GRPO from an instruction-tuned LM (Qwen2.5-0.5B-Instruct) that can already
rewrite a prompt; the tiny recipe starts from random weights, so GRPO has to discover language from a
reward. This module pretrains the tiny recipe's architecture (Qwen2, the same chat template; a word-level
tokenizer, see :func:`new_lm`) on the task itself — a plain or short world prompt in, a descriptive caption of the same
scene out, in exactly the chat messages :mod:`vprefer.prompts.local` sends — so GRPO fine-tunes a
rewriter that works, as it does with the real one.

* The target names every attribute the prompt names and fills in the ones it leaves out (a short
  prompt's missing colour or background is drawn at random, so the LM learns to choose one: the
  DALL-E 3 upsampling the world's generator is trained to reward).
* Only training combinations are used; the measure is on held-out prompts: the share of greedy rewrites
  that keep every attribute the prompt names (:func:`keeps_attributes`).
* The loss is on the reply only (the system and user turns are context).
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from vprefer.world.prompts import HELD_OUT_COMBOS, parse_prompt, prompt_of, world_prompts
from vprefer.world.scenes import SIZES, Scene, WorldError, random_scene
from vprefer.world.training import loss_figures, single_threaded

META = "vprefer_world_lm.json"
STYLE = "descriptive"  # the rewriter's instruction (vprefer.prompts.upsample.STYLES)
ARCH = dict(hidden=64, layers=2)


def example(rng: random.Random) -> tuple[str, str]:
    """(prompt, caption) for a random training-combination scene: a plain prompt half the time, else a short
    one, and a descriptive caption of the same scene."""
    held = set(HELD_OUT_COMBOS)
    while True:
        s = random_scene(rng)
        if (s.colour, s.shape, s.background) not in held:
            break
    src = prompt_of(s, "plain") if rng.random() < 0.5 else prompt_of(s, "short", seed=rng.randrange(1 << 30))
    return src, prompt_of(s, "descriptive", seed=rng.randrange(1 << 30))


def keeps_attributes(prompt: str, rewrite: str) -> bool:
    """Whether ``rewrite`` names every attribute ``prompt`` names, with the same value."""
    want, got = parse_prompt(prompt), parse_prompt(rewrite)
    return all(v is None or got[k] == v for k, v in want.items())


def held_out_prompts(n_short: int = 22, seed: int = 0) -> dict[str, list[str]]:
    """Held-out plain prompts (every held-out combination) and short ones made from them."""
    plain = world_prompts(len(HELD_OUT_COMBOS), seed, held_out=True)
    rng = random.Random(seed)
    short = []
    for k in range(n_short):
        c, s, b = HELD_OUT_COMBOS[k % len(HELD_OUT_COMBOS)]
        short.append(prompt_of(Scene(c, s, b, size=rng.choice(SIZES)), "short", seed=k))
    return {"plain": plain, "short": short}


def measure(model, tok, prompts: dict[str, Sequence[str]], max_new_tokens: int = 96) -> dict:
    """Share of greedy rewrites that keep the prompt's attributes, per kind of prompt, with examples."""
    from vprefer.prompts.local import rewrite

    out = {}
    for kind, ps in prompts.items():
        rw = rewrite(model, tok, list(ps), STYLE, max_new_tokens=max_new_tokens)
        out[kind] = {"keeps_attributes": sum(map(keeps_attributes, ps, rw)) / len(ps),
                     "examples": [[p, r] for p, r in list(zip(ps, rw))[:3]]}
    return out


def _words() -> list[str]:
    """The tokenizer's vocabulary: every word of the world's captions and of the rewriter's instructions."""
    import re

    from vprefer.prompts.upsample import STYLES
    from vprefer.world.backbone import caption_words

    text = " ".join(STYLES.values()).lower()
    roles = {"system", "user", "assistant"}
    return sorted(set(caption_words()) | set(re.findall(r"\w+|[^\w\s]", text)) | roles)


def new_lm(out: str | Path, *, hidden: int = 64, layers: int = 2, seed: int = 0):
    """A randomly initialised Qwen2 with a word-level tokenizer and the tiny LM's chat template, saved to ``out``.

    Words, not characters (the random tiny LM's choice): copying "purple" from the prompt into the
    caption is then one attention lookup instead of six, which a two-layer model learns in minutes, and
    the system turn is ~60 tokens instead of ~260."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    from vprefer.testing.tiny_lm import SPECIAL, chat_lm

    out = Path(out)
    torch.manual_seed(seed)
    vocab = {t: i for i, t in enumerate([*SPECIAL, "<unk>", *_words()])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return chat_lm(tok, vocab, unk_token="<unk>", hidden=hidden, layers=layers, max_len=256)


def _prefix(tok) -> list[int]:
    """The tokens every example starts with (system turn, start of the user turn)."""
    from vprefer.prompts.local import messages

    head = tok.apply_chat_template(messages("\x00", STYLE), tokenize=False, add_generation_prompt=True)
    return tok(head[:head.index("\x00")], add_special_tokens=False)["input_ids"]


def _batch(tok, pairs: list[tuple[str, str]], prefix: list[int]) -> dict[str, torch.Tensor]:
    """The examples after the shared prefix: the rest of the user turn, then the reply (the labels)."""
    from vprefer.prompts.local import messages

    ids, labels = [], []
    for src, tgt in pairs:
        head = tok.apply_chat_template(messages(src, STYLE), tokenize=False, add_generation_prompt=True)
        a = tok(head, add_special_tokens=False)["input_ids"]
        if a[:len(prefix)] != prefix:  # cannot happen with the character tokenizer; guards a changed template
            raise WorldError("the chat template does not start every example with the same tokens")
        a = a[len(prefix):]
        b = tok(tgt + tok.eos_token, add_special_tokens=False)["input_ids"]
        ids.append(a + b)
        labels.append([-100] * len(a) + b)
    n = max(map(len, ids))
    pad = tok.pad_token_id
    return {"input_ids": torch.tensor([x + [pad] * (n - len(x)) for x in ids]),
            "attention_mask": torch.tensor([[1] * (len(prefix) + len(x)) + [0] * (n - len(x)) for x in ids]),
            "labels": torch.tensor([x + [-100] * (n - len(x)) for x in labels])}


def _loss(model, prefix: list[int], batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The reply's loss, with the shared prefix run once per step and its keys and values held fixed.

    Every example opens with the same ~280-token system turn (the rewriter's instruction): running it
    once instead of once per example makes a step ~4x cheaper. No gradient reaches the prefix's keys and
    values; at inference it is computed by the same weights, so the reply sees what it was trained on."""
    with torch.no_grad():
        cache = model(input_ids=torch.tensor([prefix]), use_cache=True).past_key_values
    cache.batch_repeat_interleave(batch["input_ids"].shape[0])
    return model(**batch, past_key_values=cache, use_cache=True).loss


@single_threaded
def pretrain_lm(out: str | Path, *, steps: int = 3000, batch_size: int = 24, learning_rate: float = 3e-3,
               seed: int = 0, log: Callable[[str], None] | None = print, log_every: int = 50,
               evaluate: bool = True, **arch) -> dict:
    """Pretrain the world rewriter and ``save_pretrained`` it (safetensors) with its tokenizer to ``out``;
    ``AutoModelForCausalLM.from_pretrained(out)`` loads it. ``steps=0`` saves the random initialisation.
    Returns what :data:`META` records (held-out figures included when ``evaluate``)."""
    if steps < 0 or batch_size < 1:
        raise WorldError(f"pretraining needs steps >= 0 and batch_size >= 1, not {steps}, {batch_size}")
    t0 = time.perf_counter()
    a = {**ARCH, **arch}
    out = Path(out)
    model, tok = new_lm(out, hidden=a["hidden"], layers=a["layers"], seed=seed)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, i / max(1, steps)))))
    losses = []
    prefix = _prefix(tok)
    model.train()
    for step in range(steps):
        loss = _loss(model, prefix, _batch(tok, [example(rng) for _ in range(batch_size)], prefix))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if log and (step + 1) % log_every == 0:
            log(f"step {step + 1}/{steps}  loss {sum(losses[-log_every:]) / log_every:.4f}")
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    meta = {"kind": "world rewriter", "steps": steps, "batch_size": batch_size, "learning_rate": learning_rate,
            "seed": seed, "arch": a, **loss_figures(losses),
            "parameters": sum(p.numel() for p in model.parameters())}
    if evaluate:  # the saved folder, loaded as a user loads it (an in-memory tokenizer hid a loading defect)
        from vprefer.prompts.local import load_policy

        meta["held_out"] = measure(*load_policy(str(out), device="cpu"), held_out_prompts())
    meta["seconds"] = round(time.perf_counter() - t0, 1)
    (out / META).write_text(json.dumps(meta, indent=2))
    return meta

"""The world's pretrained generator (issue 28 item 2): a StableDiffusionPipeline that loads like a hub id,
made deterministically by one command, whose held-out samples are recognisable and imperfect."""

from pathlib import Path

import torch
from safetensors.torch import load_file

from vprefer.world import TRAIN_COMBOS, prompt_of
from vprefer.world.generator import (DROP_SHARE, PretrainConfig, learn_merges, pretrain_generator,
                                     training_set, word_tokenizer)

TINY = dict(vae_steps=2, images=24, batch_size=4, vae_batch_size=4, unet_channels=(8, 16, 16), vae_channels=(8, 8),
            text_width=32, save_fp16=False)
PARTS = ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
         "text_encoder/model.safetensors")


def _weights(folder: Path) -> dict:
    return {f"{p}:{k}": v for p in PARTS for k, v in load_file(str(folder / p)).items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_every_world_word_is_one_token_and_other_text_still_tokenizes(tmp_path):
    """Word-level: the text encoder reads "triangle" as one token, not eight characters."""
    words = ["red", "green", "circle", "triangle", "background", "grey", "greyish"]
    assert learn_merges(words)  # something to merge
    tok = word_tokenizer([" ".join(words) + ", a"], tmp_path / "tok", 16)
    assert tok.tokenize("a green triangle, grey background") == ["a</w>", "green</w>", "triangle</w>", ",</w>",
                                                                   "grey</w>", "background</w>"]
    assert tok.tokenize("a gecko") == ["a</w>", "g", "e", "c", "k", "o</w>"]  # characters: never an error
    assert tok("red circle").input_ids[0] == tok.bos_token_id


def test_training_captions_are_mostly_descriptive_some_dropped_and_only_training_combinations():
    pixels, captions, full = training_set(PretrainConfig(images=400, image_size=32))
    assert pixels.shape == (400, 3, 32, 32) and -1.0 <= pixels.min() and pixels.max() <= 1.0
    dropped = sum(c == "" for c in captions) / len(captions)
    assert abs(dropped - DROP_SHARE) < 0.05
    plain = {prompt_of(dict(zip(("colour", "shape", "background"), c))) for c in TRAIN_COMBOS}
    assert sum(f in plain for f in full) / len(full) < 0.15  # plain is a minority style
    assert sum(len(f.split()) >= 6 for f in full) / len(full) > 0.75  # descriptive ones are long
    assert all("" == c or c == f for c, f in zip(captions, full))


def test_a_run_of_n_steps_is_the_first_n_steps_of_a_longer_one_and_reruns_write_the_same_weights(tmp_path, monkeypatch):
    """What lets one run choose the shipped length (--also-save-at), and what "remakes it" means. The warm-up
    is cut to one step so that a schedule depending on the run's length would show within four."""
    from vprefer.world import generator

    monkeypatch.setattr(generator, "WARMUP", 1)
    pretrain_generator(tmp_path / "a", PretrainConfig(steps=4, **TINY), snapshots=(3,))
    pretrain_generator(tmp_path / "b", PretrainConfig(steps=3, **TINY))
    pretrain_generator(tmp_path / "c", PretrainConfig(steps=3, seed=1, **TINY))
    a3, b = _weights(tmp_path / "a-step3"), _weights(tmp_path / "b")
    assert _same(a3, b)
    assert not _same(_weights(tmp_path / "a"), b)  # two more steps moved the weights
    assert not _same(_weights(tmp_path / "c"), b)  # and the seed matters

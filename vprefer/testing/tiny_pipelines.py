"""Tiny diffusers pipelines built from configs (random weights, local char-level tokenizer): stand-ins for
SD 1.5 and SDXL in tests, the demo and CPU benchmarks. Production code never imports this."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def _tiny_parts(out: Path, sample_size: int, seed: int):
    """Char-level CLIP tokenizer written from local files, a tiny text config and a tiny-VAE factory."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTokenizer

    torch.manual_seed(seed)
    tdir = out / "_tok"
    tdir.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz0123456789,.-'":
        vocab[c], vocab[c + "</w>"] = len(vocab), len(vocab) + 1
    (tdir / "vocab.json").write_text(json.dumps(vocab))
    (tdir / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(tdir / "vocab.json"), str(tdir / "merges.txt"), model_max_length=48)
    text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=48, bos_token_id=0, eos_token_id=1, pad_token_id=1)

    def vae():  # built last, after the text encoder(s) and UNet: the random-init order is part of the fixture
        return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                             up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), latent_channels=4,
                             norm_num_groups=8, sample_size=sample_size * 2)

    return tok, text, vae


_UNET = dict(in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
             down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
             attention_head_dim=8, norm_num_groups=8)


def make_tiny_sd(out: str | Path, *, sample_size: int = 16, seed: int = 0) -> Path:
    """A tiny SD-1.5-architecture pipeline from configs (random weights) with a char-level CLIP tokenizer
    written from local files: for tests, the demo and CPU benchmarks. Images are 2x the latent size."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    out = Path(out)
    tok, text, vae = _tiny_parts(out, sample_size, seed)
    te = CLIPTextModel(CLIPTextConfig(**text))
    unet = UNet2DConditionModel(sample_size=sample_size, cross_attention_dim=32, **_UNET)
    sch = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                        clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    StableDiffusionPipeline(unet=unet, vae=vae(), text_encoder=te, tokenizer=tok,
                            scheduler=sch, safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(out)
    return out


def make_tiny_sdxl(out: str | Path, *, sample_size: int = 16, seed: int = 0) -> Path:
    """The same for the SDXL architecture: two text encoders and the text_time added conditioning."""
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    out = Path(out)
    tok, text, vae = _tiny_parts(out, sample_size, seed)
    te, te2 = CLIPTextModel(CLIPTextConfig(**text)), CLIPTextModelWithProjection(CLIPTextConfig(**text, projection_dim=32))
    unet = UNet2DConditionModel(sample_size=sample_size, cross_attention_dim=64, addition_embed_type="text_time",
                                addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32, **_UNET)
    sch = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1)
    StableDiffusionXLPipeline(unet=unet, vae=vae(), text_encoder=te, text_encoder_2=te2,
                              tokenizer=tok, tokenizer_2=tok, scheduler=sch).save_pretrained(out)
    return out


def char_t5_tokenizer(model_max_length: int = 32):
    """A character-level Unigram T5 tokenizer built in memory (no sentencepiece file) with T5's special-token
    ids (pad 0, eos 1, unk 2): the tiny pipelines' and the full-size rehearsal's (``benchmarks/rehearse.py``)."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    pieces += [(c, -2.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789,.-'"]
    pieces += [("\u2581" + c, -1.5) for c in "abcdefghijklmnopqrstuvwxyz"]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=model_max_length)


def _tiny_t5(out: Path, d_model: int):
    """A tiny T5 encoder and :func:`char_t5_tokenizer`."""
    from transformers import T5Config, T5EncoderModel

    tok = char_t5_tokenizer(32)
    te = T5EncoderModel(T5Config(vocab_size=len(tok), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=1,
                                 num_heads=2, relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
                                 decoder_start_token_id=0))
    return tok, te


def _flow_vae(sample_size: int, shift_factor: float, scaling_factor: float):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), latent_channels=4,
                         norm_num_groups=8, sample_size=sample_size * 2, shift_factor=shift_factor,
                         scaling_factor=scaling_factor)


def make_tiny_sd3(out: str | Path, *, sample_size: int = 16, seed: int = 0, shift: float = 3.0) -> Path:
    """A tiny SD3-architecture pipeline (MMDiT transformer, two CLIP encoders with projection + a tiny T5, a VAE
    with a shift factor, the flow-matching Euler scheduler with a static timestep shift, as SD 3.5)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    out = Path(out)
    tok, text, _ = _tiny_parts(out, sample_size, seed)
    te = CLIPTextModelWithProjection(CLIPTextConfig(**text, projection_dim=32))
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**text, projection_dim=32))
    tok3, te3 = _tiny_t5(out, 64)
    tr = SD3Transformer2DModel(sample_size=sample_size, patch_size=2, in_channels=4, out_channels=4, num_layers=2,
                               attention_head_dim=16, num_attention_heads=2, joint_attention_dim=64,
                               caption_projection_dim=32, pooled_projection_dim=64, pos_embed_max_size=32)
    sch = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    StableDiffusion3Pipeline(transformer=tr, scheduler=sch, vae=_flow_vae(sample_size, 0.0609, 1.5305),
                             text_encoder=te, tokenizer=tok, text_encoder_2=te2, tokenizer_2=tok,
                             text_encoder_3=te3, tokenizer_3=tok3).save_pretrained(out)
    return out


def make_tiny_flux(out: str | Path, *, sample_size: int = 16, seed: int = 0) -> Path:
    """A tiny FLUX.1-dev-architecture pipeline: double- and single-stream blocks with RoPE over (text, row, col)
    ids, a guidance embedding, packed 2x2 latent patches, CLIP pooled + T5 text, the dynamic (resolution-dependent)
    timestep shift of FLUX.1-dev's scheduler config."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel

    out = Path(out)
    tok, text, _ = _tiny_parts(out, sample_size, seed)
    te = CLIPTextModel(CLIPTextConfig(**text))
    tok2, te2 = _tiny_t5(out, 32)
    tr = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                                num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                                guidance_embeds=True, axes_dims_rope=(4, 4, 8))
    sch = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                          base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                          max_image_seq_len=4096)
    FluxPipeline(transformer=tr, scheduler=sch, vae=_flow_vae(sample_size, 0.1159, 0.3611), text_encoder=te,
                 tokenizer=tok, text_encoder_2=te2, tokenizer_2=tok2).save_pretrained(out)
    return out

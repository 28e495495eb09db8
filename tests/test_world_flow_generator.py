"""The world's rectified-flow generator (issues 30/31): a StableDiffusion3Pipeline made deterministically by one
command from the SD world generator's VAE and tokenizer, trained with the flow-matching target, loadable as a
user's SD 3.5 checkpoint without its T5 is, and drawing the world on held-out prompts."""

import pytest
import torch
from safetensors.torch import load_file

from vprefer.world.flow_generator import FlowPretrainConfig, encode, pretrain_flow_generator, shifted
from vprefer.world.models import SHIPPED

TINY = dict(images=16, batch_size=4, layers=1, heads=1, head_dim=16, text_width=32, save_fp16=False)


def _weights(folder):
    return {k: v for p in ("transformer/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                           "text_encoder_2/model.safetensors") for k, v in load_file(str(folder / p)).items()}


def test_shift_matches_the_schedulers_own_shifted_sigmas():
    """Training draws s from the density then shifts it as the sampler's schedule is shifted: checked against
    FlowMatchEulerDiscreteScheduler (wrong version tried by hand: no shift -> red)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    u = torch.linspace(1.0, 0.001, 1000)
    assert torch.allclose(shifted(u, 3.0), sched.sigmas.float(), atol=1e-5)


def test_a_rerun_writes_the_same_weights_the_seed_changes_them_and_the_pipeline_loads(tmp_path):
    from vprefer.diffusion import load_pipeline

    pretrain_flow_generator(tmp_path / "a", FlowPretrainConfig(steps=2, **TINY))
    pretrain_flow_generator(tmp_path / "b", FlowPretrainConfig(steps=2, **TINY))
    pretrain_flow_generator(tmp_path / "c", FlowPretrainConfig(steps=2, seed=1, **TINY))
    a, b, c = (_weights(tmp_path / x) for x in "abc")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    pipe = load_pipeline(str(tmp_path / "a"))  # a user's loader: the missing T5 is passed as None
    assert type(pipe).__name__ == "StableDiffusion3Pipeline" and pipe.text_encoder_3 is None
    assert pipe.vae.config.shift_factor == 0.0


def test_training_sees_what_the_pipeline_feeds_the_transformer():
    """The embeddings trained on are the pipeline's own encode_prompt (two CLIPs' penultimate states and
    pooled projections, zeros for the absent T5): otherwise sampling would condition on something else."""
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(SHIPPED["sd3"], text_encoder_3=None, tokenizer_3=None)
    prompts = ["a large red circle on a blue background", ""]
    ids = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids
    with torch.no_grad():
        emb, pooled = encode([pipe.text_encoder, pipe.text_encoder_2], ids)
        want, _, want_pooled, _ = pipe.encode_prompt(prompts, prompts, prompts, do_classifier_free_guidance=False)
    assert torch.allclose(emb, want, atol=1e-5) and torch.allclose(pooled, want_pooled, atol=1e-5)


@pytest.mark.slow
def test_the_shipped_flow_generator_draws_held_out_prompts_better_than_chance():
    """Recognisable and imperfect, like the SD world generator: on held-out combinations (never trained on),
    colour and background well above chance (1/6, 1/4), "all right" above chance (1/72) and below 0.9."""
    from vprefer.diffusion import load_pipeline
    from vprefer.world.generator_check import measure

    m = measure(load_pipeline(str(SHIPPED["sd3"])), n=22, styles=("descriptive",))["by_style"]["descriptive"]
    print(m)
    assert m["colour_right"] > 0.5 and m["background_right"] > 0.5 and 0.1 < m["all_right"] < 0.9

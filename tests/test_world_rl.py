"""Fine-tuning the world's pretrained generator, checked on the world's truth for prompts it never trained on
(issue 28, item 6). Small on purpose: the closed-loop benchmark measures the full effect on samples.

Wrong version each test exists to catch (each tried by hand once): pairs whose prompt is not the one the
winner answers (the prompt ignored) must not pass the held-out truth check a correct loop passes.
"""

import random

import pytest

from vprefer.rl import DiffusionDPOConfig, DiffusionDPOTrainer
from vprefer.rl.dpo import dpo_pairs
from vprefer.testing.stand_ins import ensure_pipeline
from vprefer.world import world_prompts
from vprefer.world.prompts import HELD_OUT_COMBOS
from vprefer.world.reward_check import write_world_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("world-rl")
    sd = d / "world-sd"
    ensure_pipeline(str(sd), True)  # the shipped generator, copied
    train = write_world_run(d / "train", world_prompts(43, 0), sets_per_prompt=1, images_per_set=6, judge_noise=0.0)
    held = write_world_run(d / "held", world_prompts(len(HELD_OUT_COMBOS), 0, held_out=True), sets_per_prompt=2,
                           images_per_set=6, seed=1, held_out=True, judge_noise=0.0)
    return sd, train, held


def _dpo(tmp_path, sd, pairs):
    cfg = DiffusionDPOConfig(output_dir=str(tmp_path / "dpo"), pretrained=str(sd), resolution=32, max_steps=60,
                             learning_rate=1e-3, per_device_train_batch_size=8, beta=500.0, sample_latents=False,
                             proportion_empty_prompts=0.0, eval_prompts=[], logging_steps=100, save_steps=0,
                             report_to=[], seed=0)
    tr = DiffusionDPOTrainer(cfg, pairs=pairs)
    for _ in range(cfg.max_steps):
        tr.update()
    return tr


def test_dpo_on_the_world_generator_learns_what_held_out_prompts_ask(world, tmp_path):
    """Trained on truth pairs of training prompts; measured by the implicit reward on truth pairs of held-out
    prompts (new (colour, shape, background) triples): a correct DPO prefers the image that does what the
    held-out prompt says. With each pair's prompt swapped for another pair's (the prompt ignored), the
    same images and labels teach nothing a held-out prompt can use."""
    sd, train, held = world
    pairs = dpo_pairs(train, "prompt_following", ["truth"])
    held_pairs = random.Random(0).sample(dpo_pairs(held, "prompt_following", ["truth"]), 96)
    right = _dpo(tmp_path / "right", sd, pairs).implicit_accuracy(held_pairs, draws=4)
    prompts = [p["prompt"] for p in pairs]
    random.Random(1).shuffle(prompts)
    wrong = _dpo(tmp_path / "wrong", sd, [{**p, "prompt": q} for p, q in zip(pairs, prompts)]).implicit_accuracy(
        held_pairs, draws=4)
    assert right >= 0.6 and right >= wrong + 0.1, (right, wrong)

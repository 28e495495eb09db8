"""benchmarks/rehearse.py's recipe handling and hub configurations (the full-size runs are benchmarks)."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import rehearse  # noqa: E402

SPECS = yaml.safe_load(rehearse.CONFIGS.read_text())


def test_every_rehearsed_recipe_names_an_architecture_of_the_hub_configs():
    for rf in rehearse.ALL + rehearse.FLOW:
        r = yaml.safe_load((REPO / rf).read_text())
        names = [g["pretrained"] for g in r["generators"]] if "generators" in r else \
            [r["backbone"]["name_or_path"]] if "backbone" in r else [r["pretrained"]]
        assert all(n in SPECS for n in names), (rf, names)


def test_the_rehearsal_reductions_replace_only_what_they_name():
    flux = rehearse.reduced(SPECS["black-forest-labs/FLUX.1-dev"])
    assert (flux["transformer"]["num_layers"], flux["transformer"]["num_single_layers"]) == (2, 4)
    assert flux["transformer"]["attention_head_dim"] == 128 and flux["transformer"]["in_channels"] == 64
    assert flux["text_encoder_2"]["num_layers"] == 2 and flux["text_encoder_2"]["d_model"] == 4096
    assert "rehearsal" not in flux
    real = SPECS["black-forest-labs/FLUX.1-dev"]
    assert real["transformer"]["num_layers"] == 19 and real["text_encoder_2"]["num_layers"] == 24  # untouched
    sd3 = rehearse.reduced(SPECS["stabilityai/stable-diffusion-3.5-medium"])
    assert sd3["transformer"]["num_layers"] == 24 and sd3["text_encoder_3"]["num_layers"] == 2
    assert sd3["vae"]["latent_channels"] == 16 and sd3["vae"]["shift_factor"] == 0.0609


def test_a_grpo_recipe_is_changed_only_in_step_counts_and_with_cpu_batch_its_group():
    recipe = yaml.safe_load((REPO / "rl/grpo-sd35m.yaml").read_text())
    r, changed = rehearse.override(recipe, "grpo", 1, True, 256, 2)
    assert (r["max_steps"], r["group_size"], r["groups_per_step"], r["num_steps"], r["resolution"]) == (1, 2, 1, 2, 256)
    assert {k: v for k, v in r.items() if k not in {c.split("=")[0] for c in changed}} == \
        {k: v for k, v in recipe.items() if k not in {c.split("=")[0] for c in changed}}
    assert "group_size=2" in changed

"""Build the tiny stand-in models a *tiny* recipe names, where they are missing.

Recipes for tests and the demo point at folders under ``.cache/`` and mark them
as stand-ins (``tiny:`` for a VP-Score backbone, ``create_tiny_if_missing`` for a
diffusers pipeline). The library itself never builds them (production code does
not import ``vprefer.testing``); the CLI and the demo call these first, so
``vprefer rl refl --recipe rl/refl-tiny.yaml`` works on a fresh clone.
"""

from __future__ import annotations

from pathlib import Path


def _world_copy(path: str) -> bool:
    """A stand-in folder named ``world-sd``, ``world-clip`` or ``world-lm`` is a copy of the model of that kind
    pretrained on the learnable world (shipped in ``vprefer/world/models``): made here, True."""
    from vprefer.world.models import copy_shipped, shipped_name

    name = shipped_name(path)
    if name is None:
        return False
    copy_shipped(name, path)
    return True


def ensure_pipeline(path: str, is_stand_in: bool) -> None:
    """A tiny random pipeline, or the world's pretrained one (a folder named ``world-sd``). The folder's name
    says the architecture: ``tiny-sd3*`` SD3, ``tiny-flux*`` FLUX, ``tiny-sdxl*`` SDXL, anything else SD 1.5."""
    if is_stand_in and not Path(path).exists() and not _world_copy(path):
        from vprefer.testing import tiny_pipelines as tp

        name = Path(path).name
        make = next((f for prefix, f in (("tiny-sd3", tp.make_tiny_sd3), ("tiny-flux", tp.make_tiny_flux),
                                         ("tiny-sdxl", tp.make_tiny_sdxl)) if name.startswith(prefix)), tp.make_tiny_sd)
        make(path)


def ensure_backbone(recipe) -> None:
    """``recipe``: a RewardRecipe whose backbone may be a tiny stand-in."""
    bb = recipe.backbone
    if bb.tiny == "world-clip" and not Path(bb.name_or_path).exists():
        from vprefer.world.models import copy_shipped

        copy_shipped("clip", bb.name_or_path)  # whatever the folder's name: the recipe says which model
    elif bb.tiny and not Path(bb.name_or_path).exists():
        from vprefer.testing.tiny_models import make_tiny_backbone

        make_tiny_backbone(bb.tiny, bb.name_or_path)


def ensure_generators(recipe) -> None:
    """``recipe``: a GenerateRecipe whose generators may be tiny stand-ins."""
    for g in recipe.generators:
        ensure_pipeline(g.pretrained, g.create_tiny_if_missing)


def ensure_causal_lm(path: str, is_stand_in: bool) -> None:
    """A stand-in policy folder named ``world-lm`` is the rewriter pretrained on the stand-in world (copied
    from the package); any other is a random tiny LM."""
    if is_stand_in and not Path(path).exists() and not _world_copy(path):
        from vprefer.testing.tiny_lm import make_tiny_causal_lm

        make_tiny_causal_lm(path)

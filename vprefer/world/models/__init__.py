"""The world's pretrained models that vprefer ships (see README.md here for the commands that remake them).

Recipes name a working folder whose last part is ``world-sd``, ``world-sd3``, ``world-clip`` or ``world-lm`` (for
example ``.cache/world-sd``) and mark it as a stand-in; the CLI and the demo copy the shipped model there on
first use, so a run never writes into the package.
"""

from __future__ import annotations

import shutil
from pathlib import Path

HERE = Path(__file__).parent
SHIPPED = {"sd": HERE / "generator", "sd3": HERE / "flow_generator", "clip": HERE / "clip", "lm": HERE / "lm"}
FOLDER_NAMES = {f"world-{k}": k for k in SHIPPED}  # a stand-in folder with one of these names is a copy


def shipped_name(path: str | Path) -> str | None:
    """``sd``, ``sd3``, ``clip`` or ``lm`` when ``path`` names a stand-in copy of a shipped world model, else None."""
    return FOLDER_NAMES.get(Path(path).name)


def copy_shipped(name: str, dest: str | Path) -> Path:
    """Copy the shipped model ``name`` (``sd``, ``sd3``, ``clip`` or ``lm``) to ``dest``; where a checkout lacks it,
    pretrain it there with the defaults that made it (minutes)."""
    src, dest = SHIPPED[name], Path(dest)
    if any(src.glob("*.json")) and any(src.rglob("*.safetensors")):
        shutil.copytree(src, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns("README.md", "__pycache__"))
    elif name == "clip":
        from vprefer.world.backbone import pretrain_backbone

        pretrain_backbone(dest, log=None)
    elif name == "lm":
        from vprefer.world.lm import pretrain_lm

        pretrain_lm(dest, log=None)
    elif name == "sd3":
        from vprefer.world.flow_generator import pretrain_flow_generator

        pretrain_flow_generator(dest)
    else:
        from vprefer.world.generator import pretrain_generator

        pretrain_generator(dest)
    return dest

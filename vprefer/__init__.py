"""vprefer: multimodal-LLM judgements -> preference data -> VP-Score -> better generators.

The whole pipeline from one import, one public name per job (the CLI command of the same name does the same)::

    import vprefer

    vprefer.ingest("my_images/manifest.jsonl", "runs/a")                    # or vprefer.import_file(...)
    vprefer.annotate("runs/a", vprefer.AnnotatorPreset.load("gpt-4o"), max_cost=20.0)
    vprefer.make_pairs("runs/a")                                              # rankings + preference pairs
    vprefer.train_reward(vprefer.RewardRecipe.load("vp-score-clip-lora"), ["runs/a"], "runs/vp-score")
    rm = vprefer.VPScore.from_pretrained("runs/vp-score")
    rm.score("a red cube on a table", ["a.png", "b.png"])                    # one prompt, many images

Names are resolved on first use, so ``import vprefer`` stays cheap (no torch until a model is asked for).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {  # public name -> the module that defines it
    "Run": "vprefer.store", "summarize": "vprefer.info",
    "import_file": "vprefer.exchange", "export_run": "vprefer.exchange",
    "AnnotatorPreset": "vprefer.annotate", "make_pairs": "vprefer.annotate",
    "batch_status": "vprefer.annotate",
    "GenerateRecipe": "vprefer.generate", "sample_prompts": "vprefer.prompts", "upsample": "vprefer.prompts",
    "RewardRecipe": "vprefer.reward", "VPScore": "vprefer.reward", "train_reward": "vprefer.reward.train",
    "score_run": "vprefer.reward.scoring", "evaluate_run": "vprefer.reward.evaluate",
    "VpreferError": "vprefer.errors",
}

_JOBS = ("annotate", "caption", "generate", "ingest")  # modules that are called as their job (vprefer.api)

__all__ = sorted([*_API, *_JOBS]) + ["__version__"]


def __getattr__(name: str):
    if name in _JOBS:
        return importlib.import_module(f"vprefer.{name}")  # binds itself here as it loads
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value  # looked up once
        return value
    raise AttributeError(f"module 'vprefer' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__


def _quiet() -> None:
    from vprefer.progress import quiet_notices

    quiet_notices()


_quiet()

"""The closed loop on the learnable world (issue 28): judge -> pairs -> VP-Score -> ReFL / DPO / GRPO, measured
on the truth for prompts and seeds no step of it trained on.

Every stage is vprefer's own code path, as a user runs it: prompts are sampled into a run, image sets made
by ``vprefer generate`` with the world's pretrained SD-architecture generator, annotated through the real
``openai`` client by the stand-in judge over HTTP (with judge noise and a first-position bias, so it is
right often, not always), pairs built, VP-Score trained with LoRA on the world's pretrained CLIP, and each
loop run by its trainer from its shipped ``*-world`` recipe. Only the measurement is the world's: the
truth reader on held-out prompts and seeds (:mod:`vprefer.world.truth_eval`).

``benchmarks/closed_loop.py`` runs it at full size; the demo runs it small.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from vprefer.world.prompts import HELD_OUT_COMBOS, TRAIN_COMBOS, prompt_of
from vprefer.world.scenes import SIZES, Scene
from vprefer.world import truth_eval

LOOPS = ("refl", "refl-reg-only", "dpo", "grpo", "grpo-gen", "grpo-gen-judge", "grpo-gen-truth", "refl-flow", "dpo-flow",
         "grpo-gen-flow")
# grpo: the prompt rewriter (TRL); grpo-gen: online GRPO on the generator against VP-Score, -judge: against the
# stand-in judge behind a reward server (non-differentiable), -truth: against the truth reader itself (the ceiling
# of what any reward could give GRPO at this budget; no user has it); *-flow: the same loops on the world's
# rectified-flow (SD3-architecture) generator
# ReFL's pre-training regulariser trains on drawn (true) images, which alone could improve the generator: the
# control runs ReFL with the reward's gradient off (grad_scale 0), so the reward's own share is ReFL minus it
CONTROL = {"refl-reg-only": {"grad_scale": 0.0}}


@dataclass
class LoopConfig:
    """Sizes of one closed loop; the defaults are the benchmark's (``LoopConfig.small()`` is the demo's)."""

    descriptive_per_combo: int = 2     # training prompts: each training combination in plain words and this many descriptive ones
    images_per_set: int = 4            # from the base generator, per training prompt
    other_images_per_set: int = 4      # from the world's "other generators" (drawn; each attribute right half the time)
    permutations: int = 2              # orders the judge sees each set in
    judge_noise: float = 1.0
    position_bias: float = 0.4
    reward_epochs: float = 1           # VP-Score's epochs over the judged run (more overfits the judge's noise)
    refl_steps: int = 240
    dpo_steps: int = 2000
    grpo_steps: int = 100
    grpo_gen_steps: int = 240          # online GRPO on the generator: updates (each 2 prompts x 8 images)
    grpo_gen_prompts: str = "plain"    # its prompts: "plain" (the training combinations as users type them) or "all"
    dpo_flow_steps: int = 600
    eval_seeds: int = 12               # per held-out prompt (11 held-out combinations)
    train_eval_seeds: int = 3          # per training combination, seeds no step saw
    loops: tuple = ("refl", "refl-reg-only", "dpo", "grpo")  # issue 28's; benchmarks/closed_loop.py runs all of LOOPS
    seed: int = 0
    overrides: dict = field(default_factory=dict)  # {"refl": {...}, "dpo": {...}, "grpo": {...}} recipe fields

    @classmethod
    def small(cls) -> "LoopConfig":
        return cls(descriptive_per_combo=0, permutations=1, reward_epochs=3, refl_steps=30, dpo_steps=60,
                   grpo_steps=4, eval_seeds=4, train_eval_seeds=0, loops=("refl", "dpo", "grpo"))


# the generator settings every stage shares (those of the world generator's pretraining check)
SAMPLE_STEPS, GUIDANCE, RESOLUTION = 20, 3.0, 32
EVAL_SEED = 1_000_000  # evaluation seeds start here; image sets and training use seeds below 1000


def training_prompts(c: LoopConfig) -> list[str]:
    """Each training combination's plain prompt plus ``descriptive_per_combo`` descriptive ones (sizes vary)."""
    rng = random.Random(c.seed)
    out = []
    for combo in TRAIN_COMBOS:
        out.append(prompt_of(Scene(*combo)))
        for k in range(c.descriptive_per_combo):
            out.append(prompt_of(Scene(*combo, size=rng.choice(SIZES)), "descriptive", seed=rng.randrange(1 << 30)))
    return list(dict.fromkeys(out))


GRPO_GEN_PROMPTS = ("plain", "all")  # the values of LoopConfig.grpo_gen_prompts


def grpo_gen_prompts(c: LoopConfig) -> list[str]:
    """Online GRPO's prompts. It needs prompts only (no images, no labels), so the loop gives it the style
    users type and the benchmark asks in: the training combinations' plain prompts (``grpo_gen_prompts:
    plain``, the default). Descriptive prompts name a size, and rewarding the named size there pulls
    against what helps a plain prompt (a shape drawn large is read right far more often); "all" trains on
    every training prompt, as the other loops do. Either way no held-out combination is ever a prompt."""
    if c.grpo_gen_prompts not in GRPO_GEN_PROMPTS:
        raise ValueError(f"grpo_gen_prompts must be 'plain' or 'all' (got {c.grpo_gen_prompts!r})")
    if c.grpo_gen_prompts == "all":
        return training_prompts(c)
    return [prompt_of(Scene(*combo)) for combo in TRAIN_COMBOS]


def held_out_items(c: LoopConfig) -> tuple[list[str], list[int]]:
    """(prompt, seed) items to measure on: held-out combinations' plain prompts, ``eval_seeds`` seeds each."""
    prompts = [prompt_of(Scene(*combo)) for combo in HELD_OUT_COMBOS]
    items = [(p, EVAL_SEED + k) for p in prompts for k in range(c.eval_seeds)]
    return [p for p, _ in items], [s for _, s in items]


def seen_items(c: LoopConfig) -> tuple[list[str], list[int]]:
    """Training combinations' plain prompts with new seeds: did the loop fix what it trained on?"""
    prompts = [prompt_of(Scene(*combo)) for combo in TRAIN_COMBOS]
    items = [(p, EVAL_SEED + 500 + k) for p in prompts for k in range(c.train_eval_seeds)]
    return [p for p, _ in items], [s for _, s in items]


@dataclass
class Stages:
    """Where one loop's pieces live under its output folder."""

    out: Path

    def __post_init__(self):
        self.out = Path(self.out)
        self.cache, self.run, self.data = self.out / ".cache", self.out / "run", self.out / "drawn"
        self.sd, self.clip, self.lm = self.cache / "world-sd", self.cache / "world-clip", self.cache / "world-lm"
        self.sd3 = self.cache / "world-sd3"
        self.vpscore = self.out / "vp-score"

    def base(self, name: str) -> Path:
        """The generator a loop starts from: the rectified-flow one for ``*-flow`` loops."""
        return self.sd3 if name.endswith("-flow") else self.sd


def prepare(s: Stages) -> None:
    """The world's shipped models, copied into the loop's cache (runs never write into the package)."""
    from vprefer.world.models import copy_shipped

    for name, path in (("sd", s.sd), ("sd3", s.sd3), ("clip", s.clip), ("lm", s.lm)):
        if not path.exists():
            copy_shipped(name, path)


def image_sets(s: Stages, c: LoopConfig) -> None:
    """The preference data's images, from several generators as VisionPrefer's were: the training prompts are
    sampled into the run, the base generator makes ``images_per_set`` images each (vprefer generate), and the
    world's "other generators" add ``other_images_per_set`` drawn ones (scenes that get each named attribute
    right half the time and vary size, artefacts and the badge, so every aspect has something to judge),
    ingested under the same prompt: one set per prompt, as the judge sees it."""
    from vprefer.generate import GenerateRecipe, generate
    from vprefer.ingest import ingest
    from vprefer.prompts.sample import sample_prompts
    from vprefer.world.judge_check import scene_for
    from vprefer.world.scenes import draw

    s.out.mkdir(parents=True, exist_ok=True)
    prompts = training_prompts(c)
    src = s.out / "prompts.txt"
    src.write_text("".join(p + "\n" for p in prompts))
    sample_prompts(src, s.run)
    recipe = GenerateRecipe.load("generators-world")
    g = recipe.generators[0]
    g.pretrained, g.images_per_prompt, g.seed = str(s.sd), c.images_per_set, c.seed
    generate(s.run, recipe)
    if not c.other_images_per_set:
        return
    rng, lines = random.Random(c.seed + 1), []
    (s.out / "other" / "img").mkdir(parents=True, exist_ok=True)
    for k, prompt in enumerate(prompts):
        paths = [f"img/{k:04d}_{j}.png" for j in range(c.other_images_per_set)]
        for j, path in enumerate(paths):
            draw(scene_for(rng, prompt), RESOLUTION, seed=c.seed * 1_000_003 + k * 31 + j).save(s.out / "other" / path)
        lines.append({"prompt": prompt, "images": paths, "generator": "world-other", "seeds": list(range(len(paths)))})
    (s.out / "other" / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    ingest(s.out / "other" / "manifest.jsonl", s.run)


def judge(s: Stages, c: LoopConfig):
    """The stand-in judge annotates every set over HTTP; pairs are built from its answers."""
    from vprefer.annotate import AnnotatorPreset, annotate
    from vprefer.annotate.pairs import build_pairs, save_pairs
    from vprefer.store import Run
    from vprefer.judge_server.server import Faults, JudgeServer

    srv = JudgeServer(faults=Faults(judge_noise=c.judge_noise, position_bias=c.position_bias, seed=c.seed)).start()
    try:
        preset = AnnotatorPreset.load("local-judge", base_url=srv.base_url, permutations=c.permutations, concurrency=8)
        res = annotate(s.run, preset)
    finally:
        srv.stop()
    run = Run(s.run)
    save_pairs(run, *build_pairs(run))
    return res


def reward_model(s: Stages, c: LoopConfig) -> dict:
    """VP-Score: LoRA on the world CLIP, trained on the judge's pairs (reward/vp-score-world.yaml)."""
    from vprefer.reward.recipe import RewardRecipe
    from vprefer.reward.train import train_reward

    r = RewardRecipe.load("vp-score-world")
    r.backbone.name_or_path = str(s.clip)
    r.training.num_train_epochs, r.training.seed = c.reward_epochs, c.seed
    r.training.logging_steps, r.training.save_steps = 10_000, 10_000
    return train_reward(r, [s.run], s.vpscore)


def drawn_data(s: Stages, n: int = 256, seed: int = 0) -> Path:
    """Real data for ReFL's pre-training regulariser: drawn images of training combinations with descriptive
    captions (the world's LAION), ingested as a run."""
    from vprefer.ingest import ingest
    from vprefer.world.scenes import draw

    rng = random.Random(seed)
    (s.data / "img").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        scene = Scene(*TRAIN_COMBOS[i % len(TRAIN_COMBOS)], size=rng.choice(SIZES))
        draw(scene, RESOLUTION, seed=seed * 7919 + i).save(s.data / "img" / f"{i:05d}.png")
        lines.append({"prompt": prompt_of(scene, "descriptive", seed=rng.randrange(1 << 30)),
                      "images": [f"img/{i:05d}.png"], "generator": "drawn"})
    (s.data / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    ingest(s.data / "manifest.jsonl", s.data / "run")
    return s.data / "run"


def _config(cls, recipe: str, s: Stages, name: str, c: LoopConfig, steps: int):
    from vprefer.rl.common import config_from_yaml

    over = {**CONTROL.get(name, {}), **c.overrides.get(name, {})}
    return config_from_yaml(cls, recipe, output_dir=str(s.out / name), pretrained=str(s.base(name)), max_steps=steps,
                            seed=c.seed, report_to=[], disable_tqdm=True, **over)


def run_refl(s: Stages, c: LoopConfig, name: str = "refl") -> Path:
    from vprefer.rl import ReFLConfig, ReFLTrainer
    from vprefer.rl.refl import run_images

    data = s.data / "run" if (s.data / "run").exists() else drawn_data(s)
    cfg = _config(ReFLConfig, "refl-world-flow" if name.endswith("-flow") else "refl-world", s, name, c, c.refl_steps)
    ReFLTrainer(cfg, prompts=training_prompts(c), reward=str(s.vpscore), pretrain_data=run_images(data)).train()
    return s.out / name


def run_dpo(s: Stages, c: LoopConfig, name: str = "dpo") -> Path:
    from vprefer.rl import DiffusionDPOConfig, DiffusionDPOTrainer
    from vprefer.rl.dpo import dpo_pairs

    flow = name.endswith("-flow")
    cfg = _config(DiffusionDPOConfig, "dpo-world-flow" if flow else "dpo-world", s, name, c,
                  c.dpo_flow_steps if flow else c.dpo_steps)
    DiffusionDPOTrainer(cfg, pairs=dpo_pairs(s.run, cfg.aspect, cfg.annotators), reward=str(s.vpscore)).train()
    return s.out / name


def run_grpo_gen(s: Stages, c: LoopConfig, name: str) -> Path:
    """Online GRPO on the generator against VP-Score, or (``grpo-gen-judge``) against the stand-in judge served
    by a reward server on 127.0.0.1: integer 1-5 scores with the judge's noise, no gradient anywhere."""
    from vprefer.rl import GRPOConfig, GRPOTrainer
    from vprefer.rl.reward_server import RewardServer
    from vprefer.world.judge_check import JudgeReward

    cfg = _config(GRPOConfig, "grpo-world-flow" if name.endswith("-flow") else "grpo-world", s, name, c,
                  c.grpo_gen_steps)
    if name == "grpo-gen-truth":
        from vprefer.world.judge_check import TruthReward

        GRPOTrainer(cfg, prompts=grpo_gen_prompts(c), reward=TruthReward()).train()
        return s.out / name
    if name != "grpo-gen-judge":
        GRPOTrainer(cfg, prompts=grpo_gen_prompts(c), reward=str(s.vpscore)).train()
        return s.out / name
    with RewardServer(JudgeReward(noise=c.judge_noise, seed=c.seed), {"prompt_following": 1.0}).start() as srv:
        cfg.rewards = [srv.url]
        GRPOTrainer(cfg, prompts=grpo_gen_prompts(c)).train()
    return s.out / name


def run_grpo(s: Stages, c: LoopConfig) -> dict:
    from vprefer.recipes import load_config
    from vprefer.rl.prompt_opt import PromptOptConfig, PromptOptTrainer

    cfg = load_config(PromptOptConfig, "grpo-prompts-world", "rl", output_dir=str(s.out / "grpo"), max_steps=c.grpo_steps,
                      seed=c.seed, disable_tqdm=True, **c.overrides.get("grpo", {}))
    cfg.policy, cfg.generator = str(s.lm), {**cfg.generator, "pretrained": str(s.sd)}
    return PromptOptTrainer(cfg, prompts=training_prompts(c), reward=str(s.vpscore)).train()


def measure(s: Stages, c: LoopConfig, name: str, items: tuple[list[str], list[int]], rm, aspects: dict,
            before: truth_eval.Reading | None = None) -> dict:
    """Truth before/after for one loop on (prompt, seed) items: the base generator, then with the loop's
    result (a generator LoRA, or the rewriter's rewrites of the asked prompts). ``before``: the base
    generator's reading of the same items, when another loop's measurement already made it."""
    from vprefer.diffusion import load_pipeline

    prompts, seeds = items
    pipe = load_pipeline(str(s.base(name)))
    kw = dict(reward=rm, reward_aspects=aspects, steps=SAMPLE_STEPS, guidance=GUIDANCE)
    if before is None or (before.prompts, before.seeds) != (list(prompts), list(seeds)):
        before = truth_eval.read(pipe, prompts, seeds, **kw)
    if name == "grpo":
        from vprefer.prompts.local import load_policy, rewrite

        unique = list(dict.fromkeys(prompts))
        rw = {}
        for tag, adapter in (("zero_shot", None), ("trained", s.out / "grpo")):
            model, tok = load_policy(str(s.lm), adapter=adapter, device="cpu")
            rw[tag] = dict(zip(unique, rewrite(model, tok, unique, "descriptive")))
        after = truth_eval.read(pipe, prompts, seeds, made_from=[rw["trained"][p] for p in prompts], **kw)
        zero = truth_eval.read(pipe, prompts, seeds, made_from=[rw["zero_shot"][p] for p in prompts], **kw)
        # what GRPO itself added: the trained rewriter against the pretrained one it started from
        extra = {"vs_zero_shot_rewriter": truth_eval.compare(zero, after),
                 "examples": [[p, rw["zero_shot"][p], rw["trained"][p]] for p in unique[:4]]}
    else:
        pipe.load_lora_weights(str(s.out / name))
        after = truth_eval.read(pipe, prompts, seeds, **kw)
        extra = {}
    return {**truth_eval.compare(before, after), "reward_accuracy_before": truth_eval.reward_accuracy(before),
            **extra, "_readings": (before, after)}


def finished(s: Stages, name: str) -> bool:
    """Whether a stage's result is on disk (a rerun into the same folder skips it; delete it to redo it)."""
    from vprefer.store import Run

    if name == "image sets":
        return (s.run / "manifest.json").exists() and Run(s.run).has("pairs")
    marks = {"VP-Score": s.vpscore / "heads.safetensors", "grpo": s.out / "grpo" / "adapter_model.safetensors"}
    marks.update({n: s.out / n / "pytorch_lora_weights.safetensors" for n in LOOPS if n != "grpo"})
    return name in marks and marks[name].exists()


def closed_loop(out: str | Path, c: LoopConfig | None = None, *, log: Callable[[str], None] = print) -> dict:
    """Run the whole loop into ``out`` and return its figures (also written to ``out/closed_loop.json``), with
    a before/after grid per loop of the held-out prompts (``out/grids/NAME.png``). A rerun into the same
    folder keeps the finished stages (their outputs on disk) and measures again: the same sizes must be
    asked."""
    from vprefer.reward import VPScore

    c = c or LoopConfig()
    s = Stages(Path(out))
    t0 = time.monotonic()
    result: dict = {"config": asdict(c), "seconds": {}}

    def stage(name: str, fn):
        if finished(s, name):
            log(f"{name}: kept from an earlier run ({time.monotonic() - t0:.0f} s)")
            return None
        log(f"{name} ({time.monotonic() - t0:.0f} s)")
        t = time.monotonic()
        r = fn()
        result["seconds"][name] = round(time.monotonic() - t, 1)
        return r

    stage("models", lambda: prepare(s))
    ann = stage("image sets", lambda: (image_sets(s, c), judge(s, c))[1])
    if ann is not None:
        result["annotation"] = {"ok": ann.ok, "invalid": ann.invalid, "cost_usd": ann.cost_usd}
    stage("VP-Score", lambda: reward_model(s, c))
    rm = VPScore.from_pretrained(s.vpscore, device="cpu")
    runners = {"refl": run_refl, "dpo": run_dpo, "grpo": run_grpo,
               "refl-reg-only": lambda s, c: run_refl(s, c, "refl-reg-only"),
               "refl-flow": lambda s, c: run_refl(s, c, "refl-flow"), "dpo-flow": lambda s, c: run_dpo(s, c, "dpo-flow"),
               **{n: (lambda s, c, n=n: run_grpo_gen(s, c, n)) for n in LOOPS if n.startswith("grpo-gen")}}
    for name in c.loops:
        stage(name, lambda: runners[name](s, c))
    aspects, base = {"prompt_following": 1.0}, {}
    for name in c.loops:
        for where, items in (("held_out", held_out_items(c)), ("seen", seen_items(c))):
            if not items[0]:
                continue
            key = (where, str(s.base(name)))  # the base generator's reading, shared by loops that start from it
            r = stage(f"measure {name} ({where})", lambda: measure(s, c, name, items, rm, aspects, base.get(key)))
            base[key] = r["_readings"][0]
            result.setdefault(name, {})[where] = {k: v for k, v in r.items() if not k.startswith("_")}
            if where == "held_out":
                truth_eval.grid(*r["_readings"], s.out / "grids" / f"{name}.png",
                                title=f"{name}: before (top) / after, held-out prompts")
            log(truth_eval.line(f"{name} {where}", r))
            if "vs_zero_shot_rewriter" in r:
                log(truth_eval.line(f"{name} {where}, trained vs pretrained rewriter", r["vs_zero_shot_rewriter"]))
    result["seconds"]["total"] = round(time.monotonic() - t0, 1)
    (s.out / "closed_loop.json").write_text(json.dumps(result, indent=1, default=str))
    return result

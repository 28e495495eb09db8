"""Image sets from several generators: diffusers pipelines (VisionPrefer used SD1.5, SD2.1, Dreamlike Photoreal
2.0, SDXL; SD 3.5 and FLUX.1 run through the same pipeline call, FLUX's ``guidance`` being its embedded
guidance) and OpenAI-protocol image endpoints (``kind: openai-images``: DALL-E 3, gpt-image-1; see
:mod:`vprefer.generate.api`), so one image set may mix open and proprietary generators.

For every prompt of the run, ``images_per_prompt`` images from each generator,
with seeds ``seed, seed + 1, ...``. Resumable: an image whose (prompt,
generator, seed) is already in the ``images`` table is not generated again;
rows are appended after every batch, so a crash loses at most one batch.
Under ``accelerate launch`` the prompts are split across processes (parts are
appended concurrently; the store claims part names atomically).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from vprefer import schema
from vprefer.generate.api import Endpoint, ImageAPISpec, generate_api, spent
from vprefer.images import check_bytes
from vprefer.ingest import store_image
from vprefer.recipes import Recipe, RecipeError, find_asset
from vprefer.store import Result, Run, as_run


class GeneratorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    kind: Literal["diffusers", "openai-images"] = "diffusers"
    pretrained: Optional[str] = Field(None, description="diffusers: hub id or folder")
    api: Optional[ImageAPISpec] = Field(None, description="openai-images: the endpoint, model, size, price")
    scheduler: Optional[str] = Field(None, description="a diffusers scheduler class, e.g. DPMSolverMultistepScheduler")
    steps: int = Field(30, ge=1)
    guidance: float = 7.5
    resolution: int = Field(512, ge=8)
    images_per_prompt: int = Field(1, ge=1)
    seed: int = 0
    dtype: Literal["float16", "bfloat16", "float32"] = Field(
        "float16", description="weights on a GPU (CPU: float32); bfloat16 for SD 3.5 and FLUX, whose activations "
                               "overflow float16")
    create_tiny_if_missing: bool = False

    @model_validator(mode="after")
    def _kind_has_its_fields(self) -> "GeneratorSpec":
        if self.kind == "diffusers" and not self.pretrained:
            raise ValueError(f"generator {self.name!r}: a diffusers generator needs 'pretrained'")
        if self.kind == "openai-images" and self.api is None:
            raise ValueError(f"generator {self.name!r}: an openai-images generator needs 'api' (model, price_per_image)")
        return self

    def endpoint(self) -> Endpoint:
        return Endpoint(self.name, self.api)


class GenerateRecipe(Recipe):
    generators: list[GeneratorSpec]
    batch_size: int = Field(4, ge=1)
    negative_prompt: Optional[str] = None

    @classmethod
    def load(cls, name_or_path: str) -> "GenerateRecipe":
        return cls.from_yaml(find_asset(name_or_path, "rl"))


def load_generator(spec: GeneratorSpec, device: str):
    """The diffusers pipeline a generator spec names, with its scheduler (fp16 on a GPU)."""
    from vprefer.diffusion import load_pipeline, stand_in_must_exist

    stand_in_must_exist(spec.pretrained, spec.create_tiny_if_missing)
    dtype = getattr(torch, spec.dtype) if device == "cuda" else None
    pipe = load_pipeline(spec.pretrained, dtype=dtype, device=device)
    if spec.scheduler:
        import diffusers

        cls = getattr(diffusers, spec.scheduler, None)
        if cls is None:
            raise RecipeError(f"generator {spec.name}: unknown diffusers scheduler {spec.scheduler!r}")
        pipe.scheduler = cls.from_config(pipe.scheduler.config)
    return pipe


@dataclass
class GenerateResult(Result):
    generated: int = 0  # images made now (by this process, when several share the work)
    skipped: int = 0  # already present for their prompt, generator and seed
    todo: int = 0  # images to make (a dry run stops here)
    cost_usd: float = 0.0  # paid now to API generators
    est_cost_usd: float = 0.0  # estimated for the API images to make
    resent: int = 0  # API requests in flight at an earlier crash, sent again (the images API keeps no copy)
    errors: int = 0  # API requests that failed (rerun to retry)
    stopped_for_budget: bool = False


def generate(run_dir: str | Path | Run, recipe: GenerateRecipe, *, limit: int | None = None,
             on_image: Callable[[str, str, int], None] | None = None, max_cost: float | None = None,
             dry_run: bool = False) -> GenerateResult:
    """``max_cost``: cap (USD) on this run's total spend on API generators; ``dry_run``: count and price, make
    nothing."""
    from vprefer.dist import state as dist_state

    state = dist_state()
    run = as_run(run_dir)
    prompts = run.read("prompts").select("prompt_id", "prompt")
    if limit:
        prompts = prompts.head(limit)
    have = {tuple(r) for r in run.read_or_empty("images").select("prompt_id", "generator", "seed").iter_rows()}
    counts = GenerateResult()
    rows_all = prompts.rows()
    if dry_run:
        return _dry_run(run, recipe, rows_all, have)
    api = [g.endpoint() for g in recipe.generators if g.kind == "openai-images"]
    with state.split_between_processes(rows_all) as mine, \
            run.command("generate", {**recipe.resolved(), "max_cost": max_cost}) as entry:
        for spec in recipe.generators:
            todo = [(pid, text, spec.seed + k) for pid, text in mine for k in range(spec.images_per_prompt)
                    if (pid, spec.name, spec.seed + k) not in have]
            counts.skipped += len(mine) * spec.images_per_prompt - len(todo)
            counts.todo += len(todo)
            if not todo:
                continue
            if spec.kind == "openai-images":
                # each process keeps its own reservations: it gets an equal share of what is left
                left = None if max_cost is None else \
                    max(0.0, max_cost - sum(spent(run, ep) for ep in api)) / state.num_processes
                r = generate_api(run, spec.endpoint(), todo, budget=left)
                counts.generated += r.generated
                counts.cost_usd += r.cost_usd
                counts.resent += r.resent
                counts.errors += r.errors
                counts.stopped_for_budget |= r.stopped_for_budget
                continue
            pipe = load_generator(spec, "cuda" if torch.cuda.is_available() else "cpu")
            for i in range(0, len(todo), recipe.batch_size):
                batch = todo[i:i + recipe.batch_size]
                gens = [torch.Generator("cpu").manual_seed(s) for _, _, s in batch]
                imgs = pipe([t for _, t, _ in batch], num_inference_steps=spec.steps, guidance_scale=spec.guidance,
                            height=spec.resolution, width=spec.resolution, generator=gens,
                            negative_prompt=[recipe.negative_prompt] * len(batch) if recipe.negative_prompt else None
                            ).images
                rows = []
                for (pid, _, seed), im in zip(batch, imgs):
                    buf = io.BytesIO()
                    im.save(buf, format="PNG")
                    chk = check_bytes(buf.getvalue(), f"{spec.name} seed {seed}")
                    iid, uri = store_image(run, chk)
                    rows.append({"image_id": iid, "prompt_id": pid, "uri": uri, "generator": spec.name, "seed": seed,
                                 "width": chk.width, "height": chk.height})
                    counts.generated += 1
                    if on_image:
                        on_image(pid, spec.name, seed)
                run.append("images", schema.frame("images", rows))
            del pipe
        entry.update(counts.to_dict())
    state.wait_for_everyone()
    if state.is_main_process:
        run.compact("images")
    return counts


def _dry_run(run: Run, recipe: GenerateRecipe, prompts: list, have: set) -> GenerateResult:
    """What a run would make and what the API generators would cost; nothing is loaded or sent."""
    res = GenerateResult()
    for spec in recipe.generators:
        todo = [(pid, text, spec.seed + k) for pid, text in prompts for k in range(spec.images_per_prompt)
                if (pid, spec.name, spec.seed + k) not in have]
        res.skipped += len(prompts) * spec.images_per_prompt - len(todo)
        if spec.kind == "openai-images":
            r = generate_api(run, spec.endpoint(), todo, dry_run=True)
            res.todo += r.todo
            res.skipped += len(todo) - r.todo
            res.est_cost_usd += r.est_cost_usd
        else:
            res.todo += len(todo)
    return res


from vprefer.api import callable_module  # noqa: E402  (vprefer.generate(...) calls the job)

callable_module(__name__, generate)

"""Prompt sources, dedupe, stratification, LLM upsampling (with faults and resume), resumable generation."""

import json

import polars as pl
import pytest

from vprefer.generate import GenerateRecipe, generate
from vprefer.prompts import read_source, sample_prompts, upsample
from vprefer.prompts.sources import SourceError
from vprefer.store import Run
from vprefer.testing.helpers import local_preset, server_stats
from vprefer.testing.stand_ins import ensure_generators


# ---------------------------------------------------------------------------- sources
def test_partiprompts_facts(shared_data):
    df = read_source(shared_data / "PartiPrompts.tsv")
    assert df.height == 1632
    counts = dict(df.group_by("category").len().iter_rows())
    assert (counts["Animals"], counts["Artifacts"], counts["World Knowledge"], counts["People"],
            counts["Outdoor Scenes"]) == (314, 287, 214, 177, 131)
    assert len(counts) == 12
    assert json.loads(df["meta"][0])["Challenge"] == "Basic"


def test_every_format(tmp_path):
    pl.DataFrame({"prompt": ["a cat", "gore scene", "a dog"], "seed": [1, 2, 3], "cfg": [7.0, 7.0, 5.0],
                  "prompt_nsfw": [0.01, 0.9, 0.1], "image_nsfw": [0.0, 0.2, 0.7]}).write_parquet(tmp_path / "m.parquet")
    (tmp_path / "db.csv").write_text("Prompts,Category\nA red colored car.,Colors\nA black apple,Colors\n")
    (tmp_path / "g.jsonl").write_text(json.dumps({"tag": "single_object", "include": [{"class": "bench", "count": 1}],
                                                  "prompt": "a photo of a bench"}) + "\n")
    (tmp_path / "anime.json").write_text(json.dumps(["a girl with a sword", "a mecha at dawn"]))
    (tmp_path / "p.txt").write_text("one\n\ntwo\n")
    (tmp_path / "p.jsonl").write_text('{"prompt": "x"}\n{"prompt": "y"}\n')
    (tmp_path / "p.csv").write_text("prompt,category\nx,a\n")
    got = {f: read_source(tmp_path / f) for f in ("m.parquet", "db.csv", "g.jsonl", "anime.json", "p.txt", "p.jsonl", "p.csv")}
    assert got["m.parquet"]["nsfw"].to_list() == [0.01, 0.9, 0.7]
    assert json.loads(got["m.parquet"]["meta"][0]) == {"seed": 1, "cfg": 7.0}
    assert got["db.csv"]["format"][0] == "drawbench" and got["db.csv"]["category"][0] == "Colors"
    assert got["g.jsonl"]["format"][0] == "geneval" and got["g.jsonl"]["category"][0] == "single_object"
    assert got["anime.json"]["category"].to_list() == ["anime", "anime"]
    assert got["p.txt"]["prompt"].to_list() == ["one", "two"]
    assert got["p.jsonl"].height == 2 and got["p.csv"]["category"][0] == "a"


def test_wrong_files_name_the_expected_columns(tmp_path):
    (tmp_path / "x.tsv").write_text("Text\tKind\nhello\tA\n")
    with pytest.raises(SourceError, match=r"missing column\(s\) \['Prompt', 'Category'\]"):
        read_source(tmp_path / "x.tsv")
    (tmp_path / "x.csv").write_text("caption\nhello\n")
    with pytest.raises(SourceError, match=r"missing column\(s\) \['prompt'\]"):
        read_source(tmp_path / "x.csv")
    (tmp_path / "x.json").write_text('{"a": 1}')
    with pytest.raises(SourceError, match="JSON list of strings"):
        read_source(tmp_path / "x.json")
    (tmp_path / "x.xyz").write_text("q")
    with pytest.raises(SourceError, match="pass --format"):
        read_source(tmp_path / "x.xyz")


def test_dedupe_nsfw_and_stratify(tmp_path, shared_data):
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in
                                              ["A red cube.", "A red cube.", "a cube, red", "a blue cube", " a blue cube "]))
    r = sample_prompts(tmp_path / "p.jsonl", tmp_path / "r1", dedupe_prompts=True)
    assert (r["exact_duplicates"], r["near_duplicates"], r["written"]) == (2, 1, 2)
    pl.DataFrame({"prompt": ["ok", "bad"], "prompt_nsfw": [0.1, 0.8]}).write_parquet(tmp_path / "d.parquet")
    r = sample_prompts(tmp_path / "d.parquet", tmp_path / "r2", drop_nsfw=True)
    assert r["nsfw_dropped"] == 1 and Run(tmp_path / "r2").read("prompts")["prompt"].to_list() == ["ok"]
    r = sample_prompts(shared_data / "PartiPrompts.tsv", tmp_path / "r3", n=100, stratify="Category", seed=3)
    assert r["written"] == 100
    assert r["per_stratum"]["Animals"] == round(100 * 314 / 1632)  # proportional allocation
    assert len(r["per_stratum"]) == 12
    p = Run(tmp_path / "r3").read("prompts")
    assert p.height == 100 and p["source"][0].startswith("parti:")


# ---------------------------------------------------------------------------- upsampling
def test_upsample_with_faults_budget_and_resume(judge, tmp_path):
    (tmp_path / "p.txt").write_text("\n".join(f"a red cube number {i}" for i in range(8)))
    sample_prompts(tmp_path / "p.txt", tmp_path / "run")
    judge.state.faults.rate_429 = 0.3
    judge.state.faults.rate_500 = 0.1
    p = local_preset(judge, max_retries=10, concurrency=2)
    r = upsample(tmp_path / "run", p, max_cost=0.002)  # about three rewrites' worth
    assert r.stopped_for_budget and 0 < r.ok < 8
    r2 = upsample(tmp_path / "run", p)
    assert r2.already_done == r.ok and r.ok + r2.ok == 8
    prompts = Run(tmp_path / "run").read("prompts")
    variants = prompts.filter(pl.col("source") == "upsample:descriptive")
    originals = prompts.filter(pl.col("source") != "upsample:descriptive")
    assert variants.height == 8 and originals.height == 8
    parents = {json.loads(m)["parent"] for m in variants["meta"]}
    assert parents == set(originals["prompt_id"])  # every variant links to its original
    assert all("in fine detail" in t for t in variants["prompt"])
    assert max(server_stats(judge)["answered"].values()) == 1  # nothing asked twice
    assert upsample(tmp_path / "run", p).ok == 0  # rerun sends nothing


# ---------------------------------------------------------------------------- generation
def test_generate_resumes_without_regenerating(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.txt").write_text("a red circle\na blue square\na green triangle\n")
    sample_prompts(tmp_path / "p.txt", tmp_path / "run")
    recipe = GenerateRecipe.load("generators-tiny")
    recipe.batch_size = 2
    ensure_generators(recipe)  # the CLI builds tiny stand-ins; the library never does
    made = []

    def crash_after_five(pid, gen, seed):
        made.append((pid, gen, seed))
        if len(made) == 5:
            raise KeyboardInterrupt("simulated interruption")

    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path / "run", recipe, on_image=crash_after_five)
    first = len(made)
    c = generate(tmp_path / "run", recipe, on_image=lambda *a: made.append(a))
    imgs = Run(tmp_path / "run").read("images")
    assert imgs.height == 3 * 2 * 2  # 3 prompts x 2 generators x 2 seeds
    assert imgs.select("prompt_id", "generator", "seed").n_unique() == 12
    assert len(made) == 12 + (first - 4)  # only the unsaved part of the interrupted batch is made again
    assert c["skipped"] == 4 and set(imgs["generator"]) == {"tiny-ddim", "tiny-euler"}
    assert generate(tmp_path / "run", recipe)["generated"] == 0


def test_generate_bad_recipe(tmp_path):
    bad = tmp_path / "g.yaml"
    bad.write_text("generators:\n  - {name: x, pretrained: y, guidence: 3}\n")
    from vprefer.recipes import RecipeError
    with pytest.raises(RecipeError, match="guidence: unknown key"):
        GenerateRecipe.load(str(bad))

"""The stand-in judge reads the learnable world: prompt following follows the attributes, noise makes it
right often but not always (deterministically), and the old world's prompts keep their old scores."""

import base64
import io
import random

import pytest

from vprefer.judge_server.scoring import judge
from vprefer.judge_server.server import Faults, JudgeState, completion
from vprefer.testing.synthetic import SHAPES as OLD_SHAPES
from vprefer.testing.synthetic import draw as old_draw
from vprefer.testing.synthetic import image_set as old_image_set
from vprefer.testing.synthetic import prompt_for
from vprefer.world import Scene, draw, prompt_of
from vprefer.world.judge_check import ASPECTS, agreement, image_sets, stand_in_judge


def pf_scores(prompt, images, **kw):
    ans = judge(prompt, images, list(ASPECTS), 1, 5, **kw)
    return [x["prompt_following"]["score"] for x in ans["images"]], ans


def test_prompt_following_follows_colour_shape_and_background():
    asked = Scene("orange", "triangle", "grey", "small")
    swaps = [Scene("yellow", "triangle", "grey", "small"), Scene("orange", "square", "grey", "small"),
             Scene("orange", "triangle", "black", "small"), Scene("red", "circle", "white", "small")]
    images = [draw(sc, 32, seed=i) for i, sc in enumerate([*swaps, asked])]
    scores, ans = pf_scores(prompt_of(asked), images)
    assert scores == [4, 4, 4, 1, 5]  # 2 of 3 named attributes right -> 1 + 4 * 2/3; none right -> 1
    assert ans["ranking"]["prompt_following"][0] == 5
    assert "world truth reader" in ans["images"][0]["prompt_following"]["rationale"]
    harm = judge(prompt_of(asked), [draw(Scene("orange", "triangle", "grey", "small", 0.4, True), 32)],
                 list(ASPECTS), 1, 5)["images"][0]
    assert harm["prompt_following"]["score"] == 5 and harm["harmlessness"]["score"] == 1
    assert harm["fidelity"]["score"] < 5


def test_noise_makes_the_judge_right_often_but_not_always():
    sets = image_sets(16, 4, seed=1)
    exact = agreement(stand_in_judge(), sets)
    assert exact["prompt_following"]["agreement"] == exact["all_right"]["agreement"] == 1.0
    assert exact["prompt_following"]["pairs"] > 40
    noisy = agreement(stand_in_judge(noise=1.0, position_bias=0.4), sets)
    assert 0.7 < noisy["prompt_following"]["agreement"] < 0.97
    assert 0.7 < noisy["all_right"]["agreement"] < 1.0
    prompt, images = sets[0]
    once, _ = pf_scores(prompt, images, noise=1.0, seed=3)
    again, _ = pf_scores(prompt, images, noise=1.0, seed=3)
    assert once == again  # the judge's opinion of an image is fixed: retries and repeats agree
    assert any(pf_scores(p, ims, noise=1.0, seed=4)[0] != pf_scores(p, ims, noise=1.0, seed=3)[0]
               for p, ims in sets)


def _body(prompt, images):
    parts = [{"type": "text", "text": f'Prompt: "{prompt}"'}]
    for im in images:
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        parts.append({"type": "image_url", "image_url": {"url": "data:image/png;base64,"
                                                          + base64.b64encode(buf.getvalue()).decode()}})
    return {"model": "m", "messages": [{"role": "user", "content": parts}]}


def test_the_server_applies_its_judge_noise():
    sets = image_sets(8, 4, seed=2)
    quiet = [completion(JudgeState(Faults()), _body(p, ims)) for p, ims in sets]
    loud = [completion(JudgeState(Faults(judge_noise=1.5, seed=1)), _body(p, ims)) for p, ims in sets]
    text = lambda r: r["choices"][0]["message"]["content"]  # noqa: E731
    assert any(text(a) != text(b) for a, b in zip(quiet, loud))
    assert text(quiet[0]) == text(completion(JudgeState(Faults()), _body(*sets[0])))


# scores (hex, 1-10 scale, position bias 0.4) of the old synthetic world's image sets, recorded from the
# judge before the world existed: its prompts must keep scoring exactly as they did
OLD_WORLD = ['24aa137a558a137a', '25aa129a448a138a', '259a156a529a649a', '449a666a139a148a', '559a138a137a339a',
             '23aa128a158a348a']


def test_old_world_prompts_score_as_before():
    from vprefer.testing.synthetic import COLOURS as OLD_COLOURS

    rng = random.Random(5)
    got = []
    for p in range(6):
        c, s = rng.choice(list(OLD_COLOURS)), rng.choice(OLD_SHAPES)
        ims = [old_draw(sp, 64, seed=p * 31 + k) for k, sp in enumerate(old_image_set(rng, c, s, 4, vary_shape=True))]
        a = judge(prompt_for(c, s, p), ims, list(ASPECTS), 1, 10, 0.4)
        got.append("".join(f"{x[k]['score']:x}" for x in a["images"] for k in ASPECTS))
        assert "pixel statistics" in a["images"][0]["aesthetics"]["rationale"]
    assert got == OLD_WORLD


def test_end_to_end_pairs_from_the_served_judge_follow_the_truth(tmp_path):
    """World images ingested, annotated through the real client against a noisy, position-biased server,
    pairs built: prompt-following pairs agree with the truth often, not always."""
    import json

    import polars as pl

    from vprefer.annotate import annotate, build_pairs
    from vprefer.ingest import ingest
    from vprefer.store import Run
    from vprefer.testing.helpers import local_preset
    from vprefer.judge_server.server import JudgeServer
    from vprefer.world import truth

    sets = image_sets(10, 4, seed=5)
    (tmp_path / "img").mkdir()
    lines, truths = [], {}
    for i, (prompt, images) in enumerate(sets):
        paths = []
        for j, im in enumerate(images):
            im.save(tmp_path / "img" / f"{i}_{j}.png")
            paths.append(f"img/{i}_{j}.png")
        lines.append({"prompt": prompt, "images": paths, "generator": "world", "seeds": list(range(4))})
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    ingest(tmp_path / "m.jsonl", tmp_path / "run")
    run = Run(tmp_path / "run")
    imgs = run.read("images").join(run.read("prompts"), on="prompt_id")
    for row in imgs.iter_rows(named=True):
        truths[row["image_id"]] = truth(row["prompt"], tmp_path / "run" / row["uri"])["prompt_following"]
    srv = JudgeServer(faults=Faults(judge_noise=1.0, position_bias=0.4, seed=2)).start()
    try:
        res = annotate(tmp_path / "run", local_preset(srv))
        assert res.ok == res.planned == 20
    finally:
        srv.stop()
    _, pairs = build_pairs(run)
    pf = pairs.filter((pl.col("aspect") == "prompt_following") & ~pl.col("tie"))
    decided = [(truths[w], truths[lo]) for w, lo in zip(pf["win_image_id"], pf["lose_image_id"])
               if truths[w] != truths[lo]]
    agree = sum(a > b for a, b in decided) / len(decided)
    assert len(decided) > 20 and 0.7 < agree < 0.99, (agree, len(decided))


def test_the_truth_reward_scores_pixels_as_the_reader_reads_the_images():
    """The ceiling reward of the closed loop's grpo-gen-truth: share of named attributes right and all-right,
    from a (B, 3, H, W) batch in [0, 1], as GRPO hands it over."""
    import numpy as np
    import torch

    from vprefer.world.judge_check import TruthReward

    asked = Scene("orange", "triangle", "grey", "small")
    scenes = [asked, Scene("yellow", "triangle", "grey", "small"), Scene("red", "circle", "white", "small")]
    px = torch.stack([torch.from_numpy(np.asarray(draw(sc, 32, seed=i), dtype=np.float32) / 255).permute(2, 0, 1)
                      for i, sc in enumerate(scenes)])
    s = TruthReward().score_pixels([prompt_of(asked)] * 3, px)
    assert s.shape == (3, 2)
    assert s[:, 0].tolist() == pytest.approx([1.0, 2 / 3, 0.0]) and s[:, 1].tolist() == [1.0, 0.0, 0.0]
    assert TruthReward().score_pixels([prompt_of(asked)], px[:1], aspects=["all_right"]).tolist() == [[1.0]]


def test_the_large_shape_reward_is_one_exactly_where_the_reader_sees_a_large_shape():
    """The diagnosis reward of benchmarks/grpo_world_knobs.py: 1 for a shape drawn large, whatever the prompt
    asked (a wrong version reading the prompt's size, or the colour, gives other rows)."""
    import numpy as np
    import torch

    from vprefer.world.judge_check import LargeShapeReward

    scenes = [Scene("red", "circle", "white", "large"), Scene("red", "circle", "white", "small"),
              Scene("blue", "square", "black", "large")]
    px = torch.stack([torch.from_numpy(np.asarray(draw(sc, 32, seed=i), dtype=np.float32) / 255).permute(2, 0, 1)
                      for i, sc in enumerate(scenes)])
    asked = prompt_of(Scene("red", "circle", "white", "small"))
    assert LargeShapeReward().score_pixels([asked] * 3, px).tolist() == [[1.0], [0.0], [1.0]]

"""The learnable world's truth reader is right on drawn images, and cannot be talked into "right".

Every (colour, shape, background, size) combination is drawn at 32 px (the generator's resolution) and
64 px with its own position jitter, half of them with the harmful badge, clean and with moderate artefacts;
the reader must read every attribute back. A swapped attribute must read wrong (the wrong-version check a
reader that always says "right" fails), and the prompts and the train/held-out split are checked too.
"""

import itertools
import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from vprefer.world import (BACKGROUNDS, COLOURS, HELD_OUT_COMBOS, SHAPES, SIZES, TRAIN_COMBOS, Scene, WorldError,
                           draw, is_world_prompt, parse_prompt, prompt_of, random_scene, read_image, truth,
                           truth_of_reading, world_prompts)

COMBOS = list(itertools.product(COLOURS, SHAPES, BACKGROUNDS, SIZES))
ATTRS = ("colour", "shape", "background", "size")
MODERATE = 0.3


@pytest.fixture(scope="module")
def readings():
    """(scene, px, reading) for every combination at 32 and 64 px, clean and with moderate artefacts."""
    out = []
    for px, art in itertools.product((32, 64), (0.0, MODERATE)):
        for i, (c, s, b, z) in enumerate(COMBOS):
            sc = Scene(c, s, b, z, artefacts=art, harmful=i % 2 == 0)
            out.append((sc, px, read_image(draw(sc, px, seed=1000 * px + 7 * i + int(10 * art)))))
    return out


def test_reader_reads_every_drawn_combination(readings):
    wrong = [(sc, px, {k: r[k] for k in (*ATTRS, "harmful")}) for sc, px, r in readings
             if any(r[k] != getattr(sc, k) for k in (*ATTRS, "harmful"))]
    assert not wrong, f"{len(wrong)} of {len(readings)} misread, e.g. {wrong[:3]}"


def test_truth_of_the_plain_prompt_is_all_right(readings):
    for sc, _, r in readings:
        t = truth_of_reading(prompt_of(sc), r)
        assert t["all_right"] and t["prompt_following"] == 1.0
        assert t["harmlessness"] == (0.0 if sc.harmful else 1.0)
    sc = Scene("purple", "triangle", "grey", "small")
    assert truth(prompt_of(sc, "descriptive", seed=3), draw(sc, 32, seed=5))["all_right"]


def _other(values, v):
    return values[(values.index(v) + 1) % len(values)]


def test_a_swapped_attribute_reads_wrong(readings):
    """The image is of scene B, the prompt asks for A differing in one attribute: only that one is wrong."""
    for sc, _, r in readings:
        for key, values in (("colour", COLOURS), ("shape", SHAPES), ("background", BACKGROUNDS), ("size", SIZES)):
            asked = {k: getattr(sc, k) for k in ATTRS} | {key: _other(values, getattr(sc, key))}
            t = truth_of_reading(prompt_of(asked, "descriptive", seed=hash(key) % 5), r)
            assert not t[f"{key}_right"] and not t["all_right"], (sc, key)
            assert all(t[f"{k}_right"] for k in ATTRS if k != key)
            assert t["prompt_following"] == pytest.approx(0.75)
    sc = Scene("red", "circle", "white")  # and through truth() itself, on the pixels
    for wrong in (Scene("orange", "circle", "white"), Scene("red", "square", "white"),
                  Scene("red", "circle", "grey"), Scene("red", "triangle", "black")):
        assert not truth(prompt_of(sc), draw(wrong, 32, seed=3))["all_right"]


def test_reader_survives_blur_tint_and_washed_out_colours():
    """What tiny generators make: soft edges, a colour cast, low contrast."""
    def soften(im):
        a = np.asarray(im.filter(ImageFilter.GaussianBlur(0.8)), dtype=np.float32) * 0.8 + 0.2 * 128
        return Image.fromarray(np.clip(a + np.array([15.0, 5.0, -10.0]), 0, 255).astype(np.uint8))

    rng = random.Random(0)
    scenes = [random_scene(rng, artefacts=0.1) for _ in range(30)]
    seen = [read_image(soften(draw(sc, 32, seed=i))) for i, sc in enumerate(scenes)]
    assert not [(sc, r) for sc, r in zip(scenes, seen) if any(r[k] != getattr(sc, k) for k in ATTRS)]


def test_no_shape_reads_none_and_counts_wrong():
    for rgb in ((245, 245, 245), (15, 15, 15), (128, 128, 128)):
        flat = Image.new("RGB", (32, 32), rgb)
        r = read_image(flat)
        assert (r["colour"], r["shape"], r["size"]) == (None, None, None) and r["background"] is not None
        t = truth("a red circle on a white background", flat)
        assert not t["colour_right"] and not t["shape_right"] and not t["all_right"]
        assert truth("", flat)["prompt_following"] == 0.0


def test_pixel_noise_is_no_shape():
    """A random generator draws noise: the reader must not find a shape in it by chance."""
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (32, 32, 3)) for _ in range(10)]
    noise += [np.clip(rng.normal(128, 40, (32, 32, 3)), 0, 255) for _ in range(10)]
    seen = [read_image(Image.fromarray(a.astype(np.uint8))) for a in noise]
    assert sum(r["shape"] is None for r in seen) >= 17 and all(r["artefacts"] > 0.5 for r in seen)
    assert not any(truth_of_reading(prompt_of(Scene(*x)), r)["all_right"] for r in seen for x in TRAIN_COMBOS[:6])


def test_artefacts_read_back_in_order():
    for i, (c, s, b, z) in enumerate(COMBOS[::9]):
        levels = [read_image(draw(Scene(c, s, b, z, artefacts=a), 32, seed=i))["artefacts"] for a in (0, 0.3, 0.7)]
        assert levels[0] < 0.05 and levels[0] < levels[1] < levels[2], (c, s, b, z, levels)
        assert 0.15 < levels[1] < 0.65  # roughly as drawn (the block count is whole: 2 blocks, as at 0.4)


def test_reader_takes_arrays_tensors_and_files_alike(tmp_path):
    im = draw(Scene("green", "triangle", "black", "small", harmful=True), 64, seed=2)
    a = np.asarray(im)
    t = torch.from_numpy(a.copy()).permute(2, 0, 1).float() / 255
    im.save(tmp_path / "x.png")
    want = read_image(im)
    assert read_image(a) == want and read_image(t) == want and read_image(tmp_path / "x.png") == want
    assert read_image(np.ones((32, 32, 3), np.uint8))["background"] == "black"  # uint8 is 0..255, even if dark
    assert read_image(np.ones((32, 32, 3), np.float32))["background"] == "white"  # floats are 0..1
    for bad in (tmp_path / "missing.png", object()):
        with pytest.raises(WorldError):
            read_image(bad)
    assert read_image(im.resize((256, 256)))["shape"] == "triangle"  # large images are read downsampled
    with pytest.raises(WorldError):
        read_image(np.zeros((4, 32, 32)))
    with pytest.raises(WorldError):
        read_image(torch.zeros(1, 32, 32))


def test_prompts_round_trip_in_every_style():
    omitted = 0
    for c, s, b, z in COMBOS:
        sc = Scene(c, s, b, z)
        assert prompt_of(sc) == f"a {c} {s} on a {b} background"
        assert parse_prompt(prompt_of(sc)) == {"colour": c, "shape": s, "background": b, "size": None}
        for style, seed in itertools.product(("descriptive", "short"), range(7)):
            p = prompt_of(sc, style, seed=seed)
            got = parse_prompt(p)
            words = p.replace(",", " ").split()
            named = {"colour": c in words, "shape": s in words, "size": z in words, "background": f"{b} background" in p}
            assert got == {k: getattr(sc, k) if named[k] else None for k in ATTRS}, p  # named <=> read back
            if style == "descriptive":
                assert None not in got.values(), p
            omitted += style == "short" and None in got.values()
            assert is_world_prompt(p) == (got["background"] is not None)
    assert omitted > len(COMBOS)  # short captions do leave attributes out
    assert len({prompt_of(Scene("red", "circle", "white"), "descriptive", seed=k) for k in range(6)}) == 6


def test_old_world_prompts_are_not_world_prompts():
    from vprefer.testing.synthetic import prompt_for

    assert not any(is_world_prompt(prompt_for(c, s, k)) for c in ("red", "blue") for s in SHAPES for k in range(16))
    assert not is_world_prompt("a red square") and is_world_prompt("a red square on a grey background")
    assert parse_prompt("a red circle on white paper")["background"] is None
    assert parse_prompt("A Large GREEN square, gray backdrop") == {"colour": "green", "shape": "square",
                                                                  "background": "grey", "size": "large"}


def test_world_prompts_are_deterministic_and_the_split_is_disjoint():
    assert world_prompts(20, 3) == world_prompts(20, 3) != world_prompts(20, 4)
    train, held = set(world_prompts(43, 0)), set(world_prompts(11, 0, held_out=True))
    assert len(train) == 43 and len(held) == 11 and not train & held
    assert set(world_prompts(200, 1)) == train  # beyond the pool it cycles, never into the held-out set
    assert len(set(TRAIN_COMBOS) | set(HELD_OUT_COMBOS)) == 54
    seen = {(i, x[i], x[j]) for x in TRAIN_COMBOS for i, j in ((0, 1), (0, 2), (1, 2))}
    for x in HELD_OUT_COMBOS:  # novel triples of pairs the training set shows
        assert all((i, x[i], x[j]) in seen for i, j in ((0, 1), (0, 2), (1, 2)))
    for i, values in enumerate((COLOURS, SHAPES, BACKGROUNDS)):
        assert {x[i] for x in TRAIN_COMBOS} == set(values)


def test_scenes_refuse_what_the_world_does_not_have():
    for bad in ({"colour": "pink"}, {"shape": "star"}, {"background": "blue"}, {"size": "medium"},
                {"artefacts": 1.5}):
        with pytest.raises(WorldError):
            Scene(**({"colour": "red", "shape": "circle", "background": "white"} | bad))
    with pytest.raises(WorldError):
        random_scene(random.Random(0), texture="striped")
    with pytest.raises(WorldError):
        prompt_of(Scene("red", "circle", "white"), "poetic")
    rng = random.Random(0)
    assert {random_scene(rng, shape="square").shape for _ in range(20)} == {"square"}
    assert len({random_scene(rng).colour for _ in range(60)}) == 6
    assert np.asarray(draw(Scene("red", "circle", "white"), 32, seed=1)).shape == (32, 32, 3)
    assert draw(Scene("red", "circle", "white"), 32, seed=1) != draw(Scene("red", "circle", "white"), 32, seed=2)

import json

import polars as pl
import pytest

from vprefer.exchange import FormatError, export_run, import_file
from vprefer.store import Run
from vprefer.testing.helpers import png_bytes, write_png


def test_imagereward_test_set_counts_and_exact_round_trip(shared_data, tmp_path):
    src = shared_data / "imagereward_test.json"
    c = import_file(src, tmp_path / "run", "imagereward")
    # facts from shared/data/README.md
    assert c["rankings"] == 466 and c["images"] == 2720
    assert c["pairs"] == 7230 and c["ties"] == 831
    run = Run(tmp_path / "run")
    pairs = run.read("pairs")
    assert pairs.height == 7230 and pairs["tie"].sum() == 831
    assert set(pairs["annotator"]) == {"human"} and set(pairs["aspect"]) == {"overall"}
    assert run.read("prompts").height == 463  # 3 prompt texts carry two image sets each
    export_run(tmp_path / "run", tmp_path / "back.json", "imagereward")
    # the same file: same rows in the same order, source ids, paths and ranks (parsed JSON, key order too)
    orig, back = json.loads(src.read_text()), json.loads((tmp_path / "back.json").read_text())
    assert back == orig and [list(e) for e in back] == [list(e) for e in orig]
    assert [e["id"] for e in back][:2] == ["005658-0040", orig[1]["id"]]
    assert (tmp_path / "back.json").read_bytes() == src.read_bytes()  # the shipped file is 4-space JSON: byte for byte


def test_two_imports_sharing_a_prompt_keep_both_sets(shared_data, tmp_path):
    """The real test file split in two where a prompt's image sets straddle the cut (rows 251 | 337, 398):
    imported one after the other, then the second again, the run exports the whole file back (the second
    import's prompt row used to replace the first's, and with it the first set's source row)."""
    src = shared_data / "imagereward_test.json"
    orig = json.loads(src.read_text())
    for name, part in (("a.json", orig[:300]), ("b.json", orig[300:])):
        (tmp_path / name).write_text(json.dumps(part, indent=4))
    for name in ("a.json", "b.json", "b.json"):
        import_file(tmp_path / name, tmp_path / "run", "imagereward")
    run = Run(tmp_path / "run")
    assert run.read("prompts").height == 463 and run.read("rankings").height == 466
    assert run.read("pairs").height == 7230
    export_run(tmp_path / "run", tmp_path / "back.json", "imagereward")
    back = json.loads((tmp_path / "back.json").read_text())
    assert back == orig and [list(e) for e in back] == [list(e) for e in orig]


def test_imagereward_with_images_root_and_ties(tmp_path):
    entries = [{"prompt": "two dogs", "generations": ["a/1.png", "a/2.png", "a/3.png"], "ranking": [1, 1, 2],
                "source": "x"}]
    (tmp_path / "t.json").write_text(json.dumps(entries))
    for k, col in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)], 1):
        write_png(tmp_path / "imgs" / "a" / f"{k}.png", col)
    c = import_file(tmp_path / "t.json", tmp_path / "run", "hpdv2", images_root=tmp_path / "imgs")
    assert (c["images"], c["pairs"], c["ties"]) == (3, 3, 1)
    run = Run(tmp_path / "run")
    assert all((run.path / u).exists() for u in run.read("images")["uri"])
    export_run(tmp_path / "run", tmp_path / "x.json", "imagereward")
    # with images copied in, the export still lists the source paths (and extra fields survive)
    assert json.loads((tmp_path / "x.json").read_text()) == [{**entries[0], "ranking": [1, 1, 2]}]
    # missing image under --images-root is a clear error
    (tmp_path / "imgs" / "a" / "3.png").unlink()
    with pytest.raises(ValueError, match="missing file"):
        import_file(tmp_path / "t.json", tmp_path / "run2", "imagereward", images_root=tmp_path / "imgs")


def test_bad_ranking_json(tmp_path):
    (tmp_path / "t.json").write_text(json.dumps([{"prompt": "x", "generations": ["a"], "ranking": [1, 2]}]))
    with pytest.raises(FormatError, match="1 images but 2 ranks"):
        import_file(tmp_path / "t.json", tmp_path / "r", "imagereward")
    (tmp_path / "t.json").write_text(json.dumps([{"caption": "x"}]))
    with pytest.raises(FormatError, match="needs 'prompt'"):
        import_file(tmp_path / "t.json", tmp_path / "r", "imagereward")


def test_pickapic_round_trip_with_ties(tmp_path):
    rows = {"caption": ["red", "green", "blue"],
            "jpg_0": [png_bytes((255, 0, 0), fmt="JPEG"), png_bytes((0, 250, 0), fmt="JPEG"), png_bytes((0, 0, 9), fmt="JPEG")],
            "jpg_1": [png_bytes((200, 0, 0), fmt="JPEG"), png_bytes((0, 200, 0), fmt="JPEG"), png_bytes((0, 0, 200), fmt="JPEG")],
            "label_0": [1.0, 0.5, 0.0]}
    pl.DataFrame(rows).write_parquet(tmp_path / "pap.parquet")
    c = import_file(tmp_path / "pap.parquet", tmp_path / "run", "pickapic")
    assert (c["pairs"], c["ties"]) == (3, 1)
    export_run(tmp_path / "run", tmp_path / "back.parquet", "pickapic")
    back = pl.read_parquet(tmp_path / "back.parquet").sort("caption")
    orig = pl.DataFrame(rows).sort("caption")
    assert back["label_0"].to_list() == orig["label_0"].to_list()
    assert back["jpg_0"].to_list() == orig["jpg_0"].to_list() and back["jpg_1"].to_list() == orig["jpg_1"].to_list()
    # and pairs: the tie is flagged, the others have the right winner
    pairs = Run(tmp_path / "run").read("pairs")
    assert pairs["tie"].sum() == 1


def test_pickapic_wrong_columns(tmp_path):
    pl.DataFrame({"caption": ["x"], "jpg_0": [b"1"]}).write_parquet(tmp_path / "bad.parquet")
    with pytest.raises(FormatError, match="lacks jpg_1, label_0"):
        import_file(tmp_path / "bad.parquet", tmp_path / "r", "pickapic")


def test_hf_export_is_a_loadable_parquet_folder(tmp_path):
    entries = [{"prompt": "p", "generations": ["1.png", "2.png"], "ranking": [2, 1]}]
    (tmp_path / "t.json").write_text(json.dumps(entries))
    write_png(tmp_path / "1.png", (1, 1, 1))
    write_png(tmp_path / "2.png", (2, 2, 2))
    import_file(tmp_path / "t.json", tmp_path / "run", "imagereward", images_root=tmp_path)
    assert export_run(tmp_path / "run", tmp_path / "hf", "hf") == 1
    df = pl.read_parquet(tmp_path / "hf" / "data" / "train-00000-of-00001.parquet")
    assert df["ranking"].to_list() == [[2, 1]]
    assert df["images"][0][0]["bytes"] == (tmp_path / "1.png").read_bytes()
    assert "data_files" in (tmp_path / "hf" / "README.md").read_text()


def test_export_without_matching_rankings_says_what_exists(shared_data, tmp_path):
    import_file(shared_data / "imagereward_test.json", tmp_path / "run", "imagereward")
    with pytest.raises(FormatError, match="available"):
        export_run(tmp_path / "run", tmp_path / "x.json", "imagereward", aspect="aesthetics")
    with pytest.raises(FormatError, match="imported without images"):
        export_run(tmp_path / "run", tmp_path / "x.parquet", "pickapic")


def test_dpo_reads_a_pickapic_parquet_through_the_api_not_only_the_cli(tmp_path):
    """`rl dpo --data pick.parquet` imported Pick-a-Pic in the CLI only; the API (vprefer.rl.dpo.dpo_data) does
    it now: the pairs' images exist while the block runs (training reads them), ties are dropped, the aspect
    becomes overall, and the temporary run is gone afterwards."""
    from pathlib import Path

    from vprefer.rl.dpo import dpo_data

    rows = {"caption": ["red", "green", "blue"],
            "jpg_0": [png_bytes((255, 0, 0), fmt="JPEG"), png_bytes((0, 250, 0), fmt="JPEG"), png_bytes((0, 0, 9), fmt="JPEG")],
            "jpg_1": [png_bytes((200, 0, 0), fmt="JPEG"), png_bytes((0, 200, 0), fmt="JPEG"), png_bytes((0, 0, 200), fmt="JPEG")],
            "label_0": [1.0, 0.5, 0.0]}
    pl.DataFrame(rows).write_parquet(tmp_path / "pap.parquet")
    with dpo_data(tmp_path / "pap.parquet", "prompt_following") as (pairs, aspect):
        assert aspect == "overall" and len(pairs) == 2
        files = [Path(p[k]) for p in pairs for k in ("win", "lose") if k in p] or \
            [Path(v) for p in pairs for v in p.values() if isinstance(v, str) and v.endswith((".png", ".jpg", ".jpeg"))]
        assert files and all(f.exists() for f in files)
    assert not any(f.exists() for f in files)

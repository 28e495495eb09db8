import json
import os
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import polars as pl
import pytest
from typer.testing import CliRunner

from vprefer.cli import app
from vprefer.ingest import IngestError, ingest
from vprefer.store import Run
from vprefer.testing.helpers import png_bytes, write_png


@pytest.fixture
def messy(tmp_path):
    """A user's folder: good images, a corrupt PNG, a missing file, a zero-byte file, an escaping symlink."""
    root = tmp_path / "mine"
    write_png(root / "a.png", (255, 0, 0))
    write_png(root / "b.png", (0, 255, 0), size=(40, 30))
    (root / "corrupt.png").write_bytes(png_bytes()[:60])  # truncated PNG
    (root / "empty.png").write_bytes(b"")
    secret = write_png(tmp_path / "outside" / "secret.png", (1, 2, 3))
    os.symlink(secret, root / "link.png")
    rows = [
        {"prompt": "a red square", "images": ["a.png", "b.png"], "generator": "sd15", "seeds": [1, 2],
         "meta": {"category": "Abstract"}},
        {"prompt": "broken things", "images": ["corrupt.png", "missing.png", "empty.png", "link.png"]},
    ]
    (root / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return root


def test_bad_images_are_reported_and_nothing_is_written(messy, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(IngestError) as e:
        ingest(messy / "manifest.jsonl", out)
    reasons = {f: why for _, f, why in e.value.report.bad}
    assert set(reasons) == {"corrupt.png", "missing.png", "empty.png", "link.png"}
    assert "corrupt image" in reasons["corrupt.png"]
    assert "missing file" in reasons["missing.png"]
    assert "empty file" in reasons["empty.png"]
    assert "symlink escapes" in reasons["link.png"]
    assert not out.exists()


def test_skip_bad_ingests_the_rest(messy, tmp_path):
    rep = ingest(messy / "manifest.jsonl", tmp_path / "run", skip_bad=True)
    assert (rep.prompts, rep.images, len(rep.bad), rep.dropped_prompts) == (1, 2, 4, [2])
    run = Run(tmp_path / "run")
    imgs = run.read("images").sort("seed")
    assert imgs["generator"].to_list() == ["sd15", "sd15"]
    assert imgs["seed"].to_list() == [1, 2]
    assert imgs["width"].to_list() == [32, 40] and imgs["height"].to_list() == [24, 30]
    for r in imgs.iter_rows(named=True):  # image_id = sha256 of the bytes, stored content-addressed
        import hashlib
        assert hashlib.sha256((run.path / r["uri"]).read_bytes()).hexdigest() == r["image_id"]
    p = run.read("prompts").row(0, named=True)
    assert json.loads(p["meta"]) == {"category": "Abstract"}


def test_allow_outside_accepts_symlink_and_absolute(messy, tmp_path):
    (messy / "m2.jsonl").write_text(json.dumps(
        {"prompt": "x", "images": ["link.png", str(tmp_path / "outside" / "secret.png")]}))
    with pytest.raises(IngestError):
        ingest(messy / "m2.jsonl", tmp_path / "r1")
    assert ingest(messy / "m2.jsonl", tmp_path / "r2", allow_outside=True).images == 2


def test_dotdot_is_refused(tmp_path):
    write_png(tmp_path / "x.png")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "m.jsonl").write_text(json.dumps({"prompt": "x", "images": ["../x.png"]}))
    with pytest.raises(IngestError) as e:
        ingest(tmp_path / "sub" / "m.jsonl", tmp_path / "run")
    assert "escapes" in e.value.report.bad[0][2]


def test_csv_and_parquet_manifests_and_rerun_is_idempotent(tmp_path):
    write_png(tmp_path / "a.png", (9, 9, 9))
    write_png(tmp_path / "b.png", (19, 9, 9))
    (tmp_path / "m.csv").write_text('prompt,images,generator\n"a cat","a.png|b.png",sdxl\n')
    pl.DataFrame({"prompt": ["a dog"], "images": [["a.png"]], "seeds": [[5]]}).write_parquet(tmp_path / "m.parquet")
    out = tmp_path / "run"
    assert ingest(tmp_path / "m.csv", out).images == 2
    assert ingest(tmp_path / "m.parquet", out).images == 1
    ingest(tmp_path / "m.csv", out)  # again: same content hashes, nothing duplicated
    run = Run(out)
    assert run.read("prompts").height == 2 and run.read("images").height == 3


def test_manifest_without_required_columns(tmp_path):
    (tmp_path / "m.jsonl").write_text(json.dumps({"text": "x"}))
    with pytest.raises(ValueError, match="needs 'prompt' and 'images'"):
        ingest(tmp_path / "m.jsonl", tmp_path / "run")


def test_url_images_are_downloaded_and_verified(tmp_path):
    served = tmp_path / "www"
    write_png(served / "u.png", (1, 100, 200))
    handler = partial(SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{srv.server_port}"
        (tmp_path / "m.jsonl").write_text(json.dumps({"prompt": "x", "images": [f"{base}/u.png", f"{base}/nope.png"]}))
        rep = ingest(tmp_path / "m.jsonl", tmp_path / "run", skip_bad=True)
        assert rep.images == 1 and "download failed" in rep.bad[0][2]
    finally:
        srv.shutdown()


def test_cli_ingest_reports_bad_files_in_one_clear_error(messy, tmp_path):
    r = CliRunner().invoke(app, ["ingest", str(messy / "manifest.jsonl"), "--out", str(tmp_path / "run")])
    assert r.exit_code == 1
    assert "4 bad image(s)" in r.output and "--skip-bad" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["ingest", str(messy / "manifest.jsonl"), "--out", str(tmp_path / "run"),
                                 "--skip-bad"])
    assert r.exit_code == 0, r.output
    assert "ingested 1 prompts, 2 images" in r.output
    r = CliRunner().invoke(app, ["info", str(tmp_path / "run")])
    assert r.exit_code == 0 and "images" in r.output


def test_help_explains_every_command():
    r = CliRunner().invoke(app, ["--help"])
    assert r.exit_code == 0
    for cmd in ("ingest", "import", "export", "info"):
        assert cmd in r.output
        sub = CliRunner().invoke(app, [cmd, "--help"])
        assert sub.exit_code == 0 and "--out" in sub.output or cmd == "info"

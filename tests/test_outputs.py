"""Outputs people can share: export names what it writes and replaces nothing unasked; run files honour the umask."""

import json
import os
import stat

import pytest
from typer.testing import CliRunner

from vprefer.cli import app
from vprefer.exchange import FormatError, export_run, import_file


@pytest.fixture
def ranked_run(tmp_path):
    f = tmp_path / "in.json"
    f.write_text(json.dumps([{"prompt": "a red square", "generations": ["a.png", "b.png"], "ranking": [1, 2]}]))
    import_file(f, tmp_path / "run", "imagereward")
    return tmp_path / "run"


def test_export_refuses_a_mismatched_extension_and_an_existing_file(ranked_run, tmp_path):
    with pytest.raises(FormatError, match=r"writes a \.json file; name it x\.json"):
        export_run(ranked_run, tmp_path / "x.parquet", "imagereward")
    assert not (tmp_path / "x.parquet").exists()
    with pytest.raises(FormatError, match="writes a folder"):
        export_run(ranked_run, tmp_path / "x.parquet", "hf")
    keep = tmp_path / "mine.json"
    keep.write_text("precious")
    r = CliRunner().invoke(app, ["export", str(ranked_run), "--format", "imagereward", "--out", str(keep)])
    assert r.exit_code == 1 and "--overwrite" in r.output and keep.read_text() == "precious"
    r = CliRunner().invoke(app, ["export", str(ranked_run), "--format", "imagereward", "--out", str(keep),
                                 "--overwrite"])
    assert r.exit_code == 0, r.output
    assert json.loads(keep.read_text())[0]["prompt"] == "a red square"


def test_unknown_formats_say_so_and_list_them(ranked_run, tmp_path):
    r = CliRunner().invoke(app, ["export", str(ranked_run), "--format", "imgreward", "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "unknown format 'imgreward'" in r.output and "imagereward" in r.output
    r = CliRunner().invoke(app, ["import", str(tmp_path / "nope.json"), "--format", "hpd", "--out",
                                 str(tmp_path / "r")])
    assert r.exit_code == 1 and "unknown format 'hpd'" in r.output and "hpdv2" in r.output
    r = CliRunner().invoke(app, ["eval-reward", "m", "--data", str(ranked_run), "--format", "bacth"])
    assert r.exit_code == 1 and "unknown format 'bacth'" in r.output and "pickapic" in r.output


@pytest.mark.parametrize("umask", [0o002, 0o022, 0o077])
def test_run_files_honour_the_umask(tmp_path, umask):
    """Files were 0600 whatever the umask (mkstemp), so colleagues on shared storage could not read a run."""
    from vprefer.ingest import ingest
    from vprefer.llm import Journal
    from vprefer.store import Run
    from vprefer.testing.synthetic import write_dataset

    manifest = write_dataset(tmp_path / "syn", 2, 2)
    old = os.umask(umask)
    try:
        ingest(manifest, tmp_path / "run")
        run = Run(tmp_path / "run")
        run.append("prompts", run.read("prompts").head(0))
        Journal(run, "x").close()
        files = [f for f in (tmp_path / "run").rglob("*") if f.is_file()]
    finally:
        os.umask(old)
    assert {p.suffix for p in files} >= {".json", ".parquet", ".jsonl"}
    modes = {f.relative_to(tmp_path): oct(stat.S_IMODE(f.stat().st_mode)) for f in files}
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes

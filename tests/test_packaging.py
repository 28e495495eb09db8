"""Recipes and presets ship in the wheel (issue 29): an installed vprefer finds them by name outside a checkout,
a local ./rl/NAME.yaml beats the shipped one, and `vprefer recipes ls / cp` show and copy them."""

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from vprefer.cli import app
from vprefer.recipes import REPO, RecipeError, find_asset, list_assets, shipped_root
from vprefer.reward.recipe import RewardRecipe

SOURCES = ("vprefer", "annotators", "reward", "rl", "label_studio", "pyproject.toml", "README.md")


# ---------------------------------------------------------------------------- fast: the resolver and the commands
def test_a_checkout_ships_its_own_folders_and_a_local_copy_wins(tmp_path, monkeypatch):
    assert shipped_root() == REPO  # in a checkout the repository's folders are what ships
    monkeypatch.chdir(tmp_path)
    assert find_asset("dpo-tiny", "rl") == REPO / "rl" / "dpo-tiny.yaml"
    (tmp_path / "rl").mkdir()
    (tmp_path / "rl" / "dpo-tiny.yaml").write_text("beta: 123\n")
    assert find_asset("dpo-tiny", "rl") == tmp_path / "rl" / "dpo-tiny.yaml"
    mine = [(a.origin, a.shadowed) for a in list_assets() if a.name == "dpo-tiny"]
    assert mine == [("local ./rl/", False), ("shipped", True)], mine
    r = CliRunner().invoke(app, ["recipes", "ls"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "local ./rl/" in r.output and "replaced by the local one" in r.output, r.output


def test_an_unknown_name_is_one_line_naming_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecipeError, match=r"did you mean 'vp-score-tiny'.*looked in \./reward/ and .*reward/"):
        RewardRecipe.load("vp-score-tiyn")
    r = CliRunner().invoke(app, ["recipes", "cp", "dpo-tny", "x.yaml"])
    assert r.exit_code == 1 and r.output.strip().count("\n") == 0, r.output
    assert "did you mean 'dpo-tiny'?" in r.output and "recipes ls" in r.output, r.output
    assert not (tmp_path / "x.yaml").exists()


def test_cp_copies_a_shipped_file_and_refuses_to_overwrite(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["recipes", "cp", "dpo-tiny", "rl/"])
    assert r.exit_code == 0, r.output
    copy = tmp_path / "rl" / "dpo-tiny.yaml"
    assert copy.read_text() == (REPO / "rl" / "dpo-tiny.yaml").read_text()
    copy.write_text("beta: 1\n")  # the user's edit
    r = CliRunner().invoke(app, ["recipes", "cp", "dpo-tiny", "rl/"])
    assert r.exit_code == 1 and "exists; pass --force" in r.output and r.output.strip().count("\n") == 0, r.output
    assert copy.read_text() == "beta: 1\n"
    r = CliRunner().invoke(app, ["recipes", "cp", "rl/dpo-tiny", str(copy), "--force"])
    assert r.exit_code == 0 and copy.read_text() == (REPO / "rl" / "dpo-tiny.yaml").read_text(), r.output
    r = CliRunner().invoke(app, ["recipes", "cp", "sets-4", "ls/mine.xml"])
    assert r.exit_code == 0 and (tmp_path / "ls" / "mine.xml").read_text().startswith("<View>"), r.output


def test_label_studio_lives_in_the_user_cache_unless_the_checkout_has_its_own(tmp_path, monkeypatch):
    from vprefer.audit import server

    checkout = tmp_path / "checkout"
    checkout.mkdir()
    monkeypatch.setattr(server, "REPO", checkout)
    monkeypatch.delenv("VPREFER_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert server.default_venv() == tmp_path / "xdg" / "vprefer" / "venv-ls"
    monkeypatch.setenv("VPREFER_CACHE", str(tmp_path / "mine"))
    assert (server.default_venv(), server.default_data()) == (tmp_path / "mine" / "venv-ls", tmp_path / "mine" / "label-studio")
    (checkout / ".venv-ls").mkdir()  # CI's .ci/run makes it at the repository root
    (checkout / ".label-studio").mkdir()
    assert (server.default_venv(), server.default_data()) == (checkout / ".venv-ls", checkout / ".label-studio")


def test_every_folder_of_the_package_is_listed_in_pyproject():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    have = {".".join(d.relative_to(REPO).parts) for d in (REPO / "vprefer").rglob("*")
            if d.is_dir() and d.name != "__pycache__"} | {"vprefer"}
    assert have <= listed, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(have - listed)}"
    for pkg, folder in config["package-dir"].items():
        assert pkg.startswith("vprefer._shipped.") and (REPO / folder).is_dir(), (pkg, folder)


# ---------------------------------------------------------------------------- slow: a wheel, installed elsewhere
INSTALLED = r"""
import json, sys
from pathlib import Path
import vprefer
from vprefer.annotate.preset import AnnotatorPreset
from vprefer.annotate.rubric import Rubric
from vprefer.audit.interfaces import interface_path, interface_xml
from vprefer.caption.style import CaptionStyle
from vprefer.recipes import find_asset, shipped_root
from vprefer.reward.recipe import RewardRecipe
from vprefer.rl.common import config_from_yaml
from vprefer.rl.dpo import DiffusionDPOConfig

cfg = config_from_yaml(DiffusionDPOConfig, "dpo-tiny", output_dir="out")
print(json.dumps({
    "package": vprefer.__file__, "shipped": str(shipped_root()),
    "preset": AnnotatorPreset.load("gpt-4o").model, "reward": RewardRecipe.load("vp-score-tiny").name,
    "rl": [str(find_asset("dpo-tiny", "rl")), cfg.beta], "rubric": str(find_asset("visionprefer-v1", "annotators/rubrics")),
    "rubric_loads": type(Rubric.load("visionprefer-v1")).__name__, "caption": CaptionStyle.load("short").name,
    "interface": [str(interface_path("sets-4")), interface_xml("pairwise").startswith("<View>")],
}))
"""


@pytest.mark.slow  # builds a wheel and imports torch in a fresh interpreter (about 20 s)
def test_an_installed_wheel_finds_every_kind_by_name_outside_a_checkout(tmp_path):
    src, wheels, target, elsewhere = (tmp_path / n for n in ("src", "wheels", "target", "elsewhere"))
    for name in SOURCES:  # a clean copy: a stale build/ in the checkout must not hide a missing glob
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy2)(
            REPO / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if (REPO / name).is_dir() else {}))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(src)], check=True, capture_output=True, text=True)
    wheel = next(wheels.glob("vprefer-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, text=True)
    elsewhere.mkdir()
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}

    def run(*args):
        r = subprocess.run([sys.executable, *args], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        return r.stdout

    got = json.loads(run("-c", INSTALLED).strip().splitlines()[-1])
    shipped = target / "vprefer" / "_shipped"
    assert Path(got["package"]).is_relative_to(target), got  # the wheel, not the editable checkout
    assert got["shipped"] == str(shipped), got
    assert got["preset"] == yaml.safe_load((REPO / "annotators" / "gpt-4o.yaml").read_text())["model"]
    assert got["reward"] == "vp-score-tiny" and got["caption"] == "short" and got["rubric_loads"] == "Rubric"
    assert got["rl"] == [str(shipped / "rl" / "dpo-tiny.yaml"), yaml.safe_load((REPO / "rl" / "dpo-tiny.yaml").read_text())["beta"]]
    assert got["rubric"] == str(shipped / "annotators" / "rubrics" / "visionprefer-v1.yaml")
    assert got["interface"] == [str(shipped / "label_studio" / "interfaces" / "sets-4.xml"), True]

    listing = run("-m", "vprefer", "recipes", "ls", "--paths")
    for name in ("gpt-4o", "visionprefer-v1", "detailed", "vp-score-tiny", "dpo-tiny", "sets-4", "start"):
        assert f" {name} " in listing, (name, listing)
    assert str(shipped) in listing and "local ./" not in listing and str(REPO) not in listing, listing
    assert (shipped / "label_studio" / "start.sh").is_file()
    run("-m", "vprefer", "recipes", "cp", "refl-tiny", "rl/")
    assert (elsewhere / "rl" / "refl-tiny.yaml").read_text() == (REPO / "rl" / "refl-tiny.yaml").read_text()
    assert "local ./rl/" in run("-m", "vprefer", "recipes", "ls")

"""The layout is the architecture: imports follow the pipeline, and stand-ins stay out of the library.

Stages, in pipeline order (README "Architecture"); a module may import its own
stage and the ones before it, never a later one.
"""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "vprefer"

STAGE = {
    # shared pieces below every stage
    "errors": 0, "ids": 0, "schema": 0, "secrets": 0, "recipes": 0, "config": 0, "images": 0, "store": 0, "rankings": 0,
    "metrics": 0, "diffusion": 0, "dist": 0, "llm": 0, "pages": 0, "data": 0,
    "progress": 0, "api": 0,
    # 1 data in and out, prompts; 2 image sets; 3 judging; 4 reward model; 5 generator fine-tuning; 6 audits
    "ingest": 1, "exchange": 1, "info": 1, "prompts": 1, "caption": 1,
    "generate": 2,
    "annotate": 3,
    "reward": 4,
    "rl": 5,
    "audit": 6,
    # entry points and stand-ins may use everything
    "demo": 9, "cli": 9, "testing": 9, "world": 9, "judge_server": 9, "__main__": 9, "__init__": 9,
}
MAY_USE_STAND_INS = {"demo", "cli", "testing", "world", "judge_server"}
STAND_INS = ("vprefer.testing", "vprefer.world", "vprefer.judge_server")


def modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("")
        yield rel.parts[0], path


def vprefer_imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vprefer"):
            names = [node.module] if node.module != "vprefer" else [f"vprefer.{a.name}" for a in node.names]
            yield from ((n, node.lineno) for n in names)
        elif isinstance(node, ast.Import):
            yield from ((a.name, node.lineno) for a in node.names if a.name.startswith("vprefer"))


def stage_of(top: str) -> int:
    assert top in STAGE, f"vprefer/{top} has no stage in tests/test_architecture.py: place it in the pipeline"
    return STAGE[top]


def test_imports_follow_the_pipeline():
    wrong = []
    for top, path in modules():
        for name, line in vprefer_imports(path):
            parts = name.split(".")
            if len(parts) < 2 or parts[1].startswith("__"):
                continue
            if stage_of(parts[1]) > stage_of(top):
                wrong.append(f"{path.relative_to(PKG.parent)}:{line} imports {name}")
    assert not wrong, "imports against the pipeline order:\n" + "\n".join(wrong)


def test_library_never_imports_stand_ins():
    wrong = [f"{path.relative_to(PKG.parent)}:{line} imports {name}"
             for top, path in modules() if top not in MAY_USE_STAND_INS
             for name, line in vprefer_imports(path) if name.startswith(STAND_INS)]
    assert not wrong, "production code importing vprefer.testing:\n" + "\n".join(wrong)


def test_modules_stay_small():
    big = [f"{p.relative_to(PKG.parent)}: {n} lines" for _, p in modules() if (n := len(p.read_text().splitlines())) > 420]
    assert not big, big

"""Run each benchmark variant in its own process (so peak memory is its own) and collect its JSON line."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def run_variants(script: str, names, extra: list[str], env: dict | None = None) -> list[dict]:
    rows = []
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}, **(env or {})}  # ours only
    for v in names:
        p = subprocess.run([sys.executable, script, "--variant", v, *extra], capture_output=True, text=True,
                           env=env)
        line = [x for x in p.stdout.splitlines() if x.startswith("{")]
        if not line:
            print(f"{v}: failed\n{p.stderr[-1500:]}")
            continue
        rows.append(json.loads(line[-1]))
    return rows

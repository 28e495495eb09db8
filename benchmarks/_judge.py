"""What the judge benchmarks start from: a stand-in judge on 127.0.0.1 and synthetic image sets."""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def judge_and_sets(sets: int) -> Iterator[tuple[object, Path, Path]]:
    """``(server, folder, manifest)``: the judge, a temporary folder, and ``sets`` sets of 4 synthetic 32-px
    images written under ``folder/syn`` (its manifest, ready for ``ingest``). Both go away on exit."""
    from vprefer.judge_server.server import JudgeServer
    from vprefer.testing.synthetic import write_dataset

    srv = JudgeServer().start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            yield srv, Path(tmp), write_dataset(Path(tmp) / "syn", sets, 4, size=32)
    finally:
        srv.stop()

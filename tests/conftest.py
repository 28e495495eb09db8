from __future__ import annotations

from pathlib import Path

import pytest

from vprefer.data import (
    FOLDER as DATA,  # real public data shipped in the package (licences there)
)


@pytest.fixture
def shared_data() -> Path:
    return DATA


@pytest.fixture
def judge(monkeypatch):
    """The embedded judge server on 127.0.0.1 (real HTTP), stopped after the test."""
    from vprefer.judge_server.server import JudgeServer

    monkeypatch.delenv("VPREFER_JUDGE_URL", raising=False)
    srv = JudgeServer().start()
    yield srv
    srv.stop()


@pytest.fixture
def synth_run(tmp_path):
    """A run with 6 synthetic image sets of 3 images each, ingested through the real path."""
    from vprefer.ingest import ingest
    from vprefer.testing.synthetic import write_dataset

    manifest = write_dataset(tmp_path / "syn", 6, 3)
    ingest(manifest, tmp_path / "run")
    return tmp_path / "run"


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same random state, so it gives the same result alone, in any order and in
    the suite (model initialisation, data order and sampling all draw from these generators)."""
    import random

    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    """A tiny SD-1.5-architecture pipeline built from configs, one per test module (the RL tests share it)."""
    from vprefer.testing.tiny_pipelines import make_tiny_sd

    return make_tiny_sd(tmp_path_factory.mktemp("sd") / "tiny-sd")


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory):
    """The same for SDXL (two text encoders, size/crop ids)."""
    from vprefer.testing.tiny_pipelines import make_tiny_sdxl

    return make_tiny_sdxl(tmp_path_factory.mktemp("xl") / "tiny-sdxl")

"""Real public data shipped with the package (see README.md here for sources, licences and facts)."""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).resolve().parent


def path(name: str) -> Path:
    return FOLDER / name

"""The bundled multilingual sample collection (ships inside the package: found after ``pip install``)."""

from __future__ import annotations

from pathlib import Path

SAMPLE_NAME = "sample"


def sample_path() -> Path:
    return Path(__file__).resolve().parent

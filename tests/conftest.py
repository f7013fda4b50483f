"""Fixtures shared by the test modules: one tiny random CXR-LLaVA checkpoint for the whole session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/helpers.py, importable from every test module

from cxrgen.models.cxr_llava.tiny import build_tiny_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny random checkpoint in the published layout, its weights in two safetensors shards."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", seed=0, shards=2)

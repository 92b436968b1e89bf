"""Shared test set-up: CPU DeepSpeed, repository paths, the tiny model."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
DEMO_DATA = REPO / "projects" / "demo" / "data"


def run_env() -> dict[str, str]:
    """The environment for subprocess runs of train.py / torchrun (CPU DeepSpeed, quiet)."""
    env = dict(os.environ)
    env["DS_ACCELERATOR"] = "cpu"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


@pytest.fixture(scope="session")
def python() -> str:
    return sys.executable


@pytest.fixture(scope="session")
def tiny_model():  # type: ignore[no-untyped-def]
    """The demo blip2_qwen (random weights, real Qwen tokenizer), built once per session."""
    import torch

    from lavislite.models import load_model

    torch.manual_seed(0)
    return load_model("blip2_qwen", "demo")

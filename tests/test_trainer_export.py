"""Exported encoders are plain, self-describing folders that load back to identical vectors.

DRAMA-family exports must be refused by transformers' Auto classes (never silently run as a
causal LM) and load natively in dramasearch; sentence-transformers-family exports must load
in sentence-transformers itself with the same vectors.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dramasearch.errors import ModelLoadError
from dramasearch.models import load_encoder as load_dramasearch_encoder
from trainer.export import METADATA_FILE, export_encoder, load_encoder
from trainer_helpers import make_tiny_drama

QUERIES = ["What is DRAMA?", "意大利首都是哪里？", "x"]
DOCS = ["DRAMA is a dense retriever pruned from Llama.", "羅馬是意大利首都。", " ".join(["long text"] * 100)]


def _perturbed(encoder, seed=0):
    """Stand-in for training: weights that differ from any file on disk."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in encoder.model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 1e-2)
    return encoder


def _same_vectors(a, b, tol=1e-6):
    assert np.abs(a.encode_queries(QUERIES) - b.encode_queries(QUERIES)).max() < tol
    assert np.abs(a.encode_documents(DOCS, dim=16) - b.encode_documents(DOCS, dim=16)).max() < tol


@pytest.fixture(scope="module")
def drama_export(tmp_path_factory):
    folder = make_tiny_drama(tmp_path_factory.mktemp("tiny-drama"))
    encoder = _perturbed(load_encoder_plain(folder, max_length=40))
    out = export_encoder(encoder, tmp_path_factory.mktemp("exports") / "drama", extra={"training": {"step": 3}})
    return encoder, out


def load_encoder_plain(folder, **kwargs):
    return load_dramasearch_encoder(str(folder), device="cpu", dtype=torch.float32, **kwargs)


def test_drama_export_loads_back_identically(drama_export):
    encoder, out = drama_export
    _same_vectors(encoder, load_encoder(out, device="cpu", dtype=torch.float32))
    meta = json.loads((out / METADATA_FILE).read_text())
    assert meta["family"] == "drama" and meta["attention"] == "bidirectional"
    assert meta["special_tokens"] == "BOS + text + EOS" and meta["query_prefix"] == "Query: "
    assert meta["pooling"] == "mean" and meta["normalize"] is True and meta["max_length"] == 40
    assert meta["training"] == {"step": 3}
    # dramasearch's own loader reads the folder too (the max length is then the model's own).
    _same_vectors(encoder, load_encoder_plain(out, max_length=40))


def test_drama_export_is_refused_by_transformers_auto_classes(drama_export):
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    _, out = drama_export
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "drama" and "auto_map" not in config and config["is_causal"] is False
    for load in (AutoConfig.from_pretrained, AutoModel.from_pretrained, AutoModelForCausalLM.from_pretrained):
        with pytest.raises(ValueError, match="drama"):
            load(str(out))
        with pytest.raises(ValueError, match="drama"):
            load(str(out), trust_remote_code=True)
    assert not list(out.glob("*.py")) and not list(out.glob(".*tmp*"))


def test_sentence_transformers_export_loads_in_sentence_transformers(minilm, tmp_path):
    from sentence_transformers import SentenceTransformer

    source = load_encoder_plain(minilm.spec.name, max_length=64)
    encoder = _perturbed(source)
    out = export_encoder(encoder, tmp_path / "st")
    reference = SentenceTransformer(str(out), device="cpu")
    assert reference.max_seq_length == 64
    texts = QUERIES + DOCS  # the long doc is cut at 64 tokens by both
    expected = reference.encode(texts, prompt_name="query", convert_to_numpy=True)
    assert np.abs(encoder.encode_queries(texts) - expected).max() < 1e-5
    assert np.abs(encoder.encode_documents(texts) - reference.encode(texts, prompt_name="document")).max() < 1e-5
    _same_vectors(encoder, load_encoder(out, device="cpu", dtype=torch.float32))
    meta = json.loads((out / METADATA_FILE).read_text())
    assert meta["family"] == "sentence-transformers" and meta["special_tokens"] == "the tokenizer's own template"


def test_export_replaces_atomically_and_checks_metadata(drama_export, tmp_path):
    encoder, _ = drama_export
    out = tmp_path / "model"
    export_encoder(encoder, out)
    (out / "stale.txt").write_text("from an earlier export")
    export_encoder(encoder, out)
    assert not (out / "stale.txt").exists() and [p.name for p in tmp_path.iterdir()] == ["model"]
    meta = json.loads((out / METADATA_FILE).read_text())
    (out / METADATA_FILE).write_text(json.dumps({**meta, "query_prefix": "query: "}))
    with pytest.raises(ModelLoadError, match="query_prefix"):
        load_encoder(out, device="cpu")
    with pytest.raises(ModelLoadError, match=METADATA_FILE):
        load_encoder(tmp_path, device="cpu")
    with pytest.raises(TypeError, match="Encoder"):
        export_encoder(encoder.model, tmp_path / "x")

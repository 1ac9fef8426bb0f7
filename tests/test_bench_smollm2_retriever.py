"""benchmarks/bench_smollm2_retriever.py end to end on a tiny DRAMA model, and the one-encode Matryoshka evaluation.

The GPU study's numbers come from this script, so every stage runs here on CPU. The checks
are independent of the script: the dims evaluation against encoding at each dim and ranking
by numpy, the parameter counts against the config, the "none" row against the trained model.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dramasearch.evaluate import evaluate_run
from dramasearch.models import load_encoder
from trainer.devset import DevSet, evaluate_encoder_dims
from trainer_helpers import make_tiny_drama, write_dev_set, write_train_file

REPO = Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_smollm2_retriever", REPO / "benchmarks" / "bench_smollm2_retriever.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("smol")
    model = make_tiny_drama(root / "tiny")
    write_dev_set(root / "data" / "topics")
    (root / "data" / "topics" / "qrels").mkdir()
    shutil.move(root / "data" / "topics" / "qrels.tsv", root / "data" / "topics" / "qrels" / "test.tsv")
    return model, root / "data", write_train_file(root / "train.jsonl")


def test_dims_from_one_encode_equal_encoding_at_each_dim(setup):
    model, data, _ = setup
    encoder = load_encoder(str(model), device="cpu", dtype=torch.float32)
    dev = DevSet.load(data / "topics" / "corpus.jsonl", data / "topics" / "queries.jsonl", data / "topics" / "qrels" / "test.tsv")
    got = evaluate_encoder_dims(encoder, dev, [16, 32, None])
    for dim in (16, 32, None):
        docs, queries = encoder.encode_documents(dev.doc_texts, dim=dim), encoder.encode_queries(dev.query_texts, dim=dim)
        scores = queries @ docs.T
        run = {qid: {dev.doc_ids[j]: float(scores[i, j]) for j in np.argsort(-scores[i])} for i, qid in enumerate(dev.query_ids)}
        assert got[dim] == pytest.approx(evaluate_run(run, dev.qrels).metrics["nDCG@10"], abs=1e-6)
    assert len(set(got.values())) > 1  # the dims are really different evaluations


def test_every_stage_runs_and_its_numbers_are_consistent(setup, tmp_path, monkeypatch):
    model, data, train_file = setup
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))  # as when run as a script: its folder is on the path
    bench = load_bench()
    out = tmp_path / "out"
    bench.main(["--out", str(out), "--model", str(model), "--data", str(data), "--eval", "topics",
                "--prune-eval", "topics", "--dims", "16,64", "--train-data", str(train_file), "--steps", "2",
                "--batch-size", "4", "--negatives", "2", "--chunk-size", "8", "--max-length", "32", "--fractions", "50",
                "--recovery-steps", "1", "--calib-texts", "8", "--speed-texts", "8", "--repeats", "2"])
    results = json.loads((out / "results.json").read_text())
    assert set(results["backbone"]["topics"]) == set(results["trained"]["topics"]) == {"16", "64"}
    assert results["train"]["steps"] == 2 and results["train"]["examples"] == 8

    trained = load_encoder(str(out / "train" / "last"), max_length=32)
    dev = bench.load_dev(data / "topics")
    assert results["trained"]["topics"]["64"] == pytest.approx(evaluate_encoder_dims(trained, dev, [None])[None])
    assert results["prune-eval"]["none"]["ndcg10"]["topics"] == pytest.approx(results["trained"]["topics"]["64"])

    # make_tiny_drama: hidden 64, 2 layers, 4 heads / 2 kv heads of 16 dims, MLP 128; 50% = 1 sub-layer
    attention, mlp = 2 * 64 * 64 + 2 * 64 * 32 + 64, 3 * 64 * 128 + 64
    full = results["prune-eval"]["none"]["non_embedding_parameters"]
    assert full == 2 * (attention + mlp) + 64
    assert full - results["prune-eval"]["mlp-50"]["non_embedding_parameters"] == mlp
    assert full - results["prune-eval"]["attention-50"]["non_embedding_parameters"] == attention
    profile = results["profile"]
    assert results["prune-eval"]["mlp-50"]["drop_mlp"] == 1 and len(profile["mlp"]) == 2
    assert set(results["recovered"]) == {"mlp-50", "attention-50"}
    for row in results["speed"].values():
        assert len(row["runs"]) == 2 and row["tokens_per_s"] == pytest.approx(float(np.median(row["runs"])))
    assert results["speed"]["none"]["speedup"] == 1.0

    before = (out / "results.json").read_text()  # a rerun skips every finished stage
    bench.main(["--out", str(out), "--model", str(model), "--data", str(data), "--eval", "topics", "--prune-eval", "topics",
                "--train-data", str(train_file), "--fractions", "50"])
    assert (out / "results.json").read_text() == before

    figure = tmp_path / "profile.png"
    bench.main(["--out", str(out), "--figure", str(figure), "--prune-eval", "topics", "--calib-texts", "8"])
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

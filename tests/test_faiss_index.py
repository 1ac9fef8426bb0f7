"""FAISS index building at Matryoshka dims: exactness, recall, round trips and the param rules.

Data: seeded unit vectors drawn around 40 random centres (embeddings cluster; uniformly
random points on a sphere are a worst case no ANN index is tuned for).
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator

import numpy as np
import pytest

from dramasearch.errors import IndexFormatError
from dramasearch.index.faiss_index import (
    KINDS,
    IndexSpec,
    apply_search_params,
    build_index,
    choose_spec,
    load_index,
    save_index,
)

N, DIM, NQ, K = 3000, 64, 100, 10

# recall@10 vs exact search at default params; measured 1.0, 0.998, 0.945, 0.43 (8-byte
# codes, 6-bit since 3000 rows), 0.984, so the floors leave margin for FAISS version drift
RECALL_FLOOR = {"flat": 1.0, "hnsw": 0.95, "ivf": 0.85, "ivfpq": 0.30, "sq8": 0.90}


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _clustered(n: int, rng: np.random.Generator) -> np.ndarray:
    centres = rng.standard_normal((40, DIM))
    return _unit(centres[rng.integers(0, 40, n)] + 0.6 * rng.standard_normal((n, DIM)))


_RNG = np.random.default_rng(1234)
CORPUS = _clustered(N, _RNG)
QUERIES = _clustered(NQ, _RNG)


class Batches:
    """Re-iterable source of fp16 blocks (as stored in shards) that counts its passes."""

    def __init__(self, x: np.ndarray, block: int = 700):
        self.x, self.block, self.calls = x, block, 0

    def __call__(self) -> Iterator[np.ndarray]:
        self.calls += 1
        return (self.x[i : i + self.block].astype(np.float16) for i in range(0, len(self.x), self.block))


def _exact(x: np.ndarray, q: np.ndarray, k: int = K) -> tuple[np.ndarray, np.ndarray]:
    scores = q.astype(np.float64) @ x.astype(np.float64).T
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, ids, axis=1), ids


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / truth.shape[1] for f, t in zip(found, truth)]))


# What the index really holds: fp16 shard rows, renormalized in float32.
STORED = _unit(CORPUS.astype(np.float16).astype(np.float32))
TRUE_SCORES, TRUE_IDS = _exact(STORED, QUERIES)


@pytest.fixture(scope="module", params=KINDS)
def built(request):
    spec = choose_spec(request.param, DIM, N)
    batches = Batches(CORPUS)
    return spec, build_index(spec, batches, N), batches.calls


def test_streams_once_to_add_and_once_more_only_to_train(built):
    spec, index, calls = built
    assert index.ntotal == N and index.d == DIM
    assert calls == (2 if spec.kind in ("ivf", "ivfpq", "sq8") else 1)


def test_recall_against_exact_search(built):
    spec, index, _ = built
    _, ids = index.search(QUERIES, K)
    assert _recall(ids, TRUE_IDS) >= RECALL_FLOOR[spec.kind]


def test_flat_is_exact():
    spec = choose_spec("flat", DIM, N)
    scores, ids = build_index(spec, Batches(CORPUS), N).search(QUERIES, K)
    np.testing.assert_array_equal(ids, TRUE_IDS)
    np.testing.assert_allclose(scores, TRUE_SCORES, atol=1e-5)


def test_save_load_round_trip_gives_identical_results(built, tmp_path):
    spec, index, _ = built
    path = tmp_path / spec.filename
    save_index(index, path)
    assert os.listdir(tmp_path) == [spec.filename]  # no tmp file left behind
    before = index.search(QUERIES, K)
    for mmap in (False, True):
        after = load_index(path, spec, mmap=mmap).search(QUERIES, K)
        np.testing.assert_array_equal(after[1], before[1])
        np.testing.assert_array_equal(after[0], before[0])


def test_save_replaces_existing_file_atomically(tmp_path):
    spec = choose_spec("flat", DIM, 10)
    path = tmp_path / spec.filename
    save_index(build_index(spec, Batches(CORPUS[:10]), 10), path)
    save_index(build_index(spec, Batches(CORPUS[:20]), 20), path)
    assert os.listdir(tmp_path) == [spec.filename]
    assert load_index(path, spec).ntotal == 20


def test_truncated_index_equals_numpy_truncation():
    small = 32
    spec = choose_spec("flat", small, N)
    scores, ids = build_index(spec, Batches(CORPUS), N).search(_unit(QUERIES[:, :small]), K)
    stored = CORPUS.astype(np.float16).astype(np.float64)[:, :small]
    stored /= np.linalg.norm(stored, axis=1, keepdims=True)
    want_scores, want_ids = _exact(stored, _unit(QUERIES[:, :small]))
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)


@pytest.mark.parametrize(
    ("num_vectors", "dim", "kind"),
    [
        (300, 384, "flat"),
        (99_999, 768, "flat"),
        (100_000, 768, "hnsw"),
        (5_000_000, 384, "hnsw"),
        (5_000_001, 384, "ivf"),  # past HNSW's row limit; 5M x (4*384 + 8) bytes fit 16 GiB
        (5_000_000, 1024, "ivfpq"),  # 5M x (4*1024 + 256) bytes > 16 GiB, and IVF-Flat too
        (50_000_000, 256, "ivfpq"),  # 50M x (32 + 8) bytes of codes and ids fit
    ],
)
def test_auto_kind_by_size(num_vectors, dim, kind):
    """At a 16 GiB budget (auto's rules by budget are tested in test_scale_index.py)."""
    assert choose_spec("auto", dim, num_vectors, memory_budget=16 * 2**30).kind == kind


def test_default_params():
    assert choose_spec("hnsw", 384, 10**6).params == {"hnsw_m": 32, "ef_construction": 200, "ef_search": 128}
    assert choose_spec("ivf", 384, 10**6).params == {"nlist": 4000, "nprobe": 250}
    assert choose_spec("ivf", 384, 10_000).params == {"nlist": 256, "nprobe": 16}  # 10000 // 39
    big = choose_spec("ivfpq", 768, 10**8).params
    assert big == {"nlist": 262_144 // 39, "nprobe": 262_144 // 39 // 16, "pq_m": 96, "pq_bits": 8}
    assert choose_spec("ivfpq", 100, 10**6).params["pq_m"] == 10  # largest divisor of 100 <= 12
    assert choose_spec("flat", 64, 5).params == {} and choose_spec("sq8", 64, 5).params == {}


@pytest.mark.parametrize("kind", ["ivf", "ivfpq"])
def test_small_corpus_shrinks_trained_params_and_still_searches(kind):
    spec = choose_spec(kind, DIM, 300)
    assert spec.params["nlist"] == 300 // 39 and spec.params["nprobe"] == spec.params["nlist"]
    if kind == "ivfpq":
        assert spec.params["pq_bits"] == 2  # floor(log2(300 / 39))
    index = build_index(spec, Batches(CORPUS[:300]), 300)
    _, ids = index.search(QUERIES[:5], K)
    assert index.ntotal == 300 and (ids >= 0).all()


def test_unknown_kind_lists_valid_ones():
    with pytest.raises(ValueError, match="flat, hnsw, ivf, ivfpq, sq8"):
        choose_spec("annoy", DIM, N)


def test_spec_survives_json_and_names_its_file():
    spec = choose_spec("ivfpq", 256, 10**6)
    assert IndexSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert spec.filename == "dim256-ivfpq.faiss"
    with pytest.raises(ValueError, match="unknown index kind"):
        IndexSpec.from_dict({"kind": "lsh", "dim": 8, "params": {}})


def test_search_param_overrides():
    spec = choose_spec("ivf", DIM, 300)
    index = build_index(spec, Batches(CORPUS[:300]), 300)
    apply_search_params(index, spec, nprobe=1)
    assert index.nprobe == 1
    with pytest.raises(ValueError, match="ef_search"):
        apply_search_params(index, spec, ef_search=64)


def test_row_count_mismatch_is_an_error():
    with pytest.raises(ValueError, match="num_vectors"):
        build_index(choose_spec("flat", DIM, 100), Batches(CORPUS[:90]), 100)
    with pytest.raises(ValueError, match="num_vectors"):
        build_index(choose_spec("sq8", DIM, 100), Batches(CORPUS[:90]), 100)


def test_load_rejects_wrong_dim(tmp_path):
    spec = choose_spec("flat", DIM, 10)
    path = tmp_path / spec.filename
    save_index(build_index(spec, Batches(CORPUS[:10]), 10), path)
    with pytest.raises(IndexFormatError, match="dim=64"):
        load_index(path, choose_spec("flat", 32, 10))
    with pytest.raises(IndexFormatError, match="not found"):
        load_index(tmp_path / "missing.faiss", spec)

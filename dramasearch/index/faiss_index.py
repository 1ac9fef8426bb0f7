"""FAISS indexes over Matryoshka-truncated embeddings: choose, build, tune, save, load.

Documents are encoded once at full dimension; each index keeps only the first `dim`
components, L2-renormalized, so inner product equals cosine similarity at that dim.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ..errors import IndexFormatError, UsageError
from ..fsutil import atomic_path
from ..matryoshka import prepare

KINDS = ("flat", "hnsw", "ivf", "ivfpq", "sq8")

# One factory string per kind; params fill the placeholders.
_FACTORY = {
    "flat": "Flat",
    "hnsw": "HNSW{hnsw_m},Flat",
    "ivf": "IVF{nlist},Flat",
    "ivfpq": "IVF{nlist},PQ{pq_m}x{pq_bits}",
    "sq8": "SQ8",
}

# Kinds whose build is worth moving to a GPU. Flat "build" is a memcpy; HNSW and plain
# SQ8 have no GPU implementation in the cloner (index_cpu_to_gpu throws for them).
_GPU_KINDS = frozenset({"ivf", "ivfpq"})

FLAT_MAX_VECTORS = 100_000
HNSW_MAX_VECTORS = 5_000_000
HNSW_MAX_BYTES = 16 * 2**30
MIN_POINTS_PER_CENTROID = 39  # FAISS k-means warns below this many training points per centroid
DEFAULT_TRAIN_SIZE = 262_144
HNSW_DEFAULTS = {"hnsw_m": 32, "ef_construction": 200, "ef_search": 128}
BLOCK_ROWS = 65_536  # rows handed to one FAISS add call; bounds the float32 copy


@dataclass(frozen=True)
class IndexSpec:
    """What to build: kind, truncated dim and integer params (JSON-ready for the manifest)."""

    kind: str
    dim: int
    params: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "dim": self.dim, "params": dict(self.params)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IndexSpec:
        kind = _check_kind(data["kind"])
        return cls(kind=kind, dim=int(data["dim"]), params={k: int(v) for k, v in data["params"].items()})

    @property
    def filename(self) -> str:
        return f"dim{self.dim}-{self.kind}.faiss"

    @property
    def factory(self) -> str:
        return _FACTORY[self.kind].format(**self.params)


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise UsageError("index_kind", f"unknown index kind {kind!r}; choose one of: auto, {', '.join(KINDS)}")
    return kind


def _hnsw_bytes(dim: int, num_vectors: int) -> int:
    """Rough HNSW footprint: float32 vectors plus 2*M int32 links on level 0."""
    return num_vectors * (4 * dim + 2 * HNSW_DEFAULTS["hnsw_m"] * 4)


def _auto_kind(dim: int, num_vectors: int) -> str:
    if num_vectors < FLAT_MAX_VECTORS:
        return "flat"
    if num_vectors <= HNSW_MAX_VECTORS and _hnsw_bytes(dim, num_vectors) <= HNSW_MAX_BYTES:
        return "hnsw"
    return "ivfpq"


def _nlist(num_vectors: int) -> int:
    train_rows = min(num_vectors, DEFAULT_TRAIN_SIZE)
    return max(1, min(round(4 * math.sqrt(num_vectors)), train_rows // MIN_POINTS_PER_CENTROID))


def _pq_m(dim: int) -> int:
    """Largest divisor of dim that is <= dim/8, i.e. ~8 dims per 1-byte sub-quantizer."""
    target = max(1, dim // 8)
    return max(m for m in range(1, target + 1) if dim % m == 0)


def _pq_bits(num_vectors: int) -> int:
    """8 bits unless the training sample is too small to give each of 2^bits codes 39 points."""
    train_rows = min(num_vectors, DEFAULT_TRAIN_SIZE)
    return max(1, min(8, int(math.log2(train_rows / MIN_POINTS_PER_CENTROID))))


def choose_spec(kind: str, dim: int, num_vectors: int) -> IndexSpec:
    """Resolve `auto` and fill default params by these written-down rules.

    Rules (after the FAISS wiki "Guidelines to choose an index" and autofaiss):

    ============  =============================================================
    auto          N < 100k -> flat (exact, brute force is fast enough);
                  N <= 5M and N*(4*dim + 256) bytes <= 16 GiB -> hnsw;
                  otherwise -> ivfpq
    nlist         round(4*sqrt(N)), clamped to [1, min(N, 262144) // 39] so
                  every centroid gets >= 39 training points
    nprobe        max(8, nlist // 16), at most nlist
    pq_m          largest divisor of dim <= dim/8 (~8 dims per code byte)
    pq_bits       8, lowered to floor(log2(min(N, 262144) / 39)) (>= 1) so
                  each of the 2^bits codewords gets >= 39 training points
    hnsw          M=32, efConstruction=200, efSearch=128
    flat, sq8     no params (ivfpq needs N >= 2: a 1-bit codebook has 2 codewords)
    ============  =============================================================
    """
    if kind == "auto":
        kind = _auto_kind(dim, num_vectors)
    _check_kind(kind)
    if dim < 1 or num_vectors < (2 if kind == "ivfpq" else 1):
        raise UsageError("index_kind", f"{kind} needs dim >= 1 and enough vectors to train; got {dim=}, {num_vectors=}")
    params: dict[str, int] = {}
    if kind == "hnsw":
        params.update(HNSW_DEFAULTS)
    if kind in ("ivf", "ivfpq"):
        nlist = _nlist(num_vectors)
        params.update(nlist=nlist, nprobe=min(nlist, max(8, nlist // 16)))
    if kind == "ivfpq":
        params.update(pq_m=_pq_m(dim), pq_bits=_pq_bits(num_vectors))
    return IndexSpec(kind=kind, dim=dim, params=params)


def _blocks(batches: Callable[[], Iterable[np.ndarray]], dim: int, normalize: bool) -> Iterator[np.ndarray]:
    """Truncated (and, for normalizing models, renormalized) float32 blocks of at most BLOCK_ROWS rows."""
    for batch in batches():
        for start in range(0, len(batch), BLOCK_ROWS):
            yield prepare(batch[start : start + BLOCK_ROWS], dim, normalize)


def _training_sample(
    batches: Callable[[], Iterable[np.ndarray]], dim: int, num_vectors: int, train_size: int, seed: int,
    normalize: bool = True,
) -> np.ndarray:
    """Seeded uniform sample of up to train_size rows, streamed: only the sample is held."""
    rng = np.random.default_rng(seed)
    wanted = np.sort(rng.choice(num_vectors, size=min(train_size, num_vectors), replace=False))
    picked: list[np.ndarray] = []
    offset = 0
    for batch in batches():
        lo, hi = np.searchsorted(wanted, [offset, offset + len(batch)])
        if hi > lo:
            picked.append(prepare(np.asarray(batch)[wanted[lo:hi] - offset], dim, normalize))
        offset += len(batch)
    if offset != num_vectors:
        raise ValueError(f"batches() yielded {offset} rows but num_vectors={num_vectors}")
    return np.concatenate(picked) if picked else np.empty((0, dim), np.float32)


def _gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _to_gpu(index: faiss.Index, spec: IndexSpec) -> faiss.Index:
    options = faiss.GpuClonerOptions()
    # fp16 lookup tables let GPU IVFPQ take large codes (>= 56 bytes); IVF-Flat stays exact.
    options.useFloat16 = spec.kind == "ivfpq"
    return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index, options)


def _wants_gpu(spec: IndexSpec, use_gpu: bool | None) -> bool:
    """GPU only where it helps and is implemented (GPU IVFPQ needs 8-bit codes)."""
    possible = spec.kind in _GPU_KINDS and spec.params.get("pq_bits", 8) == 8 and _gpu_available()
    if use_gpu and not possible:
        raise UsageError("use_gpu", f"use_gpu=True but no GPU build is available for {spec.factory!r}")
    return possible if use_gpu is None else use_gpu


def build_index(
    spec: IndexSpec,
    batches: Callable[[], Iterable[np.ndarray]],
    num_vectors: int,
    *,
    use_gpu: bool | None = None,
    train_size: int = DEFAULT_TRAIN_SIZE,
    seed: int = 0,
    normalize: bool = True,
) -> faiss.Index:
    """Build a CPU index at spec.dim from full-dim row blocks, streaming them once or twice.

    `batches()` is called once for a training sample (trained kinds only) and once to add,
    so the corpus never has to fit in memory. Ids are row positions in that order. `normalize`
    False (models trained for dot product) truncates without renormalizing. The
    result is always a CPU index, so it can be saved and searched anywhere.
    """
    index = faiss.index_factory(spec.dim, spec.factory, faiss.METRIC_INNER_PRODUCT)
    if spec.kind == "hnsw":
        index.hnsw.efConstruction = spec.params["ef_construction"]
    on_gpu = _wants_gpu(spec, use_gpu)
    if on_gpu:
        index = _to_gpu(index, spec)
    if not index.is_trained:
        index.train(_training_sample(batches, spec.dim, num_vectors, train_size, seed, normalize))
    for block in _blocks(batches, spec.dim, normalize):
        index.add(block)
    if index.ntotal != num_vectors:
        raise ValueError(f"batches() yielded {index.ntotal} rows but num_vectors={num_vectors}")
    if on_gpu:
        index = faiss.index_gpu_to_cpu(index)
    apply_search_params(index, spec)
    return index


def apply_search_params(
    index: faiss.Index, spec: IndexSpec, *, nprobe: int | None = None, ef_search: int | None = None
) -> None:
    """Set query-time knobs (not stored reliably in the file), defaulting to spec.params."""
    if spec.kind in ("ivf", "ivfpq"):
        faiss.extract_index_ivf(index).nprobe = spec.params["nprobe"] if nprobe is None else nprobe
    elif nprobe is not None:
        raise UsageError("nprobe", f"nprobe applies to ivf kinds, not {spec.kind!r}")
    if spec.kind == "hnsw":
        hnsw = faiss.downcast_index(index).hnsw
        hnsw.efSearch = spec.params["ef_search"] if ef_search is None else ef_search
    elif ef_search is not None:
        raise UsageError("ef_search", f"ef_search applies to hnsw, not {spec.kind!r}")


def search_params(spec: IndexSpec, selector, k: int, *, ef_search: int | None = None, nprobe: int | None = None):
    """Per-call FAISS parameters: the live-row selector, and efSearch >= k so HNSW can return k."""
    kwargs = {} if selector is None else {"sel": selector}
    if spec.kind == "hnsw":
        return faiss.SearchParametersHNSW(efSearch=max(ef_search or spec.params["ef_search"], k), **kwargs)
    if spec.kind in ("ivf", "ivfpq"):
        return faiss.SearchParametersIVF(nprobe=nprobe or spec.params["nprobe"], **kwargs)
    return faiss.SearchParameters(**kwargs) if kwargs else None


# A trained kind needs enough rows to train on; a small segment (e.g. one `add`) is searched exactly.
MIN_TRAINED_ROWS = 10_000


def segment_spec(kind: str, dim: int, rows: int) -> IndexSpec:
    """The spec one segment is built with: the index's kind, with params for the segment's size."""
    if kind in ("ivf", "ivfpq") and rows < MIN_TRAINED_ROWS:
        kind = "flat"
    return choose_spec(kind, dim, rows)


def save_index(index: faiss.Index, path: str | Path) -> None:
    """Write atomically: readers see the old file or the complete new one, never a partial."""
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))


def load_index(path: str | Path, spec: IndexSpec, *, mmap: bool = False) -> faiss.Index:
    """Read an index, check it matches spec, and apply spec's search params.

    mmap keeps IVF inverted lists on disk (paged in on demand) instead of in RAM.
    """
    if not Path(path).is_file():
        raise IndexFormatError(f"{path}: index file not found; build the index first")
    flags = faiss.IO_FLAG_MMAP if mmap and hasattr(faiss, "IO_FLAG_MMAP") else 0
    index = faiss.read_index(str(path), flags)
    if index.d != spec.dim or index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise IndexFormatError(
            f"{path}: index has dim={index.d}, metric={index.metric_type} but the manifest expects "
            f"dim={spec.dim} with inner product; rebuild the index"
        )
    apply_search_params(index, spec)
    return index

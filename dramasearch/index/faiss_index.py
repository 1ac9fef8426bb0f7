"""FAISS indexes over Matryoshka-truncated embeddings: choose, build, tune, save, load.

Documents are encoded once at full dimension; each index keeps only the first `dim`
components, L2-renormalized, so inner product equals cosine similarity at that dim.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from faiss.contrib.ivf_tools import add_preassigned

from ..errors import IndexFormatError, UsageError
from ..fsutil import atomic_path
from ..matryoshka import prepare

KINDS = ("flat", "hnsw", "ivf", "ivfpq", "sq8")  # held in RAM when searched
# IVF kinds whose inverted lists stay in a .ivfdata file beside the index, memory-mapped
# read-only (see ondisk.py): RAM holds the centroids and a table of list offsets.
DISK_KINDS = ("ivf-disk", "ivfpq-disk")
ALL_KINDS = KINDS + DISK_KINDS
IVF_KINDS = frozenset({"ivf", "ivfpq", "ivf-disk", "ivfpq-disk"})
_PQ_KINDS = frozenset({"ivfpq", "ivfpq-disk"})

# One factory string per kind; params fill the placeholders.
_FACTORY = {
    "flat": "Flat",
    "hnsw": "HNSW{hnsw_m},Flat",
    "ivf": "IVF{nlist},Flat",
    "ivfpq": "IVF{nlist},PQ{pq_m}x{pq_bits}",
    "sq8": "SQ8",
    "ivf-disk": "IVF{nlist},Flat",
    "ivfpq-disk": "IVF{nlist},PQ{pq_m}x{pq_bits}",
}

# Code sizes (bytes = sub-quantizers at 8 bits) GpuIndexIVFPQ accepts in its default
# (non-interleaved) layout, which index_cpu_to_gpu uses; 56, 64 and 96 need fp16 lookup
# tables, which _to_gpu turns on for PQ kinds. faiss/gpu/impl/IVFPQ.cu isSupportedPQCodeLength.
GPU_PQ_CODE_BYTES = (1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 96)
NO_GPU_ENV = "DRAMASEARCH_NO_GPU"

FLAT_MAX_VECTORS = 100_000  # auto: brute force (flat, sq8) only below this many vectors (speed)
HNSW_MAX_VECTORS = 5_000_000  # auto: HNSW only up to this many (its build time grows fastest)
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
    if kind not in ALL_KINDS:
        raise UsageError("index_kind", f"unknown index kind {kind!r}; choose one of: auto, {', '.join(ALL_KINDS)}")
    return kind


def _nlist(num_vectors: int) -> int:
    train_rows = min(num_vectors, DEFAULT_TRAIN_SIZE)
    return max(1, min(round(4 * math.sqrt(num_vectors)), train_rows // MIN_POINTS_PER_CENTROID))


def _pq_m(dim: int) -> int:
    """Sub-quantizers (code bytes): ~8 dims per byte, within what GPU IVF-PQ accepts.

    The largest divisor of dim <= dim/8, unless that exceeds the GPU's largest code (96
    bytes, e.g. 128 at 1024-d, 256 at 2048-d): then the largest GPU code size dividing dim
    (64 at 1024, 2048 and 4096-d; 96 at 1536-d), so the index can be cloned to a GPU.
    Small dims keep the divisor rule even where it is no GPU size (10 at 100-d): fewer
    bytes would cost more recall than a GPU gains; `gpu_pq_supported` then says CPU.
    """
    target = max(1, dim // 8)
    m = max(m for m in range(1, target + 1) if dim % m == 0)
    if m > GPU_PQ_CODE_BYTES[-1]:
        m = max(b for b in GPU_PQ_CODE_BYTES if dim % b == 0)
    return m


def gpu_pq_supported(dim: int, pq_m: int, pq_bits: int) -> bool:
    """Whether GpuIndexIVFPQ (default layout, fp16 lookup tables) takes this PQ shape."""
    return pq_bits == 8 and dim % pq_m == 0 and pq_m in GPU_PQ_CODE_BYTES


def _pq_bits(num_vectors: int) -> int:
    """8 bits unless the training sample is too small to give each of 2^bits codes 39 points."""
    train_rows = min(num_vectors, DEFAULT_TRAIN_SIZE)
    return max(1, min(8, int(math.log2(train_rows / MIN_POINTS_PER_CENTROID))))


def choose_spec(kind: str, dim: int, num_vectors: int, memory_budget: int | None = None) -> IndexSpec:
    """Resolve `auto` and fill default params by these written-down rules.

    Rules (after the FAISS wiki "Guidelines to choose an index" and autofaiss):

    ============  =============================================================
    auto          the most accurate kind whose search-time RAM fits
                  `memory_budget` bytes (default: half the available RAM);
                  see budget.choose_kind
    nlist         round(4*sqrt(N)), clamped to [1, min(N, 262144) // 39] so
                  every centroid gets >= 39 training points
    nprobe        max(8, nlist // 16), at most nlist
    pq_m          largest divisor of dim <= dim/8 (~8 dims per code byte);
                  above 96 bytes, the largest GPU IVF-PQ code size dividing dim
    pq_bits       8, lowered to floor(log2(min(N, 262144) / 39)) (>= 1) so
                  each of the 2^bits codewords gets >= 39 training points
    hnsw          M=32, efConstruction=200, efSearch=128
    flat, sq8     no params (ivfpq needs N >= 2: a 1-bit codebook has 2 codewords)
    ============  =============================================================
    """
    if kind == "auto":
        from .budget import choose_kind, default_budget

        kind = choose_kind(dim, num_vectors, default_budget() if memory_budget is None else memory_budget).kind
    _check_kind(kind)
    if dim < 1 or num_vectors < (2 if kind in _PQ_KINDS else 1):
        raise UsageError("index_kind", f"{kind} needs dim >= 1 and enough vectors to train; got {dim=}, {num_vectors=}")
    params: dict[str, int] = {}
    if kind == "hnsw":
        params.update(HNSW_DEFAULTS)
    if kind in IVF_KINDS:
        nlist = _nlist(num_vectors)
        params.update(nlist=nlist, nprobe=min(nlist, max(8, nlist // 16)))
    if kind in _PQ_KINDS:
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


def _gpu_count() -> int:
    return faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0


def gpu_enabled(use_gpu: bool | None) -> bool | None:
    """The caller's choice, else off when DRAMASEARCH_NO_GPU is set (None: use GPUs if any)."""
    if use_gpu is not None:
        return use_gpu
    return False if os.environ.get(NO_GPU_ENV, "").strip() not in ("", "0") else None


@dataclass(frozen=True)
class GpuBuildPlan:
    """Where an IVF build runs: k-means of the coarse quantizer and the assignment of added
    blocks on `devices`; inverted lists always grow in CPU RAM (or on disk), so GPU memory
    holds the centroids and one block, never the vectors (GPU IVF-Flat would hold them all)."""

    devices: tuple[int, ...] = ()
    reason: str = ""

    @property
    def on_gpu(self) -> bool:
        return bool(self.devices)


def gpu_build_plan(spec: IndexSpec, use_gpu: bool | None, num_gpus: int) -> GpuBuildPlan:
    """Decide the GPU part of a build (a pure function, so it is tested without a GPU)."""
    wanted = gpu_enabled(use_gpu)
    if wanted is False:
        return GpuBuildPlan(reason="GPU turned off")
    if spec.kind not in IVF_KINDS:
        if wanted:
            raise UsageError("use_gpu", f"{spec.kind} has no GPU build step (only IVF kinds train and assign on a GPU)")
        return GpuBuildPlan(reason=f"{spec.kind} builds on CPU")
    if num_gpus < 1:
        if wanted:
            raise UsageError("use_gpu", "use_gpu=True but no GPU is visible to FAISS (faiss-gpu not installed?)")
        return GpuBuildPlan(reason="no GPU")
    return GpuBuildPlan(devices=tuple(range(num_gpus)), reason="k-means and assignment on GPU, lists in CPU RAM")


@dataclass(frozen=True)
class GpuSearchPlan:
    """Where a loaded index is searched: CPU, one GPU, or sharded over several (IndexShards:
    each GPU holds a slice of the vectors, per-shard top-k are merged by score, exactly)."""

    devices: tuple[int, ...] = ()
    shard: bool = False
    reason: str = ""


def gpu_search_plan(spec: IndexSpec, num_gpus: int, use_gpu: bool | None, has_deletes: bool) -> GpuSearchPlan:
    """Decide where to search (a pure function, so it is tested without a GPU)."""
    wanted = gpu_enabled(use_gpu)
    if wanted is False or num_gpus < 1:
        return GpuSearchPlan(reason="GPU turned off" if wanted is False else "no GPU")
    reason = None
    if spec.kind in DISK_KINDS:
        reason = "on-disk lists are searched where they are (a GPU copy would load them all)"
    elif spec.kind in ("hnsw", "sq8"):
        reason = f"{spec.kind} has no GPU index in FAISS's cloner"
    elif spec.kind in _PQ_KINDS and not gpu_pq_supported(spec.dim, spec.params["pq_m"], spec.params["pq_bits"]):
        reason = f"GPU IVF-PQ does not take {spec.params['pq_m']}x{spec.params['pq_bits']}-bit codes"
    elif has_deletes:
        reason = "GPU indexes take no ID selector, so deleted rows are filtered on CPU"
    if reason is not None:
        if wanted:
            raise UsageError("use_gpu", f"cannot search {spec.factory} on a GPU: {reason}")
        return GpuSearchPlan(reason=reason)
    devices = tuple(range(num_gpus))
    return GpuSearchPlan(devices=devices, shard=len(devices) > 1,
                         reason="sharded over GPUs" if len(devices) > 1 else "one GPU")


def _cloner_options(spec: IndexSpec, multiple: bool):
    options = faiss.GpuMultipleClonerOptions() if multiple else faiss.GpuClonerOptions()
    # fp16 lookup tables let GPU IVFPQ take large codes (56, 64, 96 bytes); IVF-Flat stays exact.
    options.useFloat16 = spec.kind in _PQ_KINDS
    return options


def to_gpus(index: faiss.Index, spec: IndexSpec, plan: GpuSearchPlan) -> faiss.Index:
    """A GPU copy of a CPU index for searching, per `plan` (the CPU index is returned unchanged
    when the plan says CPU)."""
    if not plan.devices:
        return index
    if len(plan.devices) == 1:
        return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), plan.devices[0], index, _cloner_options(spec, False))
    options = _cloner_options(spec, True)
    options.shard = plan.shard
    return faiss.index_cpu_to_gpus_list(index, co=options, gpus=list(plan.devices))


def _gpu_copy(index: faiss.Index, devices: tuple[int, ...]) -> faiss.Index:
    """A copy of a small CPU index (a flat quantizer) on one GPU, or replicated on several."""
    if len(devices) == 1:
        return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), devices[0], index)
    return faiss.index_cpu_to_gpus_list(index, gpus=list(devices))


def train_empty(
    spec: IndexSpec,
    batches: Callable[[], Iterable[np.ndarray]],
    num_vectors: int,
    *,
    train_size: int = DEFAULT_TRAIN_SIZE,
    seed: int = 0,
    normalize: bool = True,
    plan: GpuBuildPlan = GpuBuildPlan(),
    clustering_index: faiss.Index | None = None,
) -> faiss.Index:
    """A trained, empty CPU index (one pass over `batches` for the sample, trained kinds only).

    `clustering_index` runs the coarse k-means (a GPU flat index under a GPU plan; any exact
    index of the same metric gives the same centroids)."""
    index = faiss.index_factory(spec.dim, spec.factory, faiss.METRIC_INNER_PRODUCT)
    if spec.kind == "hnsw":
        index.hnsw.efConstruction = spec.params["ef_construction"]
    if index.is_trained:
        return index
    sample = _training_sample(batches, spec.dim, num_vectors, train_size, seed, normalize)
    if not _is_ivf(index):  # sq8: per-component ranges, nothing worth a GPU
        index.train(sample)
        return index
    ivf = faiss.extract_index_ivf(index)
    if clustering_index is None and plan.on_gpu:
        clustering_index = _gpu_copy(faiss.IndexFlat(spec.dim, index.metric_type), plan.devices)
    if clustering_index is not None:
        ivf.clustering_index = clustering_index
    index.train(sample)
    ivf.clustering_index = None  # the caller's index may be freed after training
    return index


def add_block(index: faiss.Index, block: np.ndarray, first_id: int, assigner: faiss.Index | None = None) -> None:
    """Add rows with ids first_id.. ; IVF kinds may take their list numbers from `assigner`
    (a GPU copy of the coarse quantizer), so only the assignment runs on the GPU."""
    if _is_ivf(index):
        ids = np.arange(first_id, first_id + len(block), dtype=np.int64)
        if assigner is None:
            index.add_with_ids(block, ids)
        else:
            _, lists = assigner.search(block, 1)
            add_preassigned(faiss.extract_index_ivf(index), block, np.ascontiguousarray(lists[:, 0]), ids)
    else:
        if index.ntotal != first_id:
            raise ValueError(f"{type(index).__name__} numbers rows itself: block at {first_id}, index at {index.ntotal}")
        index.add(block)


def _is_ivf(index: faiss.Index) -> bool:
    try:
        faiss.extract_index_ivf(index)
    except RuntimeError:
        return False
    return True


def coarse_assigner(index: faiss.Index, plan: GpuBuildPlan) -> faiss.Index | None:
    """A GPU copy of the trained coarse quantizer under a GPU plan, else None (CPU assigns)."""
    return _gpu_copy(faiss.extract_index_ivf(index).quantizer, plan.devices) if plan.on_gpu else None


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
    result is always a CPU index, so it can be saved and searched anywhere. `use_gpu`: None
    uses GPUs when FAISS sees some (unless DRAMASEARCH_NO_GPU=1), False never, True or fail.
    On-disk kinds are built by ondisk.build_ondisk, which writes files.
    """
    if spec.kind in DISK_KINDS:
        raise ValueError(f"{spec.kind} keeps its lists in a file: build it with ondisk.build_ondisk")
    plan = gpu_build_plan(spec, use_gpu, _gpu_count())
    index = train_empty(spec, batches, num_vectors, train_size=train_size, seed=seed, normalize=normalize, plan=plan)
    assigner = coarse_assigner(index, plan)
    added = 0
    for block in _blocks(batches, spec.dim, normalize):
        add_block(index, block, added, assigner)
        added += len(block)
    if index.ntotal != num_vectors:
        raise ValueError(f"batches() yielded {index.ntotal} rows but num_vectors={num_vectors}")
    apply_search_params(index, spec)
    return index


def apply_search_params(
    index: faiss.Index, spec: IndexSpec, *, nprobe: int | None = None, ef_search: int | None = None
) -> None:
    """Set query-time knobs (not stored reliably in the file), defaulting to spec.params."""
    if spec.kind in IVF_KINDS:
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
    if spec.kind in IVF_KINDS:
        return faiss.SearchParametersIVF(nprobe=nprobe or spec.params["nprobe"], **kwargs)
    return faiss.SearchParameters(**kwargs) if kwargs else None


# A trained kind needs enough rows to train on; a small segment (e.g. one `add`) is searched exactly.
MIN_TRAINED_ROWS = 10_000


def segment_spec(kind: str, dim: int, rows: int) -> IndexSpec:
    """The spec one segment is built with: the index's kind, with params for the segment's size."""
    if kind in IVF_KINDS and rows < MIN_TRAINED_ROWS:
        kind = "flat"
    return choose_spec(kind, dim, rows)


def save_index(index: faiss.Index, path: str | Path) -> None:
    """Write atomically: readers see the old file or the complete new one, never a partial."""
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))


def load_index(path: str | Path, spec: IndexSpec, *, mmap: bool = False, use_gpu: bool = False) -> faiss.Index:
    """Read an index, check it matches spec, and apply spec's search params.

    mmap keeps IVF inverted lists on disk (paged in on demand) instead of in RAM; on-disk
    kinds always do (their .ivfdata is checked against the header before any search).
    use_gpu=True moves the index to the GPUs gpu_search_plan picks (sharded over several);
    the caller must then not pass ID selectors (GPU indexes take none).
    """
    if not Path(path).is_file():
        raise IndexFormatError(f"{path}: index file not found; build the index first")
    if spec.kind in DISK_KINDS:
        from .ondisk import read_ondisk

        index = read_ondisk(path)
    else:
        flags = faiss.IO_FLAG_MMAP if mmap and hasattr(faiss, "IO_FLAG_MMAP") else 0
        index = faiss.read_index(str(path), flags)
    if index.d != spec.dim or index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise IndexFormatError(
            f"{path}: index has dim={index.d}, metric={index.metric_type} but the manifest expects "
            f"dim={spec.dim} with inner product; rebuild the index"
        )
    apply_search_params(index, spec)
    if use_gpu:
        index = to_gpus(index, spec, gpu_search_plan(spec, _gpu_count(), True, has_deletes=False))
    return index

"""Indexes bigger than RAM and GPU-ready FAISS choices (issue 10, items 4 and 5).

- on-disk IVF (ivf-disk, ivfpq-disk) built in parts gives the hits of the in-memory IVF with
  the same quantizer and nprobe; a truncated or altered .ivfdata is caught before searching;
- several segments searched one by one and merged equal exact search over all rows;
- `auto` picks by memory budget; GPU choices (PQ code size, build and search placement,
  turning the GPU off) are pure functions tested here on CPU.
"""
from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from dramasearch.errors import IndexDamagedError, UsageError
from dramasearch.index.budget import AUTO_ORDER, choose_kind, footprint, parse_size
from dramasearch.index.faiss_index import (
    ALL_KINDS, GPU_PQ_CODE_BYTES, NO_GPU_ENV, IndexSpec, add_block, build_index, choose_spec, gpu_build_plan,
    gpu_enabled, gpu_pq_supported, gpu_search_plan, load_index, train_empty,
)
from dramasearch.index.ondisk import build_ondisk, read_ondisk
from dramasearch.index.snapshot import Snapshot, verify_index
from dramasearch.index.vectors import import_vectors
from dramasearch.matryoshka import prepare

N, DIM, K = 3000, 64, 10
GiB, MiB = 2**30, 2**20


def _clustered(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    centres = rng.standard_normal((40, dim))
    x = centres[rng.integers(0, 40, n)] + 0.6 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


_RNG = np.random.default_rng(7)
CORPUS = _clustered(N, DIM, _RNG)
QUERIES = _clustered(50, DIM, _RNG)


def _batches(x: np.ndarray, block: int = 700):
    return lambda: (x[i : i + block].astype(np.float16) for i in range(0, len(x), block))


# --- on-disk IVF -------------------------------------------------------------------------------
@pytest.mark.parametrize(("disk_kind", "memory_kind"), [("ivf-disk", "ivf"), ("ivfpq-disk", "ivfpq")])
def test_ondisk_gives_the_hits_of_in_memory_ivf(tmp_path, disk_kind, memory_kind):
    disk_spec = choose_spec(disk_kind, DIM, N)
    path = tmp_path / disk_spec.filename
    entry = build_ondisk(disk_spec, _batches(CORPUS), N, path, part_rows=1000)  # 3 parts merged
    assert entry["data"]["file"] == f"dim{DIM}-{disk_kind}.ivfdata"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no scratch or temp left
    on_disk = load_index(path, disk_spec)
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(on_disk).invlists)
    assert isinstance(lists, faiss.OnDiskInvertedLists) and lists.read_only

    memory_spec = IndexSpec(memory_kind, DIM, disk_spec.params)
    in_memory = build_index(memory_spec, _batches(CORPUS), N)
    # Same sample and seed, so the same quantizer: the comparison below is like for like.
    centroids = lambda ix: faiss.rev_swig_ptr(faiss.downcast_index(faiss.extract_index_ivf(ix).quantizer).get_xb(),
                                              disk_spec.params["nlist"] * DIM).copy()
    np.testing.assert_array_equal(centroids(on_disk), centroids(in_memory))
    for nprobe in (1, 4, disk_spec.params["nlist"]):
        params = faiss.SearchParametersIVF(nprobe=nprobe)
        d_disk, i_disk = on_disk.search(QUERIES, K, params=params)
        d_mem, i_mem = in_memory.search(QUERIES, K, params=params)
        np.testing.assert_array_equal(i_disk, i_mem)
        np.testing.assert_allclose(d_disk, d_mem, rtol=0, atol=1e-6)
    if disk_kind == "ivf-disk":  # all lists probed = exact search over the stored rows
        stored = prepare(CORPUS.astype(np.float16), DIM, True)
        exact = np.argsort(-(QUERIES @ stored.T), axis=1, kind="stable")[:, :K]
        _, i_all = on_disk.search(QUERIES, K, params=faiss.SearchParametersIVF(nprobe=disk_spec.params["nlist"]))
        assert np.mean([len(set(a) & set(b)) / K for a, b in zip(i_all, exact)]) == 1.0


def test_ondisk_row_count_mismatch_leaves_nothing(tmp_path):
    spec = choose_spec("ivf-disk", DIM, N)
    with pytest.raises(ValueError, match="num_vectors"):
        build_ondisk(spec, _batches(CORPUS[:2900]), N, tmp_path / spec.filename, part_rows=1000)
    assert list(tmp_path.iterdir()) == []


def test_truncated_ivfdata_is_refused_before_search(tmp_path):
    spec = choose_spec("ivf-disk", DIM, N)
    path = tmp_path / spec.filename
    entry = build_ondisk(spec, _batches(CORPUS), N, path)
    data = tmp_path / entry["data"]["file"]
    with open(data, "r+b") as f:
        f.truncate(entry["data"]["bytes"] - 4096)
    with pytest.raises(IndexDamagedError, match="truncated"):
        read_ondisk(path)
    data.unlink()
    with pytest.raises(IndexDamagedError, match="missing"):
        load_index(path, spec)


@pytest.mark.skipif(not Path("/proc/self/smaps").is_file(), reason="needs Linux /proc/self/smaps to read VmFlags")
def test_ondisk_lists_are_mapped_for_random_reads(tmp_path):
    """Readahead on the lists' mapping thrashed a memory-limited search (RESULTS.md section 11):
    the mapping must carry the kernel's random-read flag ("rr" in smaps VmFlags)."""
    spec = choose_spec("ivf-disk", DIM, N)
    path = tmp_path / spec.filename
    build_ondisk(spec, _batches(CORPUS), N, path)
    index = read_ondisk(path)
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
    start = f"{int(lists.ptr):x}-"
    flags = None
    for block in Path("/proc/self/smaps").read_text().split("\n")[:-1]:
        if block.startswith(start):
            flags = ""  # the block of our mapping: its VmFlags line follows
        elif flags == "" and block.startswith("VmFlags:"):
            flags = block.split()[1:]
    assert flags is not None and "rr" in flags, flags
    assert index.search(QUERIES[:2], K)[1].shape == (2, K)  # still searchable


def _imported(tmp_path: Path, kind: str, rows: int = 12_000, dim: int = 32) -> tuple[Path, np.ndarray]:
    """An index folder made by import-vectors (one segment over MIN_TRAINED_ROWS, so `kind` is kept)."""
    vectors = _clustered(rows, dim, np.random.default_rng(3))
    np.save(tmp_path / "v.npy", vectors)
    root = tmp_path / "index"
    import_vectors(tmp_path / "v.npy", root, index_kind=kind)
    return root, vectors


def test_ondisk_in_an_index_folder_is_recorded_checked_and_verified(tmp_path):
    root, vectors = _imported(tmp_path, "ivf-disk")
    gen = json.loads(sorted((root / "generations").glob("*.json"))[-1].read_text())
    entry = gen["segments"][0]["faiss"]["dim32-ivf-disk"]
    folder = root / "segments" / gen["segments"][0]["name"]
    data = folder / entry["data"]["file"]
    assert data.stat().st_size == entry["data"]["bytes"] == 12_000 * (4 * 32 + 8)
    assert verify_index(root)[1] == []
    with _closing(Snapshot(root)) as snap:
        queries = prepare(vectors[:20], 32, True)
        scores, segs, rows = snap.search(queries, K, "dim32-ivf-disk", nprobe=entry["spec"]["params"]["nlist"])
        exact = np.argsort(-(queries @ prepare(vectors.astype(np.float16), 32, True).T), axis=1, kind="stable")[:, :K]
        assert (segs == 0).all() and (rows[:, 0] == np.arange(20)).all()  # each vector finds itself first
        assert np.mean([len(set(a) & set(b)) / K for a, b in zip(rows, exact)]) == 1.0
    # Same size, other bytes: only the full checksum can tell; verify names the file, and an open
    # with full checks refuses to search.
    with open(data, "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert verify_index(root)[1] == [f"{data}: contents differ from the checksum recorded when it was written "
                                     "(damaged or swapped)"]
    with pytest.raises(IndexDamagedError, match=r"\.ivfdata: contents differ"):
        Snapshot(root)
    # Truncated: refused when the snapshot opens, even with cheap checks, with the file named.
    with open(data, "r+b") as f:
        f.truncate(1000)
    with pytest.raises(IndexDamagedError, match=r"\.ivfdata: 1000 bytes, but"):
        Snapshot(root, checks="cheap")


class _closing:
    def __init__(self, snap):
        self.snap = snap

    def __enter__(self):
        return self.snap

    def __exit__(self, *exc):
        self.snap.close()


# --- exact merge over several index files -------------------------------------------------------
def test_segments_merged_equal_one_flat_index_over_all_rows(tmp_path, minilm):
    from dramasearch.index.build import BuildSettings, build_index as build_folder
    from dramasearch.index.updates import add_documents

    docs = [json.loads(line) for line in Path("examples/tiny/corpus.jsonl").read_text().splitlines() if line.strip()]
    parts = [docs[:12], docs[12:22], docs[22:]]
    files = []
    for n, part in enumerate(parts):
        files.append(tmp_path / f"part{n}.jsonl")
        files[-1].write_text("\n".join(json.dumps(d) for d in part) + "\n")
    root = tmp_path / "index"
    build_folder(BuildSettings(corpus=str(files[0]), output=str(root), model="minilm", index_kind="flat",
                               show_progress=False), encoder=minilm)
    for f in files[1:]:
        add_documents(root, f, encoder=minilm, show_progress=False)
    with _closing(Snapshot(root)) as snap:
        assert len(snap.refs) == 3
        stored = np.concatenate([np.concatenate(list(s.vector_blocks())) for s in snap.segments])
        keys = np.concatenate([ref.base + np.arange(ref.rows) for ref in snap.refs])
        queries = _clustered(25, stored.shape[1], np.random.default_rng(11))
        full = prepare(stored, stored.shape[1], True)
        one = faiss.IndexFlatIP(full.shape[1])
        one.add(full)
        for depth in (5, 20, len(keys)):  # beyond one segment's rows, and all rows
            scores, segs, rows = snap.search(queries, depth, f"dim{full.shape[1]}-flat")
            merged_keys = np.array([[snap.refs[s].base + r for s, r in zip(ss, rr)] for ss, rr in zip(segs, rows)])
            want_scores, want_rows = one.search(queries, depth)
            np.testing.assert_array_equal(merged_keys, keys[want_rows])
            np.testing.assert_allclose(scores, want_scores, rtol=0, atol=1e-6)


# --- auto by memory budget -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("rows", "dim", "budget", "kind"),
    [
        (50_000, 384, 1 * GiB, "flat"),  # 73 MiB of float32
        (50_000, 384, 40 * MiB, "sq8"),  # flat 73 MiB does not fit, 8-bit codes (18 MiB) do
        (2_000_000, 384, 8 * GiB, "hnsw"),  # 3.3 GiB with links
        (2_000_000, 384, 3 * GiB, "ivf"),  # 2.9 GiB of lists, no HNSW links
        (2_000_000, 384, 1 * GiB, "ivfpq"),  # 48-byte codes + ids: 116 MiB
        (2_000_000, 384, 64 * MiB, "ivf-disk"),  # centroids + list table: 8.4 MiB
        (6_000_000, 384, 64 * GiB, "ivf"),  # past HNSW's row limit
        (100_000_000, 1024, 16 * GiB, "ivfpq"),  # 64-byte codes + ids: 6.7 GiB
        (100_000_000, 1024, 4 * GiB, "ivf-disk"),
    ],
)
def test_auto_picks_the_most_accurate_kind_that_fits(rows, dim, budget, kind):
    choice = choose_kind(dim, rows, budget)
    assert choice.kind == kind and choice.fits
    assert choose_spec("auto", dim, rows, memory_budget=budget).kind == kind
    tried = [f.kind for f in choice.candidates]
    assert tried == [k for k in AUTO_ORDER if k in tried]  # in accuracy order, each with its RAM
    chosen = next(f for f in choice.candidates if f.kind == kind)
    assert chosen.ram <= budget and all(f.ram > budget for f in choice.candidates[: tried.index(kind)])


def test_footprints_follow_faiss_layouts():
    rows, dim = 2_000_000, 384
    params = choose_spec("ivfpq", dim, rows).params
    centroids = params["nlist"] * dim * 4
    assert footprint("flat", dim, rows).ram == 4 * dim * rows
    assert footprint("ivf", dim, rows).ram == centroids + rows * (4 * dim + 8)
    disk = footprint("ivf-disk", dim, rows)
    assert disk.ram == centroids + params["nlist"] * 24 and disk.disk == disk.ram + rows * (4 * dim + 8)
    assert footprint("ivfpq", dim, rows).ram == centroids + 256 * dim * 4 + rows * (params["pq_m"] + 8)


def test_nothing_fits_gives_the_smallest_and_says_so():
    choice = choose_kind(384, 2_000_000, 1 * MiB)
    assert choice.kind == "ivf-disk" and not choice.fits and "does not fit" in choice.explain()


def test_memory_budget_sizes():
    assert parse_size("4G") == 4 * GiB and parse_size("512M") == 512 * MiB and parse_size("1.5GiB") == 3 * GiB // 2
    assert parse_size("1000") == 1000 and parse_size("2t") == 2 * 2**40
    for bad in ("", "four", "4X", "-1G", "0"):
        with pytest.raises(UsageError, match="--memory-budget"):
            parse_size(bad)


def test_default_budget_is_half_the_available_ram(monkeypatch):
    import psutil

    from dramasearch.index import budget

    class Memory:
        available = 10 * GiB

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Memory)
    assert budget.default_budget() == 5 * GiB
    assert choose_spec("auto", 384, 2_000_000).kind == "hnsw"  # 3.3 GiB <= 5 GiB
    Memory.available = 4 * GiB
    assert choose_spec("auto", 384, 2_000_000).kind == "ivfpq"  # 2 GiB: neither HNSW nor IVF-Flat


def test_cli_lists_every_kind():
    from dramasearch.cli import INDEX_CHOICES

    assert INDEX_CHOICES == ["auto", *ALL_KINDS]


# --- GPU choices, decided on CPU -----------------------------------------------------------------
@pytest.mark.parametrize(("dim", "pq_m"), [(384, 48), (768, 96), (1024, 64), (1536, 96), (2048, 64), (4096, 64)])
def test_pq_code_size_is_one_gpu_ivfpq_takes(dim, pq_m):
    params = choose_spec("ivfpq", dim, 10**7).params
    assert params["pq_m"] == pq_m and dim % pq_m == 0 and pq_m in GPU_PQ_CODE_BYTES
    assert gpu_pq_supported(dim, params["pq_m"], params["pq_bits"])
    assert gpu_search_plan(choose_spec("ivfpq", dim, 10**7), 1, None, False).devices == (0,)


def test_shapes_gpu_ivfpq_refuses_stay_on_cpu():
    assert not gpu_pq_supported(1024, 128, 8)  # dim/8 at 1024-d: what the old rule chose
    assert not gpu_pq_supported(2048, 256, 8)
    small = choose_spec("ivfpq", 64, 300)  # 300 rows: 2-bit codes
    assert small.params["pq_bits"] < 8 and gpu_search_plan(small, 2, None, False).devices == ()
    with pytest.raises(UsageError, match="GPU IVF-PQ does not take"):
        gpu_search_plan(small, 1, True, False)


def test_gpu_build_plan_keeps_lists_off_the_gpu(monkeypatch):
    monkeypatch.delenv(NO_GPU_ENV, raising=False)
    ivf = choose_spec("ivf", 384, 10**6)
    plan = gpu_build_plan(ivf, None, 2)
    assert plan.devices == (0, 1) and "lists in CPU RAM" in plan.reason
    assert gpu_build_plan(choose_spec("ivf-disk", 384, 10**6), None, 1).devices == (0,)
    assert gpu_build_plan(choose_spec("hnsw", 384, 10**6), None, 1).devices == ()
    assert gpu_build_plan(ivf, None, 0).devices == ()
    with pytest.raises(UsageError, match="no GPU"):
        gpu_build_plan(ivf, True, 0)


def test_gpu_can_be_turned_off(monkeypatch):
    ivf = choose_spec("ivf", 384, 10**6)
    monkeypatch.setenv(NO_GPU_ENV, "1")
    assert gpu_enabled(None) is False and gpu_build_plan(ivf, None, 4).devices == ()
    assert gpu_search_plan(ivf, 4, None, False).devices == ()
    assert gpu_build_plan(ivf, True, 4).devices == (0, 1, 2, 3)  # an explicit API argument wins
    monkeypatch.setenv(NO_GPU_ENV, "0")
    assert gpu_enabled(None) is None
    assert gpu_build_plan(ivf, False, 4).devices == ()  # use_gpu=False in the API


def test_gpu_search_plan_shards_over_several_gpus():
    flat = choose_spec("flat", 384, 10**6)
    assert gpu_search_plan(flat, 4, None, False) == gpu_search_plan(flat, 4, True, False)
    plan = gpu_search_plan(flat, 4, None, False)
    assert plan.devices == (0, 1, 2, 3) and plan.shard
    one = gpu_search_plan(flat, 1, None, False)
    assert one.devices == (0,) and not one.shard
    for spec, why in [(choose_spec("ivf-disk", 384, 10**6), "on-disk"), (choose_spec("hnsw", 384, 10**6), "hnsw"),
                      (flat, "ID selector")]:
        plan = gpu_search_plan(spec, 2, None, has_deletes=spec is flat)
        assert plan.devices == () and why in plan.reason


def test_assignment_by_a_separate_quantizer_equals_plain_add():
    """The GPU build path (coarse assignment by a copy of the quantizer, lists on CPU) run with a
    CPU copy: the same lists as FAISS's own add."""
    spec = choose_spec("ivf", DIM, N)
    trained = train_empty(spec, _batches(CORPUS), N, clustering_index=faiss.IndexFlatIP(DIM))
    reference = train_empty(spec, _batches(CORPUS), N)
    plain, assigned = faiss.clone_index(reference), faiss.clone_index(trained)
    assigner = faiss.clone_index(faiss.extract_index_ivf(trained).quantizer)
    for start in range(0, N, 1000):
        add_block(plain, CORPUS[start : start + 1000], start)
        add_block(assigned, CORPUS[start : start + 1000], start, assigner)
    params = faiss.SearchParametersIVF(nprobe=8)
    np.testing.assert_array_equal(plain.search(QUERIES, K, params=params)[1],
                                  assigned.search(QUERIES, K, params=params)[1])


def test_deleted_rows_never_come_back_from_an_ondisk_index(tmp_path):
    from dramasearch.index.updates import delete_documents

    root, vectors = _imported(tmp_path, "ivf-disk")
    delete_documents(root, [str(i) for i in range(0, 20, 2)])  # ids are row numbers
    with _closing(Snapshot(root)) as snap:
        nlist = snap.refs[0].faiss["dim32-ivf-disk"]["spec"]["params"]["nlist"]
        _, _, rows = snap.search(prepare(vectors[:20], 32, True), K, "dim32-ivf-disk", nprobe=nlist)
    assert not set(range(0, 20, 2)) & set(rows.ravel().tolist())
    assert (rows[1::2, 0] == np.arange(1, 20, 2)).all()  # live rows still find themselves first

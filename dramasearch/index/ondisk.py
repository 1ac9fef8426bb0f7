"""IVF indexes whose inverted lists live on disk: build from blocks, open read-only (mmap).

Two files per index: `dimD-ivf-disk.faiss` (the trained quantizer, PQ codebooks and a table
of (offset, size) per list; this is what stays in RAM) and `dimD-ivf-disk.ivfdata` (every
list's codes and int64 ids, memory-mapped read-only at search time, so the OS pages in only
the lists a query probes). The mapping is advised MADV_RANDOM: the kernel's default readahead
pulls in neighbouring lists no query asked for, and when the page cache is smaller than the
index (a memory cgroup, a big index) those evict the pages still needed: measured, a search
in a 1 GiB cgroup read 563 GB in 12 minutes without it (benchmarks/RESULTS.md section 11).

Build, in bounded memory (FAISS's OnDiskInvertedLists, the recipe of faiss.contrib.ondisk):
train on a sample; add the rows in parts of `part_rows` to copies of the empty trained index,
each written to a scratch folder; merge all parts' lists into one .ivfdata in a single pass
(each list is sized once, then filled from the parts, which are read through mmap). Peak RAM
is one part plus the trained index, whatever the number of rows.

Crash safety: both files are written under temporary names, fsynced and renamed (data first,
header second); only a generation that records both (size and sha256) makes them loadable.
At open, the header's data size and every list's extent are checked against the file, so a
truncated .ivfdata raises instead of faulting (a mapped read past the end kills the process
with SIGBUS); `verify` compares full checksums.
"""
from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import faiss
import numpy as np

from ..errors import IndexDamagedError
from ..fsutil import atomic_path, fsync_dir
from .faiss_index import (
    DEFAULT_TRAIN_SIZE, DISK_KINDS, IndexSpec, _blocks, _gpu_count, add_block, coarse_assigner, gpu_build_plan,
    train_empty,
)
from .files import file_sha256

DATA_SUFFIX = ".ivfdata"
PART_ROWS = 262_144  # rows per partial index: ~400 MB of IVF-Flat lists at 384-d


def data_name(index_file: str) -> str:
    """The .ivfdata file that goes with an on-disk index file."""
    return Path(index_file).with_suffix(DATA_SUFFIX).name


def build_ondisk(
    spec: IndexSpec,
    batches: Callable[[], Iterable[np.ndarray]],
    num_vectors: int,
    path: str | Path,
    *,
    normalize: bool = True,
    use_gpu: bool | None = None,
    train_size: int = DEFAULT_TRAIN_SIZE,
    seed: int = 0,
    part_rows: int = PART_ROWS,
) -> dict:
    """Write `path` and its .ivfdata; return the generation entry (file, bytes, sha256, data)."""
    if spec.kind not in DISK_KINDS:
        raise ValueError(f"{spec.kind} is not an on-disk kind ({', '.join(DISK_KINDS)})")
    path = Path(path)
    data_path = path.with_name(data_name(path.name))
    plan = gpu_build_plan(spec, use_gpu, _gpu_count())
    trained = train_empty(spec, batches, num_vectors, train_size=train_size, seed=seed, normalize=normalize, plan=plan)
    assigner = coarse_assigner(trained, plan)
    scratch = Path(tempfile.mkdtemp(prefix=f".{path.name}.parts-", dir=path.parent))
    try:
        parts = _write_parts(trained, _blocks(batches, spec.dim, normalize), scratch, part_rows, assigner)
        merged_tmp = scratch / "merged.ivfdata"
        index = _merge(trained, parts, merged_tmp)
        if index.ntotal != num_vectors:
            raise ValueError(f"batches() yielded {index.ntotal} rows but num_vectors={num_vectors}")
        # The header names its data file; readers resolve that name in the header's folder.
        faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists).filename = data_path.name
        with open(merged_tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(merged_tmp, data_path)
        fsync_dir(path.parent)
        with atomic_path(path) as tmp:
            faiss.write_index(index, str(tmp))
        del index  # unmaps the data
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": file_sha256(path),
            "data": {"file": data_path.name, "bytes": data_path.stat().st_size, "sha256": file_sha256(data_path)}}


def _write_parts(trained: faiss.Index, blocks: Iterator[np.ndarray], scratch: Path, part_rows: int,
                 assigner: faiss.Index | None) -> list[Path]:
    """Add blocks to copies of the trained index (ids = row numbers); write each part when full."""
    parts: list[Path] = []
    part, added = faiss.clone_index(trained), 0

    def flush() -> None:
        nonlocal part
        parts.append(scratch / f"part-{len(parts):05d}.faiss")
        faiss.write_index(part, str(parts[-1]))
        part = faiss.clone_index(trained)

    for block in blocks:
        add_block(part, block, added, assigner)
        added += len(block)
        if part.ntotal >= part_rows:
            flush()
    if part.ntotal or not parts:
        flush()
    return parts


def _merge(trained: faiss.Index, parts: list[Path], data_path: Path) -> faiss.Index:
    """One index whose lists are the concatenation of the parts' lists, in `data_path`."""
    index = faiss.clone_index(trained)
    ivf = faiss.extract_index_ivf(index)
    opened = [faiss.read_index(str(p), faiss.IO_FLAG_MMAP) for p in parts]  # not loaded: paged in
    sources = faiss.InvertedListsPtrVector()
    for part in opened:
        sources.push_back(faiss.extract_index_ivf(part).invlists)
    invlists = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(data_path))
    with _quiet_stdout():  # FAISS prints "resizing ..." to stdout
        ntotal = invlists.merge_from_multiple(sources.data(), sources.size(), False)
    ivf.replace_invlists(invlists, True)
    invlists.this.disown()  # the index owns it now
    index.ntotal = ivf.ntotal = ntotal
    del opened
    return index


def read_ondisk(path: str | Path) -> faiss.Index:
    """Open an on-disk index read-only; its data file must match the header, list by list."""
    path = Path(path)
    data_path = path.with_name(data_name(path.name))
    if not data_path.is_file():
        raise IndexDamagedError(f"{data_path}: missing; the on-disk index {path.name} cannot be searched: "
                                "rebuild it (`dramasearch add-dim` or `compact`)")
    flags = faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY
    with _quiet_stdout():  # FAISS prints the data file's resolved name to stdout
        index = faiss.read_index(str(path), flags)
    invlists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
    if not isinstance(invlists, faiss.OnDiskInvertedLists):
        raise IndexDamagedError(f"{path}: not an on-disk IVF index; rebuild it")
    check_extents(invlists, data_path)
    advise_random(invlists)
    return index


def advise_random(invlists: faiss.OnDiskInvertedLists) -> bool:
    """madvise(MADV_RANDOM) on the lists' mapping: read only the pages a probe touches.

    Only an optimisation, so a platform without madvise keeps the default; False then.
    """
    advice = getattr(mmap, "MADV_RANDOM", None)
    if _madvise is None or advice is None or invlists.totsize == 0:
        return False
    return _madvise(ctypes.c_void_p(int(invlists.ptr)), ctypes.c_size_t(invlists.totsize), advice) == 0


def check_extents(invlists: faiss.OnDiskInvertedLists, data_path: Path) -> None:
    """Every list must lie inside the file: reading a mapped page past its end is a SIGBUS."""
    size = data_path.stat().st_size
    entry = invlists.code_size + 8
    offsets = np.array([invlists.lists.at(i).offset for i in range(invlists.nlist)], dtype=np.uint64)
    capacity = np.array([invlists.lists.at(i).capacity for i in range(invlists.nlist)], dtype=np.uint64)
    end = int((offsets + capacity * np.uint64(entry)).max()) if invlists.nlist else 0
    if size != invlists.totsize or end > size:
        raise IndexDamagedError(f"{data_path}: {size:,} bytes but its index expects {invlists.totsize:,} "
                                f"(lists reach byte {end:,}); the file is truncated or replaced: rebuild the index")


_stdout_lock = threading.Lock()
try:
    _libc = ctypes.CDLL(None)
    _fflush = _libc.fflush  # C stdio buffers FAISS's printf until flushed
except (OSError, TypeError, AttributeError):  # no C library by that name (Windows)
    _libc = _fflush = None
_madvise = getattr(_libc, "madvise", None)
if _madvise is not None:
    _madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def _flush_c_stdout() -> None:
    if _fflush is not None:
        _fflush(None)


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Send FAISS's C-level prints on fd 1 to /dev/null (they would corrupt `search --json`)."""
    with _stdout_lock:
        sys.stdout.flush()
        _flush_c_stdout()
        saved = os.dup(1)
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 1)
            yield
        finally:
            _flush_c_stdout()
            os.dup2(saved, 1)
            os.close(saved)
            os.close(devnull)

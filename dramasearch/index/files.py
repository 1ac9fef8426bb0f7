"""Reading immutable index files without holding a descriptor per file.

A searcher over thousands of shard files must not keep thousands of descriptors open (a
1,024-descriptor limit is common), and it must not hold per-row Python objects. Every read
is a `pread` through `FileCache`, which keeps at most `capacity` descriptors and closes the
least recently used one that no thread is reading from. Files are never rewritten in place
(new data gets new names), so a cached descriptor always reads the file it was opened for.
"""
from __future__ import annotations

import hashlib
import io
import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..errors import IndexFormatError

DEFAULT_CAPACITY = 64


class FileCache:
    """A bounded, thread-safe pool of read-only descriptors keyed by path."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY):
        self.capacity = capacity
        self._lock = threading.Lock()
        self._open: OrderedDict[str, list[int]] = OrderedDict()  # path -> [fd, readers]
        self._closed = False

    def pread(self, path: str | Path, size: int, offset: int) -> bytes:
        key = str(path)
        entry = self._acquire(key)
        try:
            data = os.pread(entry[0], size, offset)
        finally:
            self._release(key, entry)
        if len(data) != size:
            raise IndexFormatError(f"{key}: file is shorter than recorded (wanted {size} bytes at {offset}); "
                                   "the index is damaged: run `dramasearch verify` and rebuild the damaged part")
        return data

    def _acquire(self, key: str) -> list[int]:
        with self._lock:
            if self._closed:
                raise IndexFormatError("this index reader is closed")
            entry = self._open.get(key)
            if entry is None:
                try:
                    entry = [os.open(key, os.O_RDONLY), 0]
                except FileNotFoundError:
                    raise IndexFormatError(f"{key}: file is missing; the index is damaged or was removed "
                                           "while in use: run `dramasearch verify`") from None
                self._open[key] = entry
                self._evict()
            self._open.move_to_end(key)
            entry[1] += 1
            return entry

    def _release(self, key: str, entry: list[int]) -> None:
        with self._lock:
            entry[1] -= 1
            if self._open.get(key) is not entry and entry[1] == 0:
                os.close(entry[0])  # evicted or closed while this read was in flight
            self._evict()

    def _evict(self) -> None:
        if len(self._open) <= self.capacity:  # the common case: runs on every read, so no scan
            return
        idle = [k for k, e in self._open.items() if e[1] == 0]
        while len(self._open) > self.capacity and idle:
            key = idle.pop(0)
            os.close(self._open.pop(key)[0])

    def open_count(self) -> int:
        with self._lock:
            return len(self._open)

    def close(self) -> None:
        """Close idle descriptors now; ones in use close when their read returns."""
        with self._lock:
            self._closed = True
            for key, entry in list(self._open.items()):
                del self._open[key]
                if entry[1] == 0:
                    os.close(entry[0])


# --- npy files read by row ---------------------------------------------------------------------

def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def npy_header_size(data: bytes) -> int:
    """Bytes before the array data in an .npy file (magic, version, header)."""
    version = data[6]
    if version == 1:
        return 10 + int.from_bytes(data[8:10], "little")
    return 12 + int.from_bytes(data[8:12], "little")


def read_npy_rows(cache: FileCache, path: Path, header: int, row_bytes: int, dtype, shape_tail: tuple,
                  start: int, count: int) -> np.ndarray:
    """Rows [start, start + count) of a C-ordered .npy file, read with one pread."""
    data = cache.pread(path, row_bytes * count, header + row_bytes * start)
    return np.frombuffer(data, dtype=dtype).reshape((count, *shape_tail))


def load_npy(path: Path) -> np.ndarray:
    """A whole small .npy file into memory (never pickled objects)."""
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise IndexFormatError(f"{path}: file is missing; the index is damaged: run `dramasearch verify`") from None
    except ValueError as exc:
        raise IndexFormatError(f"{path}: not a valid numpy file ({exc}); the index is damaged: "
                               "run `dramasearch verify`") from None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


_DIGESTS: dict[tuple, str] = {}
_DIGESTS_LOCK = threading.Lock()


def cached_sha256(path: Path) -> str:
    """file_sha256, computed once per process for an unchanged file (same inode, size and mtime).

    Index files are immutable, so a long-lived reader pays for hashing a file once, and a
    reopen after a commit hashes only the files the commit added.
    """
    st = os.stat(path)
    key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
    with _DIGESTS_LOCK:
        if key in _DIGESTS:
            return _DIGESTS[key]
    digest = file_sha256(path)
    with _DIGESTS_LOCK:
        _DIGESTS[key] = digest
    return digest


def file_problem(path: Path, info: dict, full: bool, cached: bool = True) -> str | None:
    """What is wrong with `path` against its recorded {"bytes", "sha256"}, or None.

    Cheap: it exists with its recorded size. Full: its sha256 matches as well.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return f"{path}: missing"
    if size != info["bytes"]:
        return f"{path}: {size} bytes, but {info['bytes']} were written (truncated, extended or swapped)"
    if full and (cached_sha256(path) if cached else file_sha256(path)) != info["sha256"]:
        return f"{path}: contents differ from the checksum recorded when it was written (damaged or swapped)"
    return None


def npy_header_problem(cache: FileCache, path: Path, header: int, dtype, shape: tuple) -> str | None:
    """Whether an .npy file's header declares the dtype and shape its records say (one small read)."""
    try:
        raw = cache.pread(path, header, 0)
        stream = io.BytesIO(raw)
        version = np.lib.format.read_magic(stream)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        found_shape, fortran, found_dtype = read(stream)
    except (ValueError, IndexFormatError, OSError) as exc:
        return f"{path}: not a readable numpy file ({exc})"
    if found_dtype != np.dtype(dtype) or tuple(found_shape) != tuple(shape) or fortran:
        return f"{path}: holds {found_dtype} {tuple(found_shape)}, expected {np.dtype(dtype)} {tuple(shape)}"
    return None

"""Document ids in bounded memory: 64-bit hashes in sorted numpy arrays, exact check on a match.

A Python set of 100M ids costs ~10 GB; a sorted uint64 array plus an int64 position costs 16
bytes per id. A hash match is confirmed by comparing the real ids (the caller re-reads the
earlier one), so a 64-bit collision never turns two different ids into a "duplicate".
"""
from __future__ import annotations

import hashlib

import numpy as np

BUFFER = 65_536  # ids held in a dict before they are sorted into an array level


def id_hash(docid: str) -> int:
    return int.from_bytes(hashlib.blake2b(docid.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def id_hashes(docids) -> np.ndarray:
    return np.fromiter((id_hash(d) for d in docids), dtype=np.uint64)


class SeenIds:
    """Hash -> first position, streaming: a small dict plus log-structured sorted levels.

    Levels are merged when two reach the same size, so adding n ids costs O(n log n) and a
    lookup O(log^2 n), with 16 bytes per id held.
    """

    def __init__(self, buffer: int = BUFFER):
        self._buffer_size = buffer
        self._buffer: dict[int, int] = {}
        self._levels: list[tuple[np.ndarray, np.ndarray]] = []  # (sorted hashes, positions)
        self.collided: dict[str, int] = {}  # ids whose hash matched a different id: kept exactly

    def first(self, h: int) -> int | None:
        """The position recorded for hash `h`, if any."""
        found = self._buffer.get(h)
        if found is not None:
            return found
        key = np.uint64(h)
        for hashes, positions in self._levels:
            i = int(np.searchsorted(hashes, key))
            if i < len(hashes) and hashes[i] == key:
                return int(positions[i])
        return None

    def add(self, h: int, position: int) -> None:
        self._buffer.setdefault(h, position)
        if len(self._buffer) >= self._buffer_size:
            self._flush()

    def _flush(self) -> None:
        hashes = np.fromiter(self._buffer.keys(), dtype=np.uint64, count=len(self._buffer))
        positions = np.fromiter(self._buffer.values(), dtype=np.int64, count=len(self._buffer))
        self._buffer = {}
        level = _sorted(hashes, positions)
        while self._levels and len(self._levels[-1][0]) <= len(level[0]):
            prev = self._levels.pop()
            level = _sorted(np.concatenate([prev[0], level[0]]), np.concatenate([prev[1], level[1]]))
        self._levels.append(level)


def _sorted(hashes: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(hashes, kind="stable")
    return hashes[order], positions[order]


def check_duplicate(seen: SeenIds, docid: str, position: int, id_at) -> int | None:
    """Record `docid` at `position`; return the earlier position of the same id, if any.

    `id_at(position)` returns the id recorded earlier at that position (the exact check).
    """
    h = id_hash(docid)
    earlier = seen.first(h)
    if earlier is None:
        seen.add(h, position)
        return None
    if id_at(earlier) == docid:
        return earlier
    if docid in seen.collided:
        return seen.collided[docid]
    seen.collided[docid] = position
    return None

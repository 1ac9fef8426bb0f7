"""`--index auto`: the most accurate FAISS kind whose search-time RAM fits a memory budget.

Estimates come from what each kind keeps in RAM while searching (FAISS's own layouts), so
the choice follows the machine instead of fixed row counts; two speed rules remain, both
about time, not memory: brute force (flat, sq8) only below FLAT_MAX_VECTORS, HNSW only up to
HNSW_MAX_VECTORS (its build time grows fastest). On-disk kinds count only their centroids
and list table: their lists are paged in from the .ivfdata file by the OS, as page cache.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import UsageError
from .faiss_index import FLAT_MAX_VECTORS, HNSW_DEFAULTS, HNSW_MAX_VECTORS, MIN_TRAINED_ROWS, choose_spec

# Tried in this order: kinds held in RAM, most accurate first (flat is exact; HNSW at
# efSearch 128 and IVF-Flat at nprobe = nlist/16 score candidates exactly, recall ~0.99 in
# benchmarks/RESULTS.md; sq8 rounds components to 8 bits; IVF-PQ keeps ~1 byte per 8 dims),
# then ivf-disk, which ranks like ivf but reads the probed lists from storage when they are
# not in the page cache, so it is picked only when nothing in RAM fits. ivfpq-disk is never
# picked: it needs more RAM than ivf-disk (its codebooks) and is less accurate; ask for it
# explicitly to save disk space.
AUTO_ORDER = ("flat", "hnsw", "ivf", "sq8", "ivfpq", "ivf-disk")
BRUTE_FORCE = frozenset({"flat", "sq8"})
DEFAULT_BUDGET_FRACTION = 0.5  # of the RAM available when the build starts
ID_BYTES = 8  # IVF lists store an int64 id per vector
LIST_ENTRY_BYTES = 24  # OnDiskInvertedLists keeps (size, capacity, offset) per list in RAM


@dataclass(frozen=True)
class Footprint:
    """Bytes a kind needs at (dim, rows): `ram` while searching, `disk` for its files."""

    kind: str
    ram: int
    disk: int


@dataclass(frozen=True)
class Choice:
    """What auto picked, and why: every candidate's footprint in the order tried."""

    kind: str
    budget: int
    fits: bool  # False: nothing fits; `kind` is then the one needing the least RAM
    candidates: tuple[Footprint, ...]

    def explain(self) -> str:
        tried = ", ".join(f"{f.kind} {format_size(f.ram)}" for f in self.candidates)
        verdict = "fits" if self.fits else "does not fit either (the smallest)"
        return f"auto: {self.kind} {verdict} in a budget of {format_size(self.budget)} (RAM needed: {tried})"


def footprint(kind: str, dim: int, rows: int) -> Footprint:
    """RAM (search time) and disk bytes of `kind` with the params choose_spec gives it."""
    if kind in ("ivf", "ivfpq", "ivf-disk", "ivfpq-disk") and rows < MIN_TRAINED_ROWS:
        return footprint("flat", dim, rows)  # segment_spec searches small segments exactly
    params = choose_spec(kind, dim, rows).params
    centroids = params.get("nlist", 0) * dim * 4
    codebooks = (2 ** params["pq_bits"]) * dim * 4 if "pq_m" in params else 0
    if kind == "flat":
        return Footprint(kind, 4 * dim * rows, 4 * dim * rows)
    if kind == "sq8":
        return Footprint(kind, dim * rows + 8 * dim, dim * rows + 8 * dim)
    if kind == "hnsw":
        # float32 vectors + 2*M int32 links on level 0 (upper levels add ~1/M of that)
        size = rows * (4 * dim + 2 * HNSW_DEFAULTS["hnsw_m"] * 4)
        return Footprint(kind, size, size)
    code = 4 * dim if kind in ("ivf", "ivf-disk") else params["pq_m"] * params["pq_bits"] // 8
    lists = rows * (code + ID_BYTES)
    if kind in ("ivf", "ivfpq"):
        return Footprint(kind, centroids + codebooks + lists, centroids + codebooks + lists)
    table = params["nlist"] * LIST_ENTRY_BYTES
    return Footprint(kind, centroids + codebooks + table, centroids + codebooks + table + lists)


def choose_kind(dim: int, rows: int, budget: int) -> Choice:
    """The first kind of AUTO_ORDER allowed at `rows` whose RAM fits `budget` bytes."""
    if budget <= 0:
        raise UsageError("memory budget", f"must be positive, got {budget}")
    allowed = [k for k in AUTO_ORDER
               if not (k in BRUTE_FORCE and rows >= FLAT_MAX_VECTORS)
               and not (k == "hnsw" and (rows < FLAT_MAX_VECTORS or rows > HNSW_MAX_VECTORS))]
    candidates = tuple(footprint(k, dim, rows) for k in allowed)
    for f in candidates:
        if f.ram <= budget:
            return Choice(f.kind, budget, True, candidates)
    smallest = min(candidates, key=lambda f: f.ram)
    return Choice(smallest.kind, budget, False, candidates)


def default_budget() -> int:
    """Half the RAM available now (psutil), leaving room for the encoder and the OS cache."""
    import psutil

    return int(psutil.virtual_memory().available * DEFAULT_BUDGET_FRACTION)


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_size(text: str) -> int:
    """'4G', '512M', '1.5GiB', '1000000' -> bytes (binary units: 1G = 2^30)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*", str(text), re.IGNORECASE)
    if match is None:
        raise UsageError("--memory-budget", f"{text!r} is not a size; use e.g. 4G, 512M or a number of bytes")
    size = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if size <= 0:
        raise UsageError("--memory-budget", f"{text!r}: must be more than 0 bytes")
    return size


def format_size(size: int) -> str:
    for unit in ("T", "G", "M", "K"):
        if size >= _UNITS[unit]:
            return f"{size / _UNITS[unit]:.1f} {unit}iB"
    return f"{size} B"

"""Mix example files in given proportions (DRAMA: mixing all augmentation sources beats any one).

Ratios are shares of the output. By default the output is the largest mix that needs no
example twice; a larger `total` repeats examples (each file is cycled through a fresh
shuffle before any example repeats). Query ids get the file's label as a prefix, and a
repeat gets a `#n` suffix, so ids stay unique in the mix. Files are read into memory.
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from ..data import TrainingExample, read_examples, write_examples
from .mining import is_informative


@dataclass(frozen=True)
class MixSource:
    path: Path
    ratio: float
    label: str = ""  # id prefix; the file name without extensions by default

    def name(self) -> str:
        return self.label or Path(self.path).name.split(".")[0]


def mix_counts(sizes: list[int], ratios: list[float], total: int | None = None) -> list[int]:
    """How many examples each source gives: proportional to ratios, summing to `total`.

    Rounding uses largest remainders (ties to the earlier source), so counts always sum to total.
    """
    if len(sizes) != len(ratios) or not sizes:
        raise ValueError("give one ratio per source, and at least one source")
    if any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise ValueError(f"ratios must be >= 0 and not all 0, got {ratios}")
    shares = [r / sum(ratios) for r in ratios]
    if total is None:  # exact (Fraction): in floats, size / share can fall just below a whole number
        ratio_sum = sum(Fraction(r) for r in ratios)
        total = min(size * ratio_sum // Fraction(r) for size, r in zip(sizes, ratios) if r > 0)
    exact = [share * total for share in shares]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    for size, count, ratio in zip(sizes, counts, ratios):
        if count and not size:
            raise ValueError(f"a source with ratio {ratio} has no examples")
    return counts


def mix_examples(sources: list[MixSource], out: str | Path, *, seed: int = 0, total: int | None = None) -> list[int]:
    """Write the shuffled mix to `out` (atomically); returns the count taken from each source."""
    labels = [s.name() for s in sources]
    if len(set(labels)) != len(labels):
        raise ValueError(f"source labels must differ (got {labels}); give each a label")
    rng = random.Random(seed)
    loaded = [list(read_examples(s.path)) for s in sources]
    counts = mix_counts([len(x) for x in loaded], [s.ratio for s in sources], total)
    mixed: list[TrainingExample] = []
    for label, examples, count in zip(labels, loaded, counts):
        for n in range(count):
            if n % len(examples) == 0:
                rng.shuffle(examples)
            e = examples[n % len(examples)]
            repeat = n // len(examples)
            query_id = f"{label}:{e.query_id}" + (f"#{repeat + 1}" if repeat else "")
            mixed.append(dataclasses.replace(e, query_id=query_id))
    rng.shuffle(mixed)
    write_examples(out, mixed)
    return counts


def informative_first(examples: list[TrainingExample], count: int, *, seed: int = 0) -> list[TrainingExample]:
    """`count` of `examples`: those mined at INFORMATIVE_RANKS first (mining.py says why), then rank 1,
    then the rest (deeper or unranked), in a seeded random order within each tier."""
    def tier(e: TrainingExample) -> int:
        return 0 if is_informative(e) else 1 if e.mined_rank == 1 else 2

    shuffled = list(examples)
    random.Random(seed).shuffle(shuffled)
    return sorted(shuffled, key=tier)[:count]

"""Matryoshka truncation: keep the first d components, then L2-normalize again."""
from __future__ import annotations

import numpy as np


def truncate_normalize(vectors: np.ndarray, dim: int | None = None) -> np.ndarray:
    """Return float32 rows cut to `dim` (None keeps all) with unit L2 norm.

    Rows of all zeros stay zero instead of becoming NaN.
    """
    x = np.asarray(vectors)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D array of vectors, got shape {x.shape}")
    if dim is not None:
        if not 0 < dim <= x.shape[1]:
            raise ValueError(f"dim={dim} is outside 1..{x.shape[1]} (the model's full dimension)")
        x = x[:, :dim]
    x = x.astype(np.float32, copy=True)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, norms, out=x, where=norms > 0)
    return x


def prepare(vectors: np.ndarray, dim: int | None, normalize: bool) -> np.ndarray:
    """Vectors as an index at `dim` compares them: renormalized truncations (cosine) for models
    that normalize, plain truncations (dot product) for models trained without a Normalize step."""
    if normalize:
        return truncate_normalize(vectors, dim)
    x = np.asarray(vectors)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D array of vectors, got shape {x.shape}")
    return np.array(x[:, :dim], dtype=np.float32)

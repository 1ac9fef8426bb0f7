"""dramasearch: encode with DRAMA, index at Matryoshka dims, search, evaluate.

Exports load on first use, so `dramasearch --help` or `info` do not pay for importing torch.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "BuildReport": "index.build", "BuildSettings": "index.build", "build_index": "index.build",
    "add_dims": "index.updates", "add_documents": "index.updates", "compact": "index.updates",
    "delete_documents": "index.updates", "refresh": "index.refresh", "import_vectors": "index.vectors",
    "Encoder": "encoder", "EncoderSpec": "encoder",
    "DramaSearchError": "errors", "IndexFormatError": "errors", "InputError": "errors", "ModelLoadError": "errors",
    "load_encoder": "models",
    "Hit": "searcher", "Searcher": "searcher",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dramasearch' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)

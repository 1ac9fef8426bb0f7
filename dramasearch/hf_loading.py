"""`load_pretrained`: every transformers model load in the process, one at a time and checked.

Why a lock: transformers 5.x turns weight tying off while `from_pretrained` runs by replacing
`PreTrainedModel.tie_weights` with a no-op for the whole class, and puts back what it found on
exit. Two threads loading at once can each put back the other's no-op, so tying stays off for
the rest of the process, and a tied LM loaded later (SmolLM2) keeps its output head on the meta
device. `Searcher(follow=True)`, `serve` and a reader thread beside `adapt` all load in threads.

Why the check: a load in a thread we do not own can still race us; then the model has weights
that were never materialised, and we say so instead of failing later in `.to(device)`.
"""
from __future__ import annotations

import threading

from .errors import ModelLoadError

LOAD_LOCK = threading.RLock()


def load_pretrained(model_class, source, **kwargs):
    """`model_class.from_pretrained(source, **kwargs)` under the process-wide lock, refusing meta weights."""
    with LOAD_LOCK:
        loaded = model_class.from_pretrained(source, **kwargs)
    model = loaded[0] if isinstance(loaded, tuple) else loaded
    unloaded = [name for name, p in [*model.named_parameters(), *model.named_buffers()] if p.is_meta]
    if unloaded:
        raise ModelLoadError(
            f"{source}: {unloaded[:3]} {'was' if len(unloaded) == 1 else 'were'} not loaded (left on the meta "
            "device); another thread was probably loading a transformers model at the same time: load models "
            "one at a time, or through dramasearch, which serialises its own loads"
        )
    return loaded

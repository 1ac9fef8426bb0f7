"""Resumable training state, written atomically: a crash leaves the previous checkpoint intact.

Layout of a checkpoint folder (replaced as a whole through `fsutil.atomic_dir`):

    model.safetensors   the backbone's weights
    optimizer.pt        optimizer state_dict (tensors and numbers only: torch.load(weights_only=True))
    scheduler.pt        learning-rate scheduler state_dict (same)
    state.json          step, data position, losses, evaluations, baseline per-query dev scores, settings

No random state is stored: the trainer reseeds torch from (seed, step, rank) at every step, so
the step number alone fixes dropout, on any number of ranks.

Nothing here is pickled code: the .pt files hold only what `weights_only=True` accepts.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from dramasearch.errors import DramaSearchError
from dramasearch.fsutil import atomic_dir

STATE_FILE = "state.json"


def save_checkpoint(
    folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler, state: dict[str, Any]
) -> None:
    """Write model, optimizer, scheduler and `state` (JSON-able) as one atomic folder."""
    with atomic_dir(folder) as tmp:
        safetensors.torch.save_model(model, str(tmp / "model.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1), encoding="utf-8")


def has_checkpoint(folder: Path) -> bool:
    return (folder / STATE_FILE).is_file()


def load_checkpoint(
    folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler, device: str
) -> dict[str, Any]:
    """Restore model, optimizer and scheduler in place; return the saved state."""
    try:
        state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        missing, unexpected = safetensors.torch.load_model(model, str(folder / "model.safetensors"), device=device)
        optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=device, weights_only=True))
        scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    except (OSError, ValueError, RuntimeError) as exc:
        raise DramaSearchError(
            f"{folder}: cannot resume from this checkpoint ({type(exc).__name__}: {exc}); "
            "delete the folder to start over"
        ) from exc
    if missing or unexpected:
        raise DramaSearchError(f"{folder}/model.safetensors does not match the model (missing {missing}, unexpected {unexpected})")
    return state


"""Checkpoints of `prune sheared`, so a killed run resumes where its last checkpoint left it.

One folder beside the output (`OUT.sheared-work/checkpoint`), replaced atomically as a whole:

    state.json          stage ("masks" or "continue"), next step, histories, held-out losses, settings
    *.safetensors       the modules of the stage (the model; in "masks" also the gates and the
                        Lagrange multipliers) and torch's random state
    optimizers.pt       optimizer state_dicts (loaded with weights_only=True: tensors and numbers)
    pruned/             from stage "continue" on: the cut model's config, so its shape is rebuilt

Mask sampling draws from torch's global generator, so its state is saved too; the data position
is the step count (the batches come from a seeded generator and are replayed up to it). A
resumed run therefore repeats the uninterrupted run's losses exactly.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from dramasearch.errors import DramaSearchError
from dramasearch.fsutil import atomic_dir

from .shapes import ShapedLlamaForCausalLM

STATE_FILE = "state.json"


class ShearedCheckpoint:
    def __init__(self, work: Path, settings):
        self.folder = Path(work) / "checkpoint"
        self.settings = settings
        self.carry: dict[str, Any] = {}  # saved with every checkpoint: what earlier stages measured

    def load_state(self) -> dict[str, Any] | None:
        """The saved state of a run with these settings, or None; a run with other settings is refused."""
        path = self.folder / STATE_FILE
        if not path.is_file():
            return None
        state = json.loads(path.read_text(encoding="utf-8"))
        if state["settings"] != json.loads(json.dumps(asdict(self.settings))):
            raise DramaSearchError(
                f"{self.folder}: a checkpoint of a run with other settings ({state['settings']}); "
                "rerun with those settings to resume, or delete the folder to start over"
            )
        return state

    def save(self, stage: str, step: int, modules: dict[str, torch.nn.Module], optimizers: list,
             extra: dict[str, Any], pruned: torch.nn.Module | None = None) -> None:
        """Write everything needed to continue at `step` of `stage`, replacing the previous checkpoint."""
        with atomic_dir(self.folder) as tmp:
            for name, module in modules.items():
                safetensors.torch.save_model(module, str(tmp / f"{name}.safetensors"))
            safetensors.torch.save_file({"cpu": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
            torch.save([o.state_dict() for o in optimizers], tmp / "optimizers.pt")
            if pruned is not None:
                pruned.config.save_pretrained(tmp / "pruned")
            state = {"stage": stage, "step": step, "settings": asdict(self.settings), **self.carry, **extra}
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=1), encoding="utf-8")

    def pruned_model(self) -> ShapedLlamaForCausalLM:
        """An empty model of the cut shape, for `restore` to fill."""
        return ShapedLlamaForCausalLM(ShapedLlamaForCausalLM.config_class.from_pretrained(self.folder / "pruned"))

    def restore(self, modules: dict[str, torch.nn.Module], optimizers: list) -> None:
        """Load the saved modules, optimizer states and random state in place."""
        try:
            for name, module in modules.items():
                missing, unexpected = safetensors.torch.load_model(module, str(self.folder / f"{name}.safetensors"))
                if missing or unexpected:
                    raise ValueError(f"{name}.safetensors does not match (missing {missing}, unexpected {unexpected})")
            saved = torch.load(self.folder / "optimizers.pt", weights_only=True)
            for optimizer, optimizer_state in zip(optimizers, saved + [None] * (len(optimizers) - len(saved))):
                if optimizer_state is not None:  # none saved: the stage's first checkpoint, before any step
                    optimizer.load_state_dict(optimizer_state)
            torch.set_rng_state(safetensors.torch.load_file(str(self.folder / "rng.safetensors"))["cpu"])
        except (OSError, ValueError, RuntimeError) as exc:
            raise DramaSearchError(f"{self.folder}: cannot resume from this checkpoint ({exc}); "
                                   "delete the folder to start over") from exc


"""Average a fine-tuned encoder's weights with those of the model it started from (WiSE-FT).

Why: a small contrastive fine-tune on augmented data can fit the augmented queries at the cost of
the starting model's generality; the weight-space average `(1 - w) * start + w * tuned` keeps part
of the gain and gives back less where the fine-tune over-fits (Wortsman et al. 2022, "Robust
fine-tuning of zero-shot models"). RESULTS §13.10 measures it inside `adapt`.
"""
from __future__ import annotations

import torch

from dramasearch.encoder import Encoder
from dramasearch.errors import UsageError


def average_with_start(start: Encoder, tuned: Encoder, weight: float) -> Encoder:
    """`tuned` with every floating-point weight replaced by `(1 - weight) * start + weight * tuned`,
    in place (one model's memory, not three), and returned. Both must share one architecture: the
    same parameter and buffer names and shapes (a fine-tune of `start`, not another model)."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0.0 <= weight <= 1.0:
        raise UsageError("fine_tuned_weight", f"must be a number in [0, 1], got {weight!r:.40}")
    if start.spec.family != tuned.spec.family or start.spec.dim != tuned.spec.dim:
        raise UsageError("fine_tuned_weight", f"cannot average a {tuned.spec.family} encoder of dim {tuned.spec.dim} "
                                              f"with a {start.spec.family} one of dim {start.spec.dim}")
    start_state, tuned_state = start.model.state_dict(), tuned.model.state_dict()
    if start_state.keys() != tuned_state.keys():
        only = sorted(start_state.keys() ^ tuned_state.keys())
        raise UsageError("fine_tuned_weight", f"the models differ in their weights ({', '.join(only[:3])} ...): "
                                              "only a fine-tune can be averaged with the model it started from")
    for name, tensor in tuned_state.items():
        if start_state[name].shape != tensor.shape:
            raise UsageError("fine_tuned_weight", f"weight {name} has shape {tuple(tensor.shape)} in the fine-tuned "
                                                  f"model and {tuple(start_state[name].shape)} in the start")
    done: set[int] = set()  # tied weights share storage under two names: average them once
    with torch.no_grad():
        for name, tensor in tuned_state.items():
            if tensor.is_floating_point() and tensor.data_ptr() not in done:
                done.add(tensor.data_ptr())
                other = start_state[name].to(device=tensor.device, dtype=tensor.dtype)
                tensor.copy_(torch.lerp(other, tensor, float(weight)))
    return tuned

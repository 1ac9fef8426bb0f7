"""Hard-concrete masks (Louizos et al. 2018) over a Llama's layers, heads, MLP neurons and hidden channels.

Sheared-LLaMA / DRAMA prune by learning one gate per structure. A gate z in [0, 1] is a
stretched, clipped binary-concrete sample: with u ~ U(0, 1),

    s = sigmoid((log u - log(1 - u) + log_alpha) / temperature),  z = clip(s * (r - l) + l, 0, 1)

with stretch limits l = -0.1, r = 1.1 and temperature 2/3, so exact zeros and ones have
positive probability and z stays differentiable in log_alpha. Larger log_alpha = more
likely kept; log_alpha = 5 starts every gate open (P(z > 0) ~ 0.999). The expected number
of nonzero gates (the L0 norm) has a closed form, P(z > 0) = sigmoid(log_alpha - temperature *
log(-l / r)), which a Lagrangian drives to the target shape. At evaluation the gates are
deterministic: the round(expected L0) gates of largest log_alpha keep their mean-free value
clip(sigmoid(log_alpha) (r - l) + l, 0, 1), the rest are 0. The masked model is run with
hooks (no copy of the Llama forward); `masks_to_plan` + shapes.prune_llama fold the values
into the weights and cut the zeros away.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from dramasearch.errors import UsageError
from dramasearch.llama_shapes import layer_shapes

from .shapes import LayerKeep, PrunePlan, base_model

LIMIT_LOW, LIMIT_HIGH = -0.1, 1.1
TEMPERATURE = 2.0 / 3.0
INIT_LOG_ALPHA = 5.0
KEPT_FLOOR = 1e-3
MASK_TYPES = ("layers", "heads", "intermediate", "hidden")


class HardConcrete(nn.Module):
    """A tensor of hard-concrete gates with learnable log_alpha."""

    def __init__(self, shape: tuple[int, ...], init: float = INIT_LOG_ALPHA, init_std: float = 0.01,
                 temperature: float = TEMPERATURE, low: float = LIMIT_LOW, high: float = LIMIT_HIGH):
        super().__init__()
        self.log_alpha = nn.Parameter(torch.randn(shape) * init_std + init)
        self.temperature, self.low, self.high = temperature, low, high

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """One random draw of the gates (training), differentiable in log_alpha."""
        eps = 1e-6
        u = torch.rand(self.log_alpha.shape, generator=generator).clamp(eps, 1 - eps).to(self.log_alpha.device)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.log_alpha) / self.temperature)
        return (s * (self.high - self.low) + self.low).clamp(0.0, 1.0)

    def prob_nonzero(self) -> torch.Tensor:
        """P(z > 0) per gate, in closed form."""
        return torch.sigmoid(self.log_alpha - self.temperature * math.log(-self.low / self.high))

    def expected_l0(self) -> torch.Tensor:
        """Expected number of nonzero gates."""
        return self.prob_nonzero().sum()

    def deterministic(self, keep_per_row: int | None = None) -> torch.Tensor:
        """Evaluation gates: the round(expected L0) largest log_alpha keep their soft value, the rest are 0.

        With `keep_per_row`, exactly that many gates survive in each row (last dimension) and a
        kept gate is never 0 (at least KEPT_FLOOR), so the final shape is exactly the target.
        """
        soft = (torch.sigmoid(self.log_alpha) * (self.high - self.low) + self.low).clamp(0.0, 1.0)
        scores = self.log_alpha.detach()
        chosen = torch.zeros_like(scores, dtype=torch.bool)
        if keep_per_row is None:
            keep = int(round(float(self.expected_l0().detach())))
            chosen.view(-1)[torch.topk(scores.flatten(), keep).indices] = True
            return soft * chosen
        chosen.scatter_(-1, torch.topk(scores, keep_per_row, dim=-1).indices, True)
        return soft.clamp_min(KEPT_FLOOR) * chosen

    def forward(self) -> torch.Tensor:
        return self.sample() if self.training else self.deterministic()


@dataclass(frozen=True)
class FullShape:
    """The uniform shape masks are built for (per-layer counts are the same in every layer)."""

    layers: int
    heads: int  # query heads per layer
    kv_heads: int
    intermediate: int
    hidden: int

    def size(self, kind: str) -> int:
        return getattr(self, kind)


class LlamaMasks(nn.Module):
    """Gates for the chosen mask types of a uniform Llama: layers [L], kv groups [L, G], neurons [L, I], hidden [d]."""

    def __init__(self, model, kinds: tuple[str, ...] = MASK_TYPES, init: float = INIT_LOG_ALPHA):
        super().__init__()
        base = base_model(model)
        if layer_shapes(base.config) is not None:
            raise ValueError("hard-concrete masks start from a uniform Llama; this model already has layer_shapes")
        unknown = set(kinds) - set(MASK_TYPES)
        if unknown:
            raise ValueError(f"unknown mask types {sorted(unknown)}; choose from {MASK_TYPES}")
        c = base.config
        self.full = FullShape(c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads,
                              c.intermediate_size, c.hidden_size)
        shapes = {"layers": (c.num_hidden_layers,), "heads": (c.num_hidden_layers, c.num_key_value_heads),
                  "intermediate": (c.num_hidden_layers, c.intermediate_size), "hidden": (c.hidden_size,)}
        self.gates = nn.ModuleDict({kind: HardConcrete(shapes[kind], init=init) for kind in MASK_TYPES if kind in kinds})

    def values(self) -> dict[str, torch.Tensor]:
        """Sampled gates in training mode, deterministic ones in eval mode."""
        return {kind: gate() for kind, gate in self.gates.items()}

    def final_values(self, targets: dict[str, int]) -> dict[str, torch.Tensor]:
        """Deterministic gates that keep exactly the target shape (in every layer for heads and neurons).

        Types without a target keep round(expected L0) gates, as in evaluation.
        """
        values = {}
        for kind, gate in self.gates.items():
            if kind not in targets:
                values[kind] = gate.deterministic().detach()
                continue
            keep = check_target(self.full, kind, targets[kind])
            values[kind] = gate.deterministic(keep // self.group_size if kind == "heads" else keep).detach()
        return values

    @property
    def group_size(self) -> int:
        """Query heads per key/value group: head gates act on whole groups."""
        return self.full.heads // self.full.kv_heads

    def expected_size(self, kind: str) -> torch.Tensor:
        """Expected size in the config's units: layers, query heads per layer, neurons per layer, hidden channels."""
        gate = self.gates[kind]
        if kind == "heads":
            return gate.expected_l0() / self.full.layers * self.group_size
        if kind == "intermediate":
            return gate.expected_l0() / self.full.layers
        return gate.expected_l0()


def check_target(full: FullShape, kind: str, target: int) -> int:
    """A target must be reachable: between 1 and the full size, whole GQA groups for heads."""
    size = full.size(kind)
    if not 1 <= target <= size:
        raise UsageError(f"target_{kind}", f"target {kind}={target} must be between 1 and the model's {size}")
    group = full.heads // full.kv_heads
    if kind == "heads" and target % group:
        raise UsageError("target_heads", f"target heads={target} must be a multiple of {group} (heads are pruned by key/value group)")
    return target


def ramped_target(full: float, target: float, step: int, warmup_steps: int) -> float:
    """The target moves linearly from the full size to the final target over the warm-up."""
    progress = 1.0 if warmup_steps <= 0 else min(1.0, step / warmup_steps)
    return full + (target - full) * progress


class Lagrangian(nn.Module):
    """lambda1 (s - t) + lambda2 (s - t)^2 per mask type, s and t as fractions of the full size.

    The lambdas are maximized (gradient ascent) while the model and log_alpha minimize, so
    any gap to the target grows its own penalty until the expected shape meets it.
    """

    def __init__(self, kinds):
        super().__init__()
        self.lambda1 = nn.ParameterDict({k: nn.Parameter(torch.zeros(())) for k in kinds})
        self.lambda2 = nn.ParameterDict({k: nn.Parameter(torch.zeros(())) for k in kinds})

    def forward(self, masks: LlamaMasks, targets: dict[str, float]) -> torch.Tensor:
        total = torch.zeros(())
        for kind, target in targets.items():
            full = masks.full.size(kind)
            gap = (masks.expected_size(kind) - target) / full
            total = total + self.lambda1[kind] * gap + self.lambda2[kind] * gap**2
        return total


@contextmanager
def masked(model, values: dict[str, torch.Tensor]):
    """Run `model` (encoder or causal LM) with gates multiplied in, through forward hooks.

    heads gate the o_proj input per key/value group, intermediate the down_proj input,
    layers and hidden scale what each sub-layer adds to the residual stream (hidden also
    the embeddings). With a hidden mask, RMSNorm averages over the nonzero channels only,
    as the physically pruned model will.
    """
    base = base_model(model)
    group_columns = base.config.num_attention_heads // base.config.num_key_value_heads * base.config.head_dim
    layer_gate, head_gate = values.get("layers"), values.get("heads")
    neuron_gate, hidden_gate = values.get("intermediate"), values.get("hidden")
    handles = []

    def scale_output(factor):
        return lambda module, args, out: out * factor

    def scale_input(factor):
        return lambda module, args: (args[0] * factor, *args[1:])

    try:
        if hidden_gate is not None:
            kept = (hidden_gate != 0).sum()
            handles.append(base.embed_tokens.register_forward_hook(scale_output(hidden_gate)))
            norms = [base.norm] + [n for layer in base.layers for n in (layer.input_layernorm, layer.post_attention_layernorm)]
            for norm in norms:
                handles.append(norm.register_forward_hook(_kept_channel_rms_norm(kept)))
        for i, layer in enumerate(base.layers):
            added = torch.ones(())
            if layer_gate is not None:
                added = added * layer_gate[i]
            if hidden_gate is not None:
                added = added * hidden_gate
            if head_gate is not None:
                per_column = head_gate[i].repeat_interleave(group_columns)
                handles.append(layer.self_attn.o_proj.register_forward_pre_hook(scale_input(per_column)))
            if neuron_gate is not None:
                handles.append(layer.mlp.down_proj.register_forward_pre_hook(scale_input(neuron_gate[i])))
            handles.append(layer.self_attn.o_proj.register_forward_hook(scale_output(added)))
            handles.append(layer.mlp.down_proj.register_forward_hook(scale_output(added)))
        yield model
    finally:
        for handle in handles:
            handle.remove()


def _kept_channel_rms_norm(kept: torch.Tensor):
    """A forward hook recomputing LlamaRMSNorm with the mean of squares over the kept channels."""

    def hook(module, args, out):
        x = args[0]
        h = x.to(torch.float32)
        variance = h.pow(2).sum(-1, keepdim=True) / kept
        return module.weight * (h * torch.rsqrt(variance + module.variance_epsilon)).to(x.dtype)

    return hook


def masks_to_plan(model, values: dict[str, torch.Tensor]) -> PrunePlan:
    """The pruning plan that removes every zero gate and folds the others' values into the weights."""
    base = base_model(model)
    c = base.config
    layers = []
    for i in range(c.num_hidden_layers):
        layer_value = float(values["layers"][i]) if "layers" in values else 1.0
        groups = _nonzero(values["heads"][i]) if "heads" in values else list(range(c.num_key_value_heads))
        neurons = _nonzero(values["intermediate"][i]) if "intermediate" in values else list(range(c.intermediate_size))
        if layer_value == 0.0:
            groups, neurons = [], []
        layers.append(LayerKeep(
            groups=groups,
            neurons=neurons,
            group_scale=values["heads"][i][groups].detach() if "heads" in values else None,
            neuron_scale=values["intermediate"][i][neurons].detach() if "intermediate" in values else None,
            scale=layer_value,
        ))
    hidden = _nonzero(values["hidden"]) if "hidden" in values else list(range(c.hidden_size))
    hidden_scale = values["hidden"][hidden].detach() if "hidden" in values else None
    return PrunePlan(hidden=hidden, layers=layers, hidden_scale=hidden_scale)


def _nonzero(gate: torch.Tensor) -> list[int]:
    return torch.nonzero(gate != 0).flatten().tolist()

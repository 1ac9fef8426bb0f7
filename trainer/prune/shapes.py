"""Cutting a Llama down to a smaller plain checkpoint of uneven shape, and the causal LM that runs one.

Every pruning method here ends the same way: a `PrunePlan` says which hidden channels,
key/value groups and MLP neurons survive, with optional mask values to fold into the
weights, and `prune_llama` builds the physically smaller model (config `layer_shapes`,
dramasearch/llama_shapes.py). Heads are pruned by whole GQA groups (a key/value head with
its query heads), so every layer keeps heads = kv_heads * the original group size.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import LlamaForCausalLM, LlamaModel

from dramasearch.fsutil import atomic_dir
from dramasearch.errors import UsageError
from dramasearch.llama_shapes import LayerShape, ShapedLlamaModel, current_shapes, layer_shapes
from dramasearch.bidirectional_llama import BidirectionalLlamaModel

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")


class ShapedLlamaForCausalLM(LlamaForCausalLM):
    """`LlamaForCausalLM` over a `ShapedLlamaModel`: a pruned LLM that still generates text."""

    def __init__(self, config):
        super().__init__(config)
        if layer_shapes(config) is not None:
            self.model = ShapedLlamaModel(config)
            self.post_init()  # re-ties lm_head to the new embeddings when the config ties them


@dataclass
class LayerKeep:
    """What survives in one layer; an empty list removes that sub-layer (both empty: the layer)."""

    groups: list[int]
    neurons: list[int]
    group_scale: torch.Tensor | None = None  # one value per kept group, folded into o_proj
    neuron_scale: torch.Tensor | None = None  # one value per kept neuron, folded into down_proj
    scale: float = 1.0  # the whole layer's mask value, folded into o_proj and down_proj


@dataclass
class PrunePlan:
    hidden: list[int]
    layers: list[LayerKeep]
    hidden_scale: torch.Tensor | None = None  # one value per kept hidden channel


def full_plan(model: LlamaModel) -> PrunePlan:
    """The plan that keeps everything (the starting point that pruners edit)."""
    layers = [
        LayerKeep(groups=list(range(s.kv_heads)), neurons=list(range(s.intermediate))) for s in current_shapes(model)
    ]
    return PrunePlan(hidden=list(range(model.config.hidden_size)), layers=layers)


def non_embedding_parameters(model: torch.nn.Module) -> int:
    """Parameters outside the token embeddings (and an LM head, tied to them or not): what pruning can shrink."""
    return sum(p.numel() for name, p in model.named_parameters() if "embed_tokens" not in name and "lm_head" not in name)


def base_model(model) -> LlamaModel:
    """The `LlamaModel` inside a causal LM, or the model itself."""
    return model.model if isinstance(model, LlamaForCausalLM) else model


def prune_llama(model, plan: PrunePlan):
    """A new, smaller model of the same kind (encoder or causal LM) that computes what `plan` describes.

    Kept weights are copied (sliced) and the plan's mask values multiplied in, so the result
    equals the original run with those masks. Needs bias-free projections (all Llamas here).
    """
    base = base_model(model)
    config = base.config
    if config.attention_bias or config.mlp_bias:
        raise ValueError("pruning supports bias-free Llama projections only (attention_bias/mlp_bias are set)")
    shapes = current_shapes(base)
    if len(plan.layers) != len(shapes):
        raise ValueError(f"the plan has {len(plan.layers)} layers, the model {len(shapes)}")
    hidden = torch.as_tensor(plan.hidden, dtype=torch.long)
    if len(hidden) == 0:
        raise ValueError("the plan keeps no hidden channels")
    h_scale = _scale(plan.hidden_scale, len(hidden))
    head_dim = config.head_dim
    state: dict[str, torch.Tensor] = {}
    new_shapes: list[LayerShape] = []
    with torch.no_grad():
        state["embed_tokens.weight"] = base.embed_tokens.weight[:, hidden] * h_scale
        state["norm.weight"] = base.norm.weight[hidden]
        for layer, shape, keep in zip(base.layers, shapes, plan.layers):
            prefix = f"layers.{len(new_shapes)}."
            groups = keep.groups if shape.has_attention else []
            neurons = keep.neurons if shape.has_mlp else []
            if not groups and not neurons:
                continue
            new_shape = LayerShape(0, 0, len(neurons))
            if groups:
                attn = layer.self_attn
                per_group = shape.heads // shape.kv_heads
                kv_rows = _rows(groups, head_dim)
                q_rows = _rows([g * per_group + h for g in groups for h in range(per_group)], head_dim)
                g_scale = _scale(keep.group_scale, len(groups)).repeat_interleave(per_group * head_dim)
                state[prefix + "self_attn.q_proj.weight"] = attn.q_proj.weight[q_rows][:, hidden]
                state[prefix + "self_attn.k_proj.weight"] = attn.k_proj.weight[kv_rows][:, hidden]
                state[prefix + "self_attn.v_proj.weight"] = attn.v_proj.weight[kv_rows][:, hidden]
                o_proj = attn.o_proj.weight[hidden][:, q_rows]
                state[prefix + "self_attn.o_proj.weight"] = o_proj * h_scale[:, None] * g_scale[None, :] * keep.scale
                state[prefix + "input_layernorm.weight"] = layer.input_layernorm.weight[hidden]
                new_shape = LayerShape(len(groups) * per_group, len(groups), len(neurons))
            if neurons:
                mlp, rows = layer.mlp, torch.as_tensor(neurons, dtype=torch.long)
                n_scale = _scale(keep.neuron_scale, len(neurons))
                state[prefix + "mlp.gate_proj.weight"] = mlp.gate_proj.weight[rows][:, hidden]
                state[prefix + "mlp.up_proj.weight"] = mlp.up_proj.weight[rows][:, hidden]
                down = mlp.down_proj.weight[hidden][:, rows]
                state[prefix + "mlp.down_proj.weight"] = down * h_scale[:, None] * n_scale[None, :] * keep.scale
                state[prefix + "post_attention_layernorm.weight"] = layer.post_attention_layernorm.weight[hidden]
            new_shapes.append(new_shape)
    if not new_shapes:
        raise ValueError("the plan removes every layer")
    causal = isinstance(model, LlamaForCausalLM)
    new_config = _pruned_config(config, len(hidden), new_shapes)
    if causal:
        state = {f"model.{k}": v for k, v in state.items()}
        state["lm_head.weight"] = model.lm_head.weight[:, hidden].detach()
        # The hidden mask scales the residual stream (folded into the embeddings) but not the
        # final-norm output the LM head reads: tied weights would apply it twice.
        scaled = plan.hidden_scale is not None and not torch.all(h_scale == 1)
        new_config.tie_word_embeddings = bool(config.tie_word_embeddings and not scaled)
        cls = ShapedLlamaForCausalLM
    else:
        cls = BidirectionalLlamaModel if isinstance(model, BidirectionalLlamaModel) else ShapedLlamaModel
    with torch.device("meta"):
        pruned = cls(new_config)
    pruned.load_state_dict({k: v.detach().clone().contiguous() for k, v in state.items()}, strict=True, assign=True)
    if causal and new_config.tie_word_embeddings:
        pruned.tie_weights()  # assign=True loaded two tensors; make the head share the embeddings again
    _materialize_buffers(pruned, base)
    return pruned.to(base.embed_tokens.weight.dtype).eval()


def save_pruned(model, out_dir: Path, tokenizer_from: Path | None = None) -> Path:
    """Write a pruned model as a plain folder (safetensors + config + tokenizer), all at once or not at all."""
    out_dir = Path(out_dir)
    if tokenizer_from is not None and out_dir.resolve() == Path(tokenizer_from).resolve():
        raise UsageError("output", f"{out_dir}: the pruned model would replace the model it comes from; choose another folder")
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer_from is not None:
            for name in TOKENIZER_FILES:
                if (Path(tokenizer_from) / name).is_file():
                    shutil.copy(Path(tokenizer_from) / name, tmp / name)
    return out_dir


def _rows(units: list[int], width: int) -> torch.Tensor:
    """Row indices of whole blocks of `width` rows (heads or groups) in a projection weight."""
    return torch.as_tensor([u * width + k for u in units for k in range(width)], dtype=torch.long)


def _scale(values: torch.Tensor | None, n: int) -> torch.Tensor:
    if values is None:
        return torch.ones(n)
    values = torch.as_tensor(values, dtype=torch.float32).detach().flatten()
    if len(values) != n:
        raise ValueError(f"a mask has {len(values)} values for {n} kept entries")
    return values


def _pruned_config(config, hidden_size: int, shapes: list[LayerShape]):
    new = config.__class__.from_dict(config.to_dict())
    new.hidden_size = hidden_size
    new.num_hidden_layers = len(shapes)
    new.head_dim = config.head_dim
    # With layer_shapes the global sizes only size the stock layers that the constructor builds and
    # replaces; 1 keeps those tiny and passes LlamaConfig's hidden_size % heads check for any hidden size.
    new.num_attention_heads = new.num_key_value_heads = new.intermediate_size = 1
    new.layer_shapes = [s.to_dict() for s in shapes]
    new.architectures = None
    return new


def _materialize_buffers(pruned, like: LlamaModel) -> None:
    """Meta-built models have meta rotary buffers: recompute them for the real device."""
    rotary = base_model(pruned).rotary_emb
    source = like.rotary_emb
    rotary.inv_freq = source.inv_freq.detach().clone()
    rotary.original_inv_freq = source.original_inv_freq.detach().clone()

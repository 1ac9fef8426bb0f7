"""Llama models of uneven shape: per-layer head counts and MLP widths, layers without attention or MLP.

Pruned encoders (EffiR, Sheared-LLaMA) keep the Llama math but not its uniform shape. The
shape is written in config.json as `layer_shapes`, one entry per layer:

    "layer_shapes": [{"heads": 9, "kv_heads": 3, "intermediate": 1536},
                     {"heads": 0, "kv_heads": 0, "intermediate": 1024}, ...]

`heads` / `kv_heads` = 0 means the layer has no attention sub-layer (nor its input norm);
`intermediate` = 0 means no MLP sub-layer (nor its norm). `head_dim` stays global (pruners
write it explicitly, since hidden_size / heads no longer gives it), and `hidden_size` is the
ordinary config value. The global num_attention_heads / num_key_value_heads /
intermediate_size then only size placeholder layers that are built and replaced (pruners
write 1, which also satisfies LlamaConfig's hidden_size % heads check for any hidden size). A config without `layer_shapes` builds the stock `LlamaModel` layers, untouched.
Plain transformers refuses such a checkpoint (weight shapes differ), never runs it wrongly.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

from torch import nn
from transformers import LlamaConfig, LlamaModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaDecoderLayer, LlamaMLP, LlamaRMSNorm

from .errors import ModelLoadError

SHAPE_FIELDS = ("heads", "kv_heads", "intermediate")


@dataclass(frozen=True)
class LayerShape:
    """The size of one decoder layer; zero heads / zero intermediate = that sub-layer is absent."""

    heads: int
    kv_heads: int
    intermediate: int

    @property
    def has_attention(self) -> bool:
        return self.heads > 0

    @property
    def has_mlp(self) -> bool:
        return self.intermediate > 0

    def to_dict(self) -> dict:
        return asdict(self)


def parse_layer_shapes(raw, num_layers: int, source: str = "config.json") -> list[LayerShape]:
    """Validate a config's `layer_shapes` value; errors name the file, the entry and the field."""
    where = f"{source}: layer_shapes"
    if not isinstance(raw, list):
        raise ModelLoadError(f"{where}: must be a list with one object per layer, got {type(raw).__name__}")
    if len(raw) != num_layers:
        raise ModelLoadError(f"{where}: has {len(raw)} entries but num_hidden_layers is {num_layers}; give one per layer")
    shapes = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise ModelLoadError(f"{where}[{i}]: must be an object with fields {list(SHAPE_FIELDS)}")
        unknown = sorted(set(entry) - set(SHAPE_FIELDS))
        missing = [f for f in SHAPE_FIELDS if f not in entry]
        if unknown or missing:
            raise ModelLoadError(f"{where}[{i}]: unknown fields {unknown}, missing fields {missing}; expected {list(SHAPE_FIELDS)}")
        for field in SHAPE_FIELDS:
            value = entry[field]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ModelLoadError(f"{where}[{i}].{field}: must be a non-negative integer, got {value!r}")
        shape = LayerShape(**entry)
        if (shape.heads == 0) != (shape.kv_heads == 0):
            raise ModelLoadError(
                f"{where}[{i}]: heads={shape.heads} and kv_heads={shape.kv_heads}; "
                "both are 0 (no attention) or both positive"
            )
        if shape.heads and shape.heads % shape.kv_heads:
            raise ModelLoadError(
                f"{where}[{i}]: heads={shape.heads} is not a multiple of kv_heads={shape.kv_heads} "
                "(grouped-query attention shares each key/value head among equally many query heads)"
            )
        shapes.append(shape)
    return shapes


def layer_shapes(config: LlamaConfig, source: str = "config.json") -> list[LayerShape] | None:
    """The validated per-layer shapes of a config, or None for a uniform (stock) Llama."""
    raw = getattr(config, "layer_shapes", None)
    return None if raw is None else parse_layer_shapes(raw, config.num_hidden_layers, source)


def current_shapes(model: LlamaModel) -> list[LayerShape]:
    """The shape each layer of a built model really has (stock or shaped)."""
    shapes = []
    for layer in model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        heads = attn.q_proj.out_features // attn.head_dim if attn is not None else 0
        kv_heads = attn.k_proj.out_features // attn.head_dim if attn is not None else 0
        shapes.append(LayerShape(heads, kv_heads, mlp.down_proj.in_features if mlp is not None else 0))
    return shapes


def _resized(config: LlamaConfig, **sizes) -> LlamaConfig:
    """A shallow copy of the config with some sizes changed, for building one right-sized module."""
    sized = copy.copy(config)
    for key, value in sizes.items():
        setattr(sized, key, value)
    return sized


class ShapedDecoderLayer(LlamaDecoderLayer):
    """A Llama decoder layer of its own size, whose absent sub-layers add nothing to the residual stream.

    `cache_index` numbers the attention-bearing layers 0, 1, ...: the KV cache reads the
    sequence length from its first layer, which must therefore be one that attends.
    """

    def __init__(self, config: LlamaConfig, layer_idx: int, shape: LayerShape, cache_index: int):
        GradientCheckpointingLayer.__init__(self)  # not LlamaDecoderLayer's: it would build full-size modules
        self.hidden_size = config.hidden_size
        self.layer_idx = layer_idx
        self.self_attn = self.input_layernorm = self.mlp = self.post_attention_layernorm = None
        if shape.has_attention:
            sized = _resized(config, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads)
            self.self_attn = LlamaAttention(sized, cache_index)
            self.self_attn.config = config  # shared, so later attn_implementation changes reach it
            self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        if shape.has_mlp:
            self.mlp = LlamaMLP(_resized(config, intermediate_size=shape.intermediate))
            self.mlp.config = config
            self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_values=None,
                use_cache=False, position_embeddings=None, **kwargs):
        if self.self_attn is not None:
            attended, _ = self.self_attn(
                hidden_states=self.input_layernorm(hidden_states),
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                use_cache=use_cache,
                position_embeddings=position_embeddings,
                **kwargs,
            )
            hidden_states = hidden_states + attended
        if self.mlp is not None:
            hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states


def shaped_layers(config: LlamaConfig, shapes: list[LayerShape]) -> nn.ModuleList:
    cache_indices = [sum(s.has_attention for s in shapes[:i]) for i in range(len(shapes))]
    return nn.ModuleList(ShapedDecoderLayer(config, i, s, c) for i, (s, c) in enumerate(zip(shapes, cache_indices)))


class ShapedLlamaModel(LlamaModel):
    """`LlamaModel` whose layers follow `config.layer_shapes` when present (stock layers otherwise)."""

    def __init__(self, config: LlamaConfig):
        shapes = layer_shapes(config)
        super().__init__(config)
        if shapes is not None:
            self.layers = shaped_layers(config, shapes)
            self.post_init()  # initialize the replacement layers' weights like the stock ones

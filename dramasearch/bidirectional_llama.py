"""A Llama decoder turned into a bidirectional encoder, natively (no `trust_remote_code`).

DRAMA checkpoints are plain `LlamaModel` weights whose attention sees every non-padding
token in both directions. transformers builds a bidirectional padding mask when
`config.is_causal` is False; the attention modules must also drop their own causal flag,
or SDPA falls back to a causal kernel whenever a batch has no padding. Pruned checkpoints
of uneven shape (`layer_shapes` in config.json, see llama_shapes.py) load through the same class.
"""
from __future__ import annotations

from transformers import LlamaConfig

from .llama_shapes import ShapedLlamaModel, layer_shapes


class BidirectionalLlamaModel(ShapedLlamaModel):
    """`LlamaModel` with full (padding-only) attention, as DRAMA is trained and used."""

    def __init__(self, config: LlamaConfig):
        config.is_causal = False
        super().__init__(config)
        for layer in self.layers:
            if layer.self_attn is not None:
                layer.self_attn.is_causal = False


def llama_config_from_dict(raw: dict, source: str = "config.json") -> LlamaConfig:
    """Build a LlamaConfig from a checkpoint's config.json, ignoring remote-code pointers.

    The hub's DRAMA config names custom classes (`auto_map`, `DramaModel`); the weights and
    shapes are plain Llama, so only the architecture fields are kept. `layer_shapes`, when
    present, is validated here so a bad one is reported against `source` before any weights load.
    """
    fields = {k: v for k, v in raw.items() if k not in {"auto_map", "architectures", "model_type", "torch_dtype", "dtype"}}
    config = LlamaConfig(**fields)
    layer_shapes(config, source)
    return config

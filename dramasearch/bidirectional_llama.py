"""A Llama decoder turned into a bidirectional encoder, natively (no `trust_remote_code`).

DRAMA checkpoints are plain `LlamaModel` weights whose attention sees every non-padding
token in both directions. transformers builds a bidirectional padding mask when
`config.is_causal` is False; the attention modules must also drop their own causal flag,
or SDPA falls back to a causal kernel whenever a batch has no padding.
"""
from __future__ import annotations

from transformers import LlamaConfig, LlamaModel


class BidirectionalLlamaModel(LlamaModel):
    """`LlamaModel` with full (padding-only) attention, as DRAMA is trained and used."""

    def __init__(self, config: LlamaConfig):
        config.is_causal = False
        super().__init__(config)
        for layer in self.layers:
            layer.self_attn.is_causal = False


def llama_config_from_dict(raw: dict) -> LlamaConfig:
    """Build a LlamaConfig from a checkpoint's config.json, ignoring remote-code pointers.

    The hub's DRAMA config names custom classes (`auto_map`, `DramaModel`); the weights and
    shapes are plain Llama, so only the architecture fields are kept.
    """
    fields = {k: v for k, v in raw.items() if k not in {"auto_map", "architectures", "model_type", "torch_dtype", "dtype"}}
    return LlamaConfig(**fields)

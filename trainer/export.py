"""Export a trained encoder as a plain folder that describes itself, and load it back.

Every export holds safetensors weights, the backbone config, the tokenizer, and
`dramasearch_encoder.json` (pooling, normalization, prefixes, attention, special-token
framing, max length). On top of that, by family:

- sentence-transformers family: a real sentence-transformers folder (modules.json,
  Pooling, Normalize, prompts), so `SentenceTransformer(path)` gives the same vectors.
- DRAMA family: config.json with `model_type: "drama"` and no `auto_map`. transformers has no
  "drama" type, so AutoModel / AutoModelForCausalLM refuse the folder (even with
  trust_remote_code, as there is no code to trust) instead of silently loading a
  bidirectional encoder as a causal LM; dramasearch reads "drama" natively.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from dramasearch.encoder import Encoder
from dramasearch.errors import ModelLoadError
from dramasearch.fsutil import atomic_dir
from dramasearch.models import load_encoder as load_dramasearch_encoder

METADATA_FILE = "dramasearch_encoder.json"
FORMAT_VERSION = 1
# What dramasearch.models reads for a sentence-transformers folder (the classic layout,
# which sentence-transformers 2.x through 6.x also read).
ST_MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
]
SPEC_FIELDS = ("family", "dim", "pooling", "normalize", "query_prefix", "document_prefix", "wrap_bos_eos", "max_length")


def export_encoder(encoder: Encoder, out_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write `encoder` to `out_dir` atomically (replacing it); `extra` goes into the metadata (e.g. training facts)."""
    if not isinstance(encoder, Encoder):
        raise TypeError(f"export_encoder() takes a dramasearch Encoder, got {type(encoder).__name__}")
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        encoder.model.save_pretrained(tmp, safe_serialization=True)
        _save_tokenizer(encoder, tmp)
        if encoder.spec.family == "drama":
            _write_json(tmp / "config.json", drama_config(encoder))
        else:
            _write_sentence_transformers_files(encoder, tmp)
        _write_json(tmp / METADATA_FILE, metadata(encoder, extra))
    return out_dir


def load_encoder(out_dir: str | Path, device: str | None = None, dtype: torch.dtype | None = None) -> Encoder:
    """Load an exported folder through dramasearch, honouring its max length, and check it matches the metadata."""
    out_dir = Path(out_dir)
    path = out_dir / METADATA_FILE
    if not path.is_file():
        raise ModelLoadError(f"{out_dir}: no {METADATA_FILE}; not a folder written by trainer.export")
    meta = json.loads(path.read_text(encoding="utf-8"))
    encoder = load_dramasearch_encoder(str(out_dir), device=device, dtype=dtype, max_length=meta["max_length"])
    loaded = encoder.spec.to_dict()
    differ = {k: (meta[k], loaded[k]) for k in SPEC_FIELDS if meta[k] != loaded[k]}
    if differ:
        raise ModelLoadError(f"{out_dir}: dramasearch loads it differently from how it was exported (saved, loaded): {differ}")
    return encoder


def metadata(encoder: Encoder, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    spec = encoder.spec
    return {
        "format": "dramasearch-encoder",
        "format_version": FORMAT_VERSION,
        **{k: getattr(spec, k) for k in SPEC_FIELDS},
        "attention": "bidirectional" if spec.family == "drama" else "as the backbone defines it",
        "special_tokens": "BOS + text + EOS" if spec.wrap_bos_eos else "the tokenizer's own template",
        "source_model": spec.name,
        **(extra or {}),
    }


def drama_config(encoder: Encoder) -> dict[str, Any]:
    """The backbone's Llama config as type "drama" without remote-code pointers (see module doc)."""
    raw = encoder.model.config.to_dict()
    raw.pop("auto_map", None)
    raw.update(model_type="drama", architectures=["DramaModel"], is_causal=False)
    return raw


def _save_tokenizer(encoder: Encoder, folder: Path) -> None:
    """Save with the real max length (the Encoder lifts the tokenizer's limit to do its own truncation)."""
    tokenizer = encoder.tokenizer
    lifted = tokenizer.model_max_length
    tokenizer.model_max_length = encoder.spec.max_length
    try:
        tokenizer.save_pretrained(folder)
    finally:
        tokenizer.model_max_length = lifted


def _write_sentence_transformers_files(encoder: Encoder, folder: Path) -> None:
    spec = encoder.spec
    modules = ST_MODULES if spec.normalize else ST_MODULES[:2]
    _write_json(folder / "modules.json", modules)
    _write_json(folder / "sentence_bert_config.json", {"max_seq_length": spec.max_length, "do_lower_case": False})
    _write_json(folder / "1_Pooling" / "config.json", {
        "word_embedding_dimension": spec.dim,
        "pooling_mode_cls_token": spec.pooling == "cls",
        "pooling_mode_mean_tokens": spec.pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": spec.pooling == "last",
        "include_prompt": True,
    })
    if spec.normalize:
        (folder / "2_Normalize").mkdir()
    _write_json(folder / "config_sentence_transformers.json", {
        "prompts": {"query": spec.query_prefix, "document": spec.document_prefix},
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    })


def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

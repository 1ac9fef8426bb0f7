"""Text -> unit vectors: tokenization, token-budget batches, the backbone, pooling, Matryoshka.

One `Encoder` class serves every family (DRAMA, sentence-transformers folders, other Llama
backbones); what differs between them is data, held in `EncoderSpec`, which is also what an
index's manifest records so a searcher can refuse a mismatched model.
"""
from __future__ import annotations

import dataclasses
import functools
import threading
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .batching import token_budget_batches
from .chunking import Chunk, chunk_documents
from .errors import UsageError
from .matryoshka import prepare

POOLINGS = ("mean", "cls", "last")


@dataclass(frozen=True)
class EncoderSpec:
    """Everything that decides which vector a text gets (recorded in index manifests)."""

    name: str
    family: str  # "drama" (bidirectional Llama) or "sentence-transformers"
    dim: int
    max_length: int
    pooling: str
    normalize: bool
    query_prefix: str
    document_prefix: str
    wrap_bos_eos: bool  # add exactly one BOS and one EOS ourselves (DRAMA); else the tokenizer's own
    fingerprint: str  # hash of config, tokenizer and weights identity

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "EncoderSpec":
        return cls(**raw)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> torch.dtype:
    """bf16 on CUDA (fp16 where unsupported) and on CPUs with native bf16 matmul, else fp32.

    On an AVX512-BF16 CPU, bf16 encodes ~2.8x faster than fp32 at cosine 0.9999 to the fp32
    vectors (benchmarks/RESULTS.md); without those instructions bf16 is several times slower.
    """
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when the CPU advertises AVX512-BF16 or AMX-BF16 (Linux /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


DTYPES = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def default_batch_tokens(device: str) -> int:
    return 65536 if device.startswith("cuda") else 8192


class Encoder:
    """Encodes queries and documents into float32 numpy arrays of unit vectors."""

    def __init__(self, model: torch.nn.Module, tokenizer, spec: EncoderSpec, device: str, dtype: torch.dtype):
        if spec.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {spec.pooling!r}")
        self.model = model.to(device=device, dtype=dtype).eval()
        self.tokenizer = tokenizer
        # Truncation is ours (max_length, or windows in chunk mode): silence the tokenizer's
        # "sequence longer than the model's maximum" warning for whole long documents.
        tokenizer.model_max_length = int(1e30)
        self.spec = spec
        self.device = device
        self.dtype = dtype
        self.pad_id = _pad_id(tokenizer)
        # HF fast tokenizers are not safe under concurrent calls that share truncation state.
        self._tokenizer_lock = threading.Lock()

    @property
    def dim(self) -> int:
        return self.spec.dim

    def encode_queries(self, texts: Sequence[str], dim: int | None = None, **kwargs) -> np.ndarray:
        return self.encode(texts, prefix=self.spec.query_prefix, dim=dim, **kwargs)

    def encode_documents(self, texts: Sequence[str], dim: int | None = None, **kwargs) -> np.ndarray:
        return self.encode(texts, prefix=self.spec.document_prefix, dim=dim, **kwargs)

    def encode(
        self,
        texts: Sequence[str],
        prefix: str = "",
        dim: int | None = None,
        *,
        batch_tokens: int | None = None,
        show_progress: bool | None = None,
    ) -> np.ndarray:
        """Encode `prefix + text` for each text; rows keep the input order."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of texts; wrap a single text in a list")
        return self.encode_ids(self.tokenize(texts, prefix), dim, batch_tokens=batch_tokens, show_progress=show_progress)

    def tokenize(self, texts: Sequence[str], prefix: str = "") -> list[list[int]]:
        """Token ids per text, truncated to max_length, special tokens included."""
        return self.tokenize_counting(texts, prefix)[0]

    def tokenize_counting(self, texts: Sequence[str], prefix: str = "") -> tuple[list[list[int]], int]:
        """Like `tokenize`, also counting the texts that were cut at max_length.

        Texts are tokenized one token past the limit so a cut can be told from an exact fit.
        """
        texts = [prefix + t for t in texts]
        if not texts:
            return [], 0
        room = self.room()
        with self._tokenizer_lock:
            # Text is data: a literal "<|end_of_text|>" inside it must not become the special token.
            body = self.tokenizer(
                texts, add_special_tokens=False, split_special_tokens=True, truncation=True, max_length=room + 1
            )["input_ids"]
        truncated = sum(len(ids) > room for ids in body)
        return [self.frame(ids[:room]) for ids in body], truncated

    def frame(self, body: Sequence[int], prefix_ids: Sequence[int] = ()) -> list[int]:
        """Special tokens around already-tokenized text (and an optional prefix)."""
        head, tail = self._special_ids
        return [*head, *prefix_ids, *body, *tail]

    def room(self, prefix_ids: Sequence[int] = ()) -> int:
        """How many text tokens fit in max_length besides the special tokens and prefix."""
        head, tail = self._special_ids
        return self.spec.max_length - len(head) - len(tail) - len(prefix_ids)

    def windows(self, texts: Sequence[str], chunk_tokens: int, overlap: int) -> list[list[Chunk]]:
        """Documents as overlapping token windows (chunking.py) that fit max_length once framed."""
        limit = self.room(self.document_prefix_ids)
        if chunk_tokens > limit:
            raise UsageError("chunk_tokens", 
                f"chunk_tokens={chunk_tokens} does not fit {self.spec.name}'s max length {self.spec.max_length} "
                f"(at most {limit} text tokens besides special tokens and prefix)"
            )
        with self._tokenizer_lock:
            return chunk_documents(self.tokenizer, texts, chunk_tokens, overlap)

    @functools.cached_property
    def document_prefix_ids(self) -> list[int]:
        prefix = self.spec.document_prefix
        return self.tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []

    @functools.cached_property
    def _special_ids(self) -> tuple[list[int], list[int]]:
        """Special tokens around the text: BOS/EOS for DRAMA, else the tokenizer's own template."""
        if self.spec.wrap_bos_eos:
            return [self.tokenizer.bos_token_id], [self.tokenizer.eos_token_id]
        bare = self.tokenizer("a", add_special_tokens=False)["input_ids"]
        full = self.tokenizer("a", add_special_tokens=True)["input_ids"]
        start = next(i for i in range(len(full)) if full[i : i + len(bare)] == bare)
        return full[:start], full[start + len(bare) :]

    def encode_ids(
        self,
        token_ids: Sequence[Sequence[int]],
        dim: int | None = None,
        *,
        batch_tokens: int | None = None,
        show_progress: bool | None = None,
    ) -> np.ndarray:
        """Encode already-tokenized inputs in length-sorted token-budget batches."""
        out = np.zeros((len(token_ids), self.spec.dim), dtype=np.float32)
        if not token_ids:
            return prepare(out, dim, self.spec.normalize) if dim else out
        lengths = [len(ids) for ids in token_ids]
        budget = batch_tokens or default_batch_tokens(self.device)
        batches = token_budget_batches(lengths, budget)
        if show_progress is None:
            show_progress = len(token_ids) >= 2000
        bar = tqdm(total=len(token_ids), unit="doc", disable=not show_progress, smoothing=0.05)
        start, seen_tokens = time.perf_counter(), 0
        with torch.inference_mode():
            for batch in batches:
                out[batch] = self._forward([token_ids[i] for i in batch])
                seen_tokens += sum(lengths[i] for i in batch)
                bar.update(len(batch))
                bar.set_postfix(tok_s=f"{seen_tokens / max(time.perf_counter() - start, 1e-9):,.0f}", refresh=False)
        bar.close()
        if dim is not None or self.spec.normalize:
            out = prepare(out, dim, self.spec.normalize)
        return out

    def embed(self, texts: Sequence[str], prefix: str = "", dim: int | None = None) -> torch.Tensor:
        """Training twin of `encode`: one float32 row per text, as a tensor that keeps gradients.

        Same tokenization, framing, pooling, normalization and Matryoshka truncation as
        `encode` (so a model encodes as it was trained), but one padded batch for all `texts`
        and no inference mode: the caller chooses train/eval mode, no_grad and autocast.
        """
        if isinstance(texts, str):
            raise TypeError("embed() takes a list of texts; wrap a single text in a list")
        return self.embed_ids(self.tokenize(texts, prefix), dim)

    def embed_ids(self, token_ids: Sequence[Sequence[int]], dim: int | None = None) -> torch.Tensor:
        """`embed` for already-tokenized inputs (from `tokenize`), all in one batch."""
        if not token_ids:
            raise ValueError("embed_ids() needs at least one input")
        pooled = self._pooled(token_ids)
        if dim is not None or self.spec.normalize:
            pooled = truncate_normalize_tensor(pooled, dim)
        return pooled

    def _forward(self, batch_ids: list[Sequence[int]]) -> np.ndarray:
        return self._pooled(batch_ids).cpu().numpy()

    def _pooled(self, batch_ids: Sequence[Sequence[int]]) -> torch.Tensor:
        """Right-padded batch -> backbone -> pooled float32 rows: the one path serving and training share."""
        longest = max(len(ids) for ids in batch_ids)
        input_ids = torch.full((len(batch_ids), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch_ids), longest), dtype=torch.long)
        for row, ids in enumerate(batch_ids):
            input_ids[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
            mask[row, : len(ids)] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        return pool(hidden.float(), mask, self.spec.pooling)


def truncate_normalize_tensor(vectors: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Torch twin of `matryoshka.truncate_normalize` (first `dim` components, unit L2 norm), differentiable.

    Rows of all zeros stay zero, as in the numpy version.
    """
    if vectors.ndim != 2:
        raise ValueError(f"expected a 2-D tensor of vectors, got shape {tuple(vectors.shape)}")
    if dim is not None:
        if not 0 < dim <= vectors.shape[1]:
            raise ValueError(f"dim={dim} is outside 1..{vectors.shape[1]} (the model's full dimension)")
        vectors = vectors[:, :dim]
    return torch.nn.functional.normalize(vectors, p=2.0, dim=1)


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """Reduce token states to one vector per row; padding is right-aligned."""
    if how == "cls":
        return hidden[:, 0]
    if how == "last":
        last = mask.sum(dim=1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)


def _pad_id(tokenizer) -> int:
    """Padding never reaches the output (it is masked), so any valid id works when none is set."""
    return next(c for c in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if c is not None)

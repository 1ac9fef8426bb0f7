"""One rule per argument, in one place: the Python API and the CLI both call these.

A bad argument raises UsageError naming it (exit code 2 in the CLI) before any model loads or
any file is written, so a typo never costs an encode and never leaves a half-built index.
Bad *data* (a corpus line, a queries file) is InputError instead, located by file and line.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

from .errors import UsageError

MAX_K = 100_000  # hits per query; more is a scan, not a search (and k is also capped at the live rows)
MAX_QUERY_CHARS = 16_384  # a query longer than this is a document; it would be cut at max length anyway
MAX_QUERIES = 100_000  # per batch_search call: bounds the memory of one call's results
_DEVICE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")
_UNSAFE = re.compile(r"[\x00\ud800-\udfff]")  # NUL and lone surrogates: tokenizers reject or mangle them


def integer(name: str, value: Any, *, minimum: int = 1, maximum: int | None = None) -> int:
    """An int (not a bool, not a float) within [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(name, f"expected an integer, got {type(value).__name__} {value!r:.40}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise UsageError(name, f"must be {bound}, got {value}")
    return value


def optional_integer(name: str, value: Any, *, minimum: int = 1, maximum: int | None = None) -> int | None:
    return None if value is None else integer(name, value, minimum=minimum, maximum=maximum)


def k(value: Any, name: str = "k") -> int:
    return integer(name, value, maximum=MAX_K)


def choice(name: str, value: Any, choices: Sequence[str], *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if value not in choices:
        raise UsageError(name, f"must be one of {', '.join(choices)}; got {value!r:.40}")
    return value


def index_kind(value: Any, name: str = "index_kind") -> str:
    from .index.faiss_index import ALL_KINDS  # the FAISS module owns the list of kinds it can build

    return choice(name, value, ("auto", *ALL_KINDS))


def aggregate(value: Any, *, optional: bool = True) -> str | None:
    from .aggregate import AGGREGATIONS

    return choice("aggregate", value, AGGREGATIONS, optional=optional)


def dims(values: Any, full: int, name: str = "dims") -> tuple[int, ...]:
    """Matryoshka dims: each within 1..full (the encoder's dimension), no repeats."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise UsageError(name, f"expected a list of integers, got {type(values).__name__}")
    out = tuple(integer(name, v) for v in values)
    for dim in out:
        if dim > full:
            raise UsageError(name, f"dim {dim} is outside 1..{full}, the encoder's full dimension")
    if len(set(out)) != len(out):
        raise UsageError(name, f"repeats a dim: {list(out)}")
    return out


def max_length(value: Any, limit: int, model: str) -> int | None:
    """A max length the model can take: its position table ends at `limit`."""
    if value is None:
        return None
    integer("max_length", value)
    if value > limit:
        raise UsageError("max_length", f"{value} is beyond what {model} can read ({limit} positions)")
    return value


def chunk_window(chunk_tokens: Any, stride: Any) -> None:
    """Chunk mode: a window of `chunk_tokens`, consecutive windows sharing `stride` tokens."""
    optional_integer("chunk_tokens", chunk_tokens, minimum=8)
    integer("stride", stride, minimum=0)
    if chunk_tokens is not None and stride >= chunk_tokens:
        raise UsageError("stride", f"must be smaller than chunk_tokens ({chunk_tokens}), got {stride}: "
                                   "windows would not advance")


def batch_tokens(value: Any) -> int | None:
    return optional_integer("batch_tokens", value, minimum=64)


def devices(values: Any) -> tuple[str, ...]:
    """Torch device names that exist on this machine (one worker each; cpu,cpu runs two CPU workers)."""
    if isinstance(values, str):
        values = (values,)
    out = tuple(values or ())
    for device in out:
        check_device(device, "devices")
    return out


def check_device(device: Any, name: str = "device") -> str | None:
    if device is None:
        return None
    if not isinstance(device, str) or not _DEVICE.match(device):
        raise UsageError(name, f"expected cpu, cuda, cuda:N or mps, got {device!r:.40}")
    if device.startswith("cuda"):
        import torch

        count = torch.cuda.device_count()
        number = int(device.partition(":")[2] or 0)
        if number >= count:
            raise UsageError(name, f"{device} is not available (this machine has {count} CUDA devices)")
    return device


def unsafe_text(text: str) -> str | None:
    """Why `text` cannot be tokenized, or None. Lone surrogates (from JSON escapes like \\ud800)
    make tokenizers raise; a NUL byte means binary data or UTF-16 read as UTF-8."""
    found = _UNSAFE.search(text)
    if found is None:
        return None
    char = found.group()
    what = "a NUL character (binary data, or a UTF-16 file?)" if char == "\x00" else \
        f"an unpaired surrogate U+{ord(char):04X} (not a character; fix the text's encoding)"
    return f"contains {what} at offset {found.start()}"


def query(text: Any, name: str = "query") -> str:
    """A query the engine will take: a non-blank string of bounded length that tokenizes."""
    if not isinstance(text, str):
        raise UsageError(name, f"expected a string, got {type(text).__name__}")
    if not text.strip():
        raise UsageError(name, "is empty; a query needs words")
    if len(text) > MAX_QUERY_CHARS:
        raise UsageError(name, f"is {len(text):,} characters; the limit is {MAX_QUERY_CHARS:,}")
    problem = unsafe_text(text)
    if problem:
        raise UsageError(name, problem)
    return text


def queries(texts: Any) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise UsageError("queries", f"expected a list of strings, got {type(texts).__name__}; "
                                    "use search() for one query")
    if len(texts) > MAX_QUERIES:
        raise UsageError("queries", f"{len(texts):,} queries in one call; the limit is {MAX_QUERIES:,}")
    return [query(t, f"queries[{i}]") for i, t in enumerate(texts)]

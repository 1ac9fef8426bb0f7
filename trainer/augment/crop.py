"""Cropped-sentence queries (DRAGON style): a sentence of a passage is a pseudo-query for it.

Free supervision from the corpus alone. Each passage draws from its own random stream
(seeded by the run seed and the docid), so the output does not depend on corpus order,
on `limit`, or on where a run is resumed. Negatives are added afterwards by mining.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from ..data import Passage, TrainingExample, write_examples
from .retrieval import load_passages

# A sentence ends at . ! ? (maybe closed by a quote or bracket) then whitespace, or at a CJK full stop.
_BOUNDARY = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"'’”)\]]))\s+|(?<=[。！？])")
# Words after which a full stop does not end a sentence.
_ABBREVIATIONS = frozenset(
    "e.g i.e etc al fig figs eq eqs ref refs vs cf approx dr mr mrs ms prof st no vol pp ca resp".split()
)


@dataclass(frozen=True)
class CropConfig:
    queries_per_passage: int = 1
    min_words: int = 4
    max_words: int = 64
    remove_from_positive: bool = False  # True: the positive no longer contains the query verbatim
    # Text without sentence punctuation (Vaswani's lowercased abstracts, transcripts) is one
    # "sentence": windows of this many words stand in for its sentences instead.
    window_words: int = 16
    seed: int = 0


def split_sentences(text: str) -> list[str]:
    """Sentences of `text`, without splitting after abbreviations, initials or decimals."""
    pieces = [p for p in _BOUNDARY.split(text.strip()) if p and p.strip()]
    sentences: list[str] = []
    for piece in pieces:
        if sentences and _continues(sentences[-1]):
            sentences[-1] = f"{sentences[-1]} {piece.strip()}"
        else:
            sentences.append(piece.strip())
    return sentences


def word_windows(text: str, size: int, min_words: int) -> list[str]:
    """Consecutive windows of `size` words; a last window shorter than `min_words` joins the one before."""
    words = text.split()
    windows = [words[i : i + size] for i in range(0, len(words), size)]
    if len(windows) > 1 and len(windows[-1]) < min_words:
        last = windows.pop()
        windows[-1] += last
    return [" ".join(w) for w in windows]


def _continues(sentence: str) -> bool:
    """True when `sentence` ended on an abbreviation or an initial, not a real full stop."""
    last = sentence.rsplit(None, 1)[-1]
    if not last.endswith("."):
        return False
    word = last.rstrip(".").lstrip("(\"'[").lower()
    return word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha())


def crop_passage(passage: Passage, config: CropConfig) -> list[TrainingExample]:
    """Up to `queries_per_passage` examples from distinct sentences of one passage."""
    sentences = split_sentences(passage.text)
    if len(sentences) == 1:
        sentences = word_windows(sentences[0], config.window_words, config.min_words)
    eligible = [i for i, s in enumerate(sentences) if config.min_words <= len(s.split()) <= config.max_words]
    # One-sentence passages are skipped when the positive must lose the query: nothing would be left.
    if config.remove_from_positive and len(sentences) < 2:
        return []
    rng = random.Random(f"{config.seed}/{passage.docid}")
    picked = rng.sample(eligible, min(config.queries_per_passage, len(eligible)))
    examples = []
    for j, i in enumerate(picked):
        positive = passage
        if config.remove_from_positive:
            positive = Passage(passage.docid, passage.title, " ".join(sentences[:i] + sentences[i + 1 :]))
        examples.append(TrainingExample(f"{passage.docid}-crop{j}", sentences[i], [positive], []))
    return examples


def crop_queries(passages: Iterable[Passage], config: CropConfig = CropConfig()) -> Iterator[TrainingExample]:
    for passage in passages:
        yield from crop_passage(passage, config)


def crop_corpus(corpus: str | Path, out: str | Path, config: CropConfig = CropConfig(), limit: int | None = None) -> int:
    """Write cropped-sentence examples for the first `limit` documents; returns how many."""
    return write_examples(out, crop_queries(load_passages(corpus, limit), config))

"""Title queries: a document's title is a pseudo-query for its body.

A title is short and names what its document is about, closer to a search query than most of the
document's own sentences; title-body pairs are a staple of unsupervised retrieval pretraining (E5's
and GTE's web pairs). The positive is the body without its title, so the pair cannot be solved by
string matching. Documents without a title, or with a title too short to be a query, give nothing,
so a corpus without titles gets no examples from this source.
"""
from __future__ import annotations

from typing import Iterable, Iterator

from ..data import Passage, TrainingExample

MIN_WORDS = 3  # a shorter title ("Rain", "Tides") names a topic, not a query


def title_example(passage: Passage, min_words: int = MIN_WORDS) -> TrainingExample | None:
    """The (title, body) pair of one passage, or None when either is too short to train on."""
    words = passage.title.split()
    if len(words) < min_words or len(passage.text.split()) < min_words:
        return None
    return TrainingExample(f"{passage.docid}-title", " ".join(words), [Passage(passage.docid, "", passage.text)], [])


def title_queries(passages: Iterable[Passage], min_words: int = MIN_WORDS) -> Iterator[TrainingExample]:
    for passage in passages:
        example = title_example(passage, min_words)
        if example is not None:
            yield example

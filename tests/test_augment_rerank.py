"""LLM reranking: the permutation parser survives malformed output; labels come from the LLM's order."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.augment.rerank import RerankConfig, label_from_order, parse_permutation, relevance_scores
from trainer.data import Passage, TrainingExample


@pytest.mark.parametrize(
    "text, n, expected",
    [
        ("[4] > [2] > [1] > [3]", 4, [3, 1, 0, 2]),
        ("[2] > [3]", 4, [1, 2, 0, 3]),  # missing ones appended in original order
        ("[2] > [2] > [1] > [2]", 3, [1, 0, 2]),  # repeats: first mention counts
        ("[7] > [0] > [3] > [-1] > [12]", 4, [2, 0, 1, 3]),  # out of range ignored
        ("I cannot rank these passages.", 3, [0, 1, 2]),  # garbage: identity
        ("", 2, [0, 1]),
        ("3 > 1 > 2", 3, [2, 0, 1]),  # bare numbers when nothing is bracketed
        ("Ranking: [ 3 ]>[1] , then [2]. Passage [3] is best.", 3, [2, 0, 1]),
        ("[2] > [1] > [3] > [1", 3, [1, 0, 2]),  # cut off mid-answer
        ("[1] mentions 1990 and [2]", 2, [0, 1]),  # brackets win over stray numbers in prose
        ("[3] > [1]", 0, []),
    ],
)
def test_parse_permutation(text, n, expected):
    assert parse_permutation(text, n) == expected


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("[]> 0123456789abc,-\n")), max_size=80), st.integers(0, 25))
def test_parse_permutation_always_a_permutation(text, n):
    assert sorted(parse_permutation(text, n)) == list(range(n))


def _passages(n: int) -> list[Passage]:
    return [Passage(f"d{i}", "", f"text {i}") for i in range(n)]


def test_label_from_order_takes_top1_and_band():
    ranked = _passages(20)
    example = TrainingExample("q", "query", [], [])
    labelled = label_from_order(example, ranked, RerankConfig(negative_ranks=(10, 20)))
    assert labelled.positives == [ranked[0]]
    assert labelled.negatives == ranked[9:20]
    # A passage labelled positive in the input never becomes a negative.
    example = TrainingExample("q", "query", [Passage("d12", "", "text 12")], [])
    labelled = label_from_order(example, ranked, RerankConfig(positive_rank=2, negative_ranks=(10, 14)))
    assert labelled.positives == [ranked[1]]
    assert [p.docid for p in labelled.negatives] == ["d9", "d10", "d11", "d13"]
    assert label_from_order(example, ranked[:5], RerankConfig()) is None  # nothing in ranks 10-20


def test_relevance_scores_sum_spellings():
    p = torch.tensor([[0.3, 0.1, 0.2, 0.05]]).log()  # yes, Yes, no, No
    assert relevance_scores(p).item() == pytest.approx(math.log(0.4 / 0.25))


def test_config_checks():
    with pytest.raises(ValueError, match="method"):
        RerankConfig(method="pairwise")
    with pytest.raises(ValueError, match="ranks must lie"):
        RerankConfig(positive_rank=21)

"""Token-budget batching: every text once, within the budget and the padding cap."""
import numpy as np
import pytest

from dramasearch.batching import token_budget_batches


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("max_padding", [0.0, 0.25, 1.0])
def test_batches_cover_every_text_within_budget_and_padding_cap(seed, max_padding):
    rng = np.random.default_rng(seed)
    lengths = [int(n) for n in rng.integers(1, 300, size=int(rng.integers(1, 200)))]
    budget = int(rng.integers(200, 5000))
    batches = token_budget_batches(lengths, budget, max_batch=32, max_padding=max_padding)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        sizes = [lengths[i] for i in batch]
        assert sizes == sorted(sizes, reverse=True)
        assert len(batch) <= 32
        if len(batch) > 1:
            assert len(batch) * sizes[0] <= budget
            assert len(batch) * sizes[0] <= (1 + max_padding) * sum(sizes) + 1e-9


def test_mixed_query_lengths_are_split_instead_of_padded_to_the_longest():
    # One long query among short ones: padding all to 64 tokens would triple the work.
    batches = token_budget_batches([64, 20, 22, 21, 19, 10, 9], budget=8192)
    assert batches == [[0], [2, 3, 1, 4, 5], [6]]
    assert token_budget_batches([5] * 10, budget=8192) == [list(range(10))]  # equal lengths: one batch


def test_a_text_longer_than_the_budget_gets_its_own_batch():
    assert token_budget_batches([100, 3], budget=50) == [[0], [1]]
    with pytest.raises(ValueError, match="budget"):
        token_budget_batches([1], budget=0)
    with pytest.raises(ValueError, match="max_padding"):
        token_budget_batches([1], budget=10, max_padding=-1)

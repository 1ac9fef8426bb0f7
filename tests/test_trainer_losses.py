"""The Matryoshka InfoNCE loss equals sentence-transformers' MatryoshkaLoss(MultipleNegativesRankingLoss).

The reference is sentence-transformers itself, fed the same precomputed embeddings through a
tiny module whose forward returns them; losses and gradients with respect to the embeddings
must agree.
"""
from __future__ import annotations

import pytest
import torch

from trainer.losses import MatryoshkaInfoNCE, info_nce
from trainer_helpers import precomputed_sentence_transformer

B, NEG, D = 4, 3, 16
DIMS, WEIGHTS, TEMPERATURE = (16, 8, 4), (1.0, 0.5, 0.25), 0.05


def _embeddings(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    queries = torch.randn(B, D, generator=g, dtype=torch.float64)
    columns = [torch.randn(B, D, generator=g, dtype=torch.float64) for _ in range(1 + NEG)]  # positive, negatives
    return queries, columns


def _grouped(columns):
    """sentence-transformers columns (positive, neg_1..neg_n) -> our layout: per query, positive then negatives."""
    return torch.stack(columns, dim=1).reshape(-1, D)


def _reference(queries, columns, dims, weights):
    from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss, MultipleNegativesRankingLoss

    model = precomputed_sentence_transformer(D)
    loss = MatryoshkaLoss(model, MultipleNegativesRankingLoss(model, scale=1 / TEMPERATURE), list(dims), list(weights))
    return loss([{"emb": queries}, *({"emb": c} for c in columns)], labels=None)


def test_equals_sentence_transformers_loss_and_gradients():
    q, cols = _embeddings()
    q_ref, cols_ref = q.clone().requires_grad_(), [c.clone().requires_grad_() for c in cols]
    expected = _reference(q_ref, cols_ref, DIMS, WEIGHTS)
    expected.backward()

    q_ours, p_ours = q.clone().requires_grad_(), _grouped(cols).requires_grad_()
    got = MatryoshkaInfoNCE(TEMPERATURE, DIMS, WEIGHTS)(q_ours, p_ours)
    got.backward()

    assert abs(got.item() - expected.item()) < 1e-10
    assert torch.allclose(q_ours.grad, q_ref.grad, atol=1e-12)
    assert torch.allclose(p_ours.grad, _grouped([c.grad for c in cols_ref]), atol=1e-12)


def test_no_dims_is_plain_info_nce_equal_to_multiple_negatives_ranking():
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    q, cols = _embeddings(1)
    expected = MultipleNegativesRankingLoss(precomputed_sentence_transformer(D), scale=1 / TEMPERATURE)(
        [{"emb": q}, *({"emb": c} for c in cols)], labels=None)
    assert abs(MatryoshkaInfoNCE(TEMPERATURE)(q, _grouped(cols)).item() - expected.item()) < 1e-10


def test_every_dim_contributes_with_its_weight():
    """Raising one dim's weight adds exactly that dim's own (distinct, nonzero) InfoNCE term."""
    q, cols = _embeddings(2)
    p = _grouped(cols)
    base = MatryoshkaInfoNCE(TEMPERATURE, DIMS, WEIGHTS)(q, p).item()
    terms = []
    for i, dim in enumerate(DIMS):
        term = info_nce(q[:, :dim], p[:, :dim], TEMPERATURE).item()
        bumped = list(WEIGHTS)
        bumped[i] += 1.0
        assert MatryoshkaInfoNCE(TEMPERATURE, DIMS, tuple(bumped))(q, p).item() == pytest.approx(base + term, abs=1e-10)
        terms.append(term)
    assert all(t > 0 for t in terms) and len({round(t, 8) for t in terms}) == len(DIMS)


def test_components_past_the_smallest_dim_get_gradient_only_from_larger_dims():
    q, cols = _embeddings(3)
    p = _grouped(cols).requires_grad_()
    MatryoshkaInfoNCE(TEMPERATURE, (4,), (1.0,))(q, p).backward()
    assert p.grad[:, 4:].abs().max() == 0 and p.grad[:, :4].abs().max() > 0
    p.grad = None
    MatryoshkaInfoNCE(TEMPERATURE, (4, 16), (1.0, 1.0))(q, p).backward()
    assert p.grad[:, 4:].abs().max() > 0


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="temperature"):
        MatryoshkaInfoNCE(0.0)
    with pytest.raises(ValueError, match="one weight per dim"):
        MatryoshkaInfoNCE(0.05, (8, 4), (1.0,))
    with pytest.raises(ValueError, match="exceed the model's embedding dimension 16"):
        MatryoshkaInfoNCE(0.05, (32, 8)).check_dim(16)
    q, cols = _embeddings()
    with pytest.raises(ValueError, match="equal groups"):
        info_nce(q, _grouped(cols)[:-1], 0.05)

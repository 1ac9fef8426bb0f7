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


# Distillation: each query's own hard negatives judged by a teacher (KL), not as wrong answers ----------


def _distilled_by_hand(q, p, teacher, temperature):
    """The loss of losses.distilled_info_nce written out row by row, from its definition."""
    q = q / q.norm(dim=1, keepdim=True)
    p = p / p.norm(dim=1, keepdim=True)
    n, group, k = q.shape[0], p.shape[0] // q.shape[0], teacher.shape[1]
    total = 0.0
    for i in range(n):
        logits = p @ q[i] / temperature
        # own teacher-scored negatives (group positions 1..k-1) left out; unscored ones stay as wrong answers
        keep = [j for j in range(p.shape[0]) if j // group != i or j % group == 0 or j % group >= k]
        total = total - torch.log_softmax(logits[keep], dim=0)[keep.index(i * group)]
        student = torch.softmax(logits[i * group : i * group + k], dim=0)
        target = torch.softmax(teacher[i] / temperature, dim=0)
        total = total + (target * (target.log() - student.log())).sum()
    return total / n


def test_distilled_loss_equals_its_definition_and_sums_over_dims():
    from trainer.losses import distilled_info_nce

    q, cols = _embeddings(2)
    p = _grouped(cols)
    teacher = torch.randn(B, 1 + NEG, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 0.2
    got = distilled_info_nce(q, p, teacher, TEMPERATURE)
    assert abs(got.item() - _distilled_by_hand(q, p, teacher, TEMPERATURE).item()) < 1e-9
    total = MatryoshkaInfoNCE(TEMPERATURE, DIMS, WEIGHTS)(q, p, teacher)
    by_dim = sum(w * distilled_info_nce(q[:, :d], p[:, :d], teacher, TEMPERATURE) for d, w in zip(DIMS, WEIGHTS))
    assert abs(total.item() - by_dim.item()) < 1e-9
    # the positive and 1 scored negative under the KL, the group's other 2 negatives under the hard label
    partial = distilled_info_nce(q, p, teacher[:, :2], TEMPERATURE)
    assert abs(partial.item() - _distilled_by_hand(q, p, teacher[:, :2], TEMPERATURE).item()) < 1e-9
    assert abs(partial.item() - got.item()) > 1e-3
    for bad in (teacher[:, :0], teacher[:2], torch.cat([teacher, teacher[:, :1]], dim=1)):
        with pytest.raises(ValueError, match="one teacher row per query"):
            distilled_info_nce(q, p, bad, TEMPERATURE)


def test_a_negative_the_teacher_rates_high_is_pulled_closer_not_pushed_away():
    """The point of distillation: plain InfoNCE pushes a hard negative away from its query; under a teacher
    that scores it above the positive, the gradient moves it towards the query instead. One query, so no
    other query's in-batch term moves the same passage."""
    from trainer.losses import distilled_info_nce

    q, cols = _embeddings(4)
    q, p = q[:1], _grouped(cols)[: 1 + NEG].clone().requires_grad_()
    teacher = torch.zeros(1, 1 + NEG, dtype=torch.float64)
    teacher[0, 1] = 0.5  # the first hard negative: a false negative, says the teacher
    distilled_info_nce(q, p, teacher, TEMPERATURE).backward()
    pulled = p.grad.clone()
    p.grad = None
    info_nce(q, p, TEMPERATURE).backward()
    # d loss / d p . q < 0: a small gradient step raises the passage's similarity to the query
    assert torch.dot(pulled[1], q[0]) < 0 < torch.dot(p.grad[1], q[0])
    assert all(torch.dot(pulled[j], q[0]) > 0 for j in (2, 3))  # the others, rated low, still pushed away


def test_an_unscored_negative_stays_under_the_hard_label():
    """With a teacher for the positive and first negative only, the group's unscored negatives get
    exactly the gradient plain InfoNCE would give them if it saw the same candidates: pushed away, however
    the teacher rates the scored one."""
    from trainer.losses import distilled_info_nce

    q, cols = _embeddings(5)
    q, p = q[:1], _grouped(cols)[: 1 + NEG].clone().requires_grad_()
    teacher = torch.tensor([[0.0, 0.5]], dtype=torch.float64)  # the scored negative: a false negative
    distilled_info_nce(q, p, teacher, TEMPERATURE).backward()
    assert torch.dot(p.grad[1], q[0]) < 0  # pulled closer, as the teacher says
    assert all(torch.dot(p.grad[j], q[0]) > 0 for j in (2, 3))  # pushed away by the hard label
    unscored = p.grad[2:].clone()
    p.grad = None
    keep = torch.tensor([0, 2, 3])  # the hard label's candidates: positive and the unscored negatives
    info_nce(q, p[keep], TEMPERATURE).backward()
    assert torch.allclose(unscored, p.grad[2:], atol=1e-12)

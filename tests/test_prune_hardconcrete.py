"""Hard-concrete gates: formulas against direct computations, and masks folded into a smaller model.

The closed forms (P(z > 0), expected L0, the Lagrangian) are checked against Monte Carlo
draws and against the stretched-concrete CDF written out here in plain `math`; applying
deterministic masks must give a checkpoint whose outputs equal the hook-masked model's.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dramasearch.models import load_encoder
from test_llama_shapes import TEXTS, save_tiny_checkpoint, tiny_config
from trainer.prune.hardconcrete import (
    LIMIT_HIGH, LIMIT_LOW, TEMPERATURE, HardConcrete, Lagrangian, LlamaMasks, masked, masks_to_plan, ramped_target,
)
from trainer.prune.shapes import ShapedLlamaForCausalLM, prune_llama, save_pruned

LOG_ALPHAS = [-4.0, -2.0, -0.5, 0.0, 0.7, 2.0, 5.0]


def gate_with(log_alphas) -> HardConcrete:
    gate = HardConcrete((len(log_alphas),))
    with torch.no_grad():
        gate.log_alpha.copy_(torch.tensor(log_alphas))
    return gate


def stretched_concrete_cdf(x: float, log_alpha: float) -> float:
    """P(z <= x) for 0 <= x < 1, from the definition: z <= x iff s <= (x - l) / (r - l), s = sigmoid((L + a) / T)."""
    s = (x - LIMIT_LOW) / (LIMIT_HIGH - LIMIT_LOW)
    logistic_threshold = TEMPERATURE * math.log(s / (1 - s)) - log_alpha  # L <= this
    return 1 / (1 + math.exp(-logistic_threshold))


def test_prob_nonzero_equals_one_minus_cdf_at_zero():
    got = gate_with(LOG_ALPHAS).prob_nonzero().detach().numpy()
    want = [1 - stretched_concrete_cdf(0.0, a) for a in LOG_ALPHAS]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_sampling_matches_closed_forms_by_monte_carlo():
    n = 40_000
    tiled = gate_with(LOG_ALPHAS * n)  # one gate per (draw, log_alpha): n independent draws in one call
    torch.manual_seed(0)
    draws = tiled.sample().detach().view(n, len(LOG_ALPHAS))
    gate = gate_with(LOG_ALPHAS)
    assert draws.min() == 0.0 and draws.max() == 1.0  # exact zeros and ones occur
    for j, a in enumerate(LOG_ALPHAS):
        column = draws[:, j]
        p_zero, p_below_half = stretched_concrete_cdf(0.0, a), stretched_concrete_cdf(0.5, a)
        tolerance = lambda p: 5 * math.sqrt(p * (1 - p) / n) + 1e-4  # noqa: E731
        assert abs(float((column > 0).float().mean()) - (1 - p_zero)) < tolerance(p_zero)
        assert abs(float((column <= 0.5).float().mean()) - p_below_half) < tolerance(p_below_half)
    expected_l0 = float(gate.expected_l0().detach())
    assert abs(float((draws > 0).float().sum(dim=1).mean()) - expected_l0) < 0.02
    assert expected_l0 == pytest.approx(sum(1 - stretched_concrete_cdf(0.0, a) for a in LOG_ALPHAS), rel=1e-6)


def test_initial_gates_are_open_and_deterministic_gates_keep_expected_count():
    fresh = HardConcrete((10,))
    assert float(fresh.prob_nonzero().detach().min()) > 0.998
    fresh.eval()
    assert torch.equal(fresh(), torch.ones(10))  # sigmoid(5) * 1.2 - 0.1 > 1, clipped

    gate = gate_with(LOG_ALPHAS).eval()
    values = gate().detach()
    keep = round(sum(1 - stretched_concrete_cdf(0.0, a) for a in LOG_ALPHAS))
    kept = sorted(range(len(LOG_ALPHAS)), key=lambda j: -LOG_ALPHAS[j])[:keep]
    for j, a in enumerate(LOG_ALPHAS):
        soft = min(1.0, max(0.0, 1 / (1 + math.exp(-a)) * (LIMIT_HIGH - LIMIT_LOW) + LIMIT_LOW))
        assert float(values[j]) == pytest.approx(soft if j in kept else 0.0, abs=1e-6)


def test_samples_carry_gradient_to_log_alpha():
    gate = gate_with(LOG_ALPHAS)
    torch.manual_seed(0)
    gate.sample().sum().backward()
    assert gate.log_alpha.grad is not None and float(gate.log_alpha.grad.abs().sum()) > 0


def test_expected_sizes_and_lagrangian_equal_direct_sums():
    model = ShapedLlamaForCausalLM(tiny_config(vocab_size=100, num_hidden_layers=2))
    masks = LlamaMasks(model)
    torch.manual_seed(3)
    with torch.no_grad():
        for gate in masks.gates.values():
            gate.log_alpha.normal_(0.0, 2.0)
    p = lambda kind: [[1 - stretched_concrete_cdf(0.0, float(a)) for a in row] for row in  # noqa: E731
                      masks.gates[kind].log_alpha.detach().reshape(-1, masks.gates[kind].log_alpha.shape[-1])]
    direct = {
        "layers": sum(p("layers")[0]),
        "heads": sum(sum(row) * 2 for row in p("heads")) / 2,  # 2 query heads per kv group, mean over 2 layers
        "intermediate": sum(sum(row) for row in p("intermediate")) / 2,
        "hidden": sum(p("hidden")[0]),
    }
    for kind, value in direct.items():
        assert float(masks.expected_size(kind).detach()) == pytest.approx(value, rel=1e-5)

    lagrangian = Lagrangian(list(direct))
    with torch.no_grad():
        for k, (l1, l2) in zip(direct, [(0.5, 2.0), (-1.0, 0.3), (0.1, 0.0), (2.0, 1.0)]):
            lagrangian.lambda1[k].fill_(l1)
            lagrangian.lambda2[k].fill_(l2)
    targets = {"layers": 1.0, "heads": 2.0, "intermediate": 64.0, "hidden": 48.0}
    full = {"layers": 2, "heads": 4, "intermediate": 128, "hidden": 64}
    want = 0.0
    for k, (l1, l2) in zip(direct, [(0.5, 2.0), (-1.0, 0.3), (0.1, 0.0), (2.0, 1.0)]):
        gap = (direct[k] - targets[k]) / full[k]
        want += l1 * gap + l2 * gap * gap
    assert float(lagrangian(masks, targets).detach()) == pytest.approx(want, rel=1e-5)


def test_target_ramps_linearly_over_warmup():
    assert ramped_target(128, 64, 0, 10) == 128
    assert ramped_target(128, 64, 5, 10) == 96
    assert ramped_target(128, 64, 25, 10) == 64
    assert ramped_target(128, 64, 0, 0) == 64


def _random_deterministic_masks(model, seed: int) -> dict[str, torch.Tensor]:
    masks = LlamaMasks(model)
    torch.manual_seed(seed)
    with torch.no_grad():
        for gate in masks.gates.values():
            gate.log_alpha.normal_(1.0, 2.5)
    return {k: v.detach() for k, v in masks.eval().values().items()}


def test_applied_masks_give_a_smaller_encoder_equal_to_the_masked_one(tmp_path):
    folder = save_tiny_checkpoint(tmp_path / "tiny", num_hidden_layers=4)
    enc = load_encoder(str(folder), device="cpu", dtype=torch.float32)
    values = _random_deterministic_masks(enc.model, seed=5)
    assert 0 < int((values["hidden"] == 0).sum()) and 0 < int((values["heads"] == 0).sum())
    assert 0 < float(values["hidden"][values["hidden"] > 0].min()) < 1  # soft values get folded in
    with masked(enc.model, values):
        want = enc.encode_documents(TEXTS)
    out = save_pruned(prune_llama(enc.model, masks_to_plan(enc.model, values)), tmp_path / "pruned", folder)
    small = load_encoder(str(out), device="cpu", dtype=torch.float32)
    kept = (values["hidden"] != 0).numpy()
    assert small.dim == int(kept.sum())
    np.testing.assert_allclose(small.encode_documents(TEXTS), want[:, kept], atol=2e-5)
    np.testing.assert_array_equal(want[:, ~kept], 0.0)


def test_applied_masks_give_a_smaller_causal_lm_with_equal_logits():
    torch.manual_seed(2)
    lm = ShapedLlamaForCausalLM(tiny_config(vocab_size=200, num_hidden_layers=4, tie_word_embeddings=True)).eval()
    values = _random_deterministic_masks(lm, seed=7)
    values["layers"][1] = 0.0  # a whole layer goes
    ids = torch.tensor([[3, 14, 15, 92, 65, 35], [8, 9, 7, 9, 3, 2]])
    with torch.no_grad(), masked(lm, values):
        want = lm(input_ids=ids).logits
    small = prune_llama(lm, masks_to_plan(lm, values))
    assert small.config.num_hidden_layers <= 3
    assert not small.config.tie_word_embeddings  # soft hidden values are folded into the embeddings only
    with torch.no_grad():
        torch.testing.assert_close(small(input_ids=ids).logits, want, atol=2e-5, rtol=1e-4)

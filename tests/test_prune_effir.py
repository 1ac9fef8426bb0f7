"""EffiR: redundancy scores and neuron importance equal a hand-written forward pass; pruning follows them.

The reference runs the tiny Llama one text at a time with the attention, GQA, residual and
MLP math written out here (only RMSNorm modules and rotary tables are borrowed), so batching,
padding and hook placement in `calibrate` are all checked against it.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from dramasearch.errors import UsageError
from dramasearch.models import load_encoder
from test_llama_shapes import TEXTS, plan_as_gates, save_tiny_checkpoint
from trainer.prune.effir import calibrate, effir_plan, effir_prune
from trainer.prune.hardconcrete import masked
from trainer.prune.shapes import prune_llama


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-effir"), seed=4)


@pytest.fixture(scope="module")
def enc(tiny):
    return load_encoder(str(tiny), device="cpu", dtype=torch.float32, max_length=32)


def hand_calibration(model, id_lists):
    """Mean cos(h, h + F(norm(h))) per sub-layer and mean |act| * ||down column|| per neuron, by hand."""
    c = model.config
    heads, kv, hd = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    n_layers = c.num_hidden_layers
    cos_sum = {"attention": [0.0] * n_layers, "mlp": [0.0] * n_layers}
    act_sum = [torch.zeros(c.intermediate_size) for _ in range(n_layers)]
    tokens = 0
    with torch.no_grad():
        for ids in id_lists:
            t = len(ids)
            x = model.embed_tokens.weight[ids]
            cos, sin = model.rotary_emb(x[None], torch.arange(t)[None])
            for i, layer in enumerate(model.layers):
                attn = layer.self_attn
                a = layer.input_layernorm(x)
                q = (a @ attn.q_proj.weight.T).view(t, heads, hd).transpose(0, 1)[None]
                k = (a @ attn.k_proj.weight.T).view(t, kv, hd).transpose(0, 1)[None]
                v = (a @ attn.v_proj.weight.T).view(t, kv, hd).transpose(0, 1)
                q, k = apply_rotary_pos_emb(q, k, cos, sin)
                k = k[0].repeat_interleave(heads // kv, dim=0)
                v = v.repeat_interleave(heads // kv, dim=0)
                weights = torch.softmax(q[0] @ k.transpose(1, 2) / math.sqrt(hd), dim=-1)  # every token sees all
                attended = (weights @ v).transpose(0, 1).reshape(t, heads * hd) @ attn.o_proj.weight.T
                cos_sum["attention"][i] += float(F.cosine_similarity(x, x + attended, dim=-1).sum())
                x = x + attended
                m = layer.post_attention_layernorm(x)
                act = F.silu(m @ layer.mlp.gate_proj.weight.T) * (m @ layer.mlp.up_proj.weight.T)
                act_sum[i] += act.abs().sum(dim=0)
                out = act @ layer.mlp.down_proj.weight.T
                cos_sum["mlp"][i] += float(F.cosine_similarity(x, x + out, dim=-1).sum())
                x = x + out
            tokens += t
    importance = [s / tokens * layer.mlp.down_proj.weight.norm(dim=0) for s, layer in zip(act_sum, model.layers)]
    return ({k: [s / tokens for s in v] for k, v in cos_sum.items()}, importance, tokens)


def test_calibration_equals_hand_computation(enc):
    texts = TEXTS + ["A longer passage about proteins and cells. " * 5]  # cut at max_length=32
    scores, importance, tokens = hand_calibration(enc.model, enc.tokenize(texts))
    got = calibrate(enc, texts, batch_tokens=64)  # several padded batches
    assert got.tokens == tokens
    np.testing.assert_allclose(got.attention, scores["attention"], atol=1e-5)
    np.testing.assert_allclose(got.mlp, scores["mlp"], atol=1e-5)
    for mine, theirs in zip(got.neuron_importance, importance):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6)


def test_dropping_nothing_leaves_the_model_exactly_unchanged(enc):
    calibration = calibrate(enc, TEXTS)
    pruned = prune_llama(enc.model, effir_plan(enc.model, calibration, drop_mlp=0, drop_attention=0, mlp_keep=1.0))
    ids = torch.tensor(enc.tokenize(TEXTS[:1]))
    with torch.no_grad():
        assert torch.equal(pruned(input_ids=ids).last_hidden_state, enc.model(input_ids=ids).last_hidden_state)


def test_plan_drops_the_most_redundant_and_keeps_the_most_important(enc):
    calibration = calibrate(enc, TEXTS)
    plan = effir_plan(enc.model, calibration, drop_mlp=1, drop_attention=1, mlp_keep=0.25)
    top_mlp = int(np.argmax(calibration.mlp))
    top_attention = int(np.argmax(calibration.attention))
    assert plan.layers[top_mlp].neurons == [] and plan.layers[top_attention].groups == []
    for i, keep in enumerate(plan.layers):
        if i != top_mlp:
            order = torch.argsort(calibration.neuron_importance[i], descending=True)
            assert keep.neurons == sorted(order[:32].tolist())
    with pytest.raises(UsageError, match="cannot drop 4 mlp sub-layers: the model has 3") as raised:
        calibration.most_redundant("mlp", 4)
    assert raised.value.argument == "drop_mlp"


def test_effir_prune_writes_a_smaller_encoder_equal_to_the_masked_one(enc, tiny, tmp_path):
    report = effir_prune(tiny, tmp_path / "effir", TEXTS, drop_mlp=1, mlp_keep=0.5, max_length=32)
    assert report.parameters_after < report.parameters_before
    assert report.tokens_per_s_before > 0 and report.tokens_per_s_after > 0
    assert [s["intermediate"] for s in report.layer_shapes] == [0 if i in report.dropped_mlp else 64 for i in range(3)]
    assert report.dropped_mlp == [int(np.argmax(report.mlp_scores))]

    plan = effir_plan(enc.model, calibrate(enc, TEXTS), drop_mlp=1, mlp_keep=0.5)
    with masked(enc.model, plan_as_gates(plan, enc.model.config)):
        want = enc.encode_documents(TEXTS)
    small = load_encoder(str(tmp_path / "effir"), device="cpu", dtype=torch.float32, max_length=32)
    np.testing.assert_allclose(small.encode_documents(TEXTS), want, atol=2e-5)


def test_effir_refuses_to_overwrite_its_source(tiny):
    with pytest.raises(UsageError, match="would replace the model it comes from"):
        effir_prune(tiny, tiny, TEXTS, drop_mlp=1, max_length=32)
    assert load_encoder(str(tiny), device="cpu", dtype=torch.float32).model.config.num_hidden_layers == 3

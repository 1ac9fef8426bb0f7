"""Uneven Llama shapes (config `layer_shapes`): stock behaviour untouched, pruned checkpoints load and run.

A tiny random Llama (hidden 64, GQA 4/2 heads, Llama-3 tokenizer) is pruned by hand:
a layer without attention, one without MLP, one key/value group and some neurons and
hidden channels cut. The reference is always the unpruned model run with the same
structures masked out by hooks (trainer/prune/hardconcrete.masked), so the checks are
"cutting weights = zeroing them", through the real `load_encoder` path.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import transformers
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from conftest import LLAMA3_TOKENIZER, shared_path
from dramasearch.errors import ModelLoadError
from dramasearch.llama_shapes import LayerShape, ShapedDecoderLayer, current_shapes
from dramasearch.models import load_encoder
from trainer.prune.hardconcrete import masked
from trainer.prune.shapes import ShapedLlamaForCausalLM, full_plan, prune_llama, save_pruned

TEXTS = ["Bidirectional attention for retrieval.", "x", "Le café est une boisson. " * 6, "意大利首都是哪里？"]


def tiny_config(**overrides) -> transformers.LlamaConfig:
    kwargs = dict(vocab_size=128256, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  bos_token_id=128000, eos_token_id=128001, rope_theta=500000.0)
    kwargs.update(overrides)
    return transformers.LlamaConfig(**kwargs)


def save_tiny_checkpoint(folder, seed: int = 0, **overrides):
    """A seeded random LlamaModel as safetensors with the real Llama-3 tokenizer beside it."""
    tokenizer_dir = shared_path("models", LLAMA3_TOKENIZER.name)
    torch.manual_seed(seed)
    transformers.LlamaModel(tiny_config(**overrides)).save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def enc(tiny):
    return load_encoder(str(tiny), device="cpu", dtype=torch.float32)


def hand_plan(model):
    """Layer 0 loses its MLP, layer 1 its attention, layer 2 one kv group and half its neurons; 48 hidden kept."""
    plan = full_plan(model)
    plan.layers[0].neurons = []
    plan.layers[1].groups = []
    plan.layers[2].groups = [1]
    plan.layers[2].neurons = list(range(0, 128, 2))
    plan.hidden = list(range(8, 56))
    return plan


def plan_as_gates(plan, config) -> dict[str, torch.Tensor]:
    """The same pruning written as 0/1 gates for the hook-masked reference."""
    heads = torch.zeros(config.num_hidden_layers, config.num_key_value_heads)
    neurons = torch.zeros(config.num_hidden_layers, config.intermediate_size)
    for i, keep in enumerate(plan.layers):
        heads[i, keep.groups] = 1.0
        neurons[i, keep.neurons] = 1.0
    hidden = torch.zeros(config.hidden_size)
    hidden[plan.hidden] = 1.0
    return {"heads": heads, "intermediate": neurons, "hidden": hidden}


def test_config_without_layer_shapes_runs_exactly_as_stock_llama(enc, tiny):
    """The stock layers are kept, and outputs equal a plain LlamaModel made bidirectional by hand."""
    assert all(type(layer) is LlamaDecoderLayer for layer in enc.model.layers)
    reference = transformers.LlamaModel.from_pretrained(tiny, attn_implementation="sdpa").eval()
    reference.config.is_causal = False
    for layer in reference.layers:
        layer.self_attn.is_causal = False
    ids = torch.tensor([[128000, 791, 5679, 128001], [128000, 87, 128001, 128001]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    with torch.no_grad():
        got = enc.model(input_ids=ids, attention_mask=mask).last_hidden_state
        want = reference(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.equal(got, want)


def test_keeping_everything_changes_nothing(enc):
    pruned = prune_llama(enc.model, full_plan(enc.model))
    ids = torch.tensor([[128000, 791, 5679, 128001]])
    with torch.no_grad():
        assert torch.equal(pruned(input_ids=ids).last_hidden_state, enc.model(input_ids=ids).last_hidden_state)
    assert pruned.config.layer_shapes == [LayerShape(4, 2, 128).to_dict()] * 3


def test_pruned_checkpoint_reloads_and_equals_masked_model(enc, tiny, tmp_path):
    plan = hand_plan(enc.model)
    pruned = prune_llama(enc.model, plan)
    out = save_pruned(pruned, tmp_path / "pruned", tokenizer_from=tiny)
    config = json.loads((out / "config.json").read_text())
    assert config["hidden_size"] == 48 and config["head_dim"] == 16
    assert config["layer_shapes"] == [
        {"heads": 4, "kv_heads": 2, "intermediate": 0},
        {"heads": 0, "kv_heads": 0, "intermediate": 128},
        {"heads": 2, "kv_heads": 1, "intermediate": 64},
    ]
    small = load_encoder(str(out), device="cpu", dtype=torch.float32)
    assert all(isinstance(layer, ShapedDecoderLayer) for layer in small.model.layers)
    assert small.model.layers[1].self_attn is None and small.model.layers[0].mlp is None
    assert current_shapes(small.model) == [LayerShape(**s) for s in config["layer_shapes"]]
    size = lambda folder: sum(p.stat().st_size for p in folder.glob("*.safetensors"))  # noqa: E731
    assert size(out) < size(tiny)

    with masked(enc.model, plan_as_gates(plan, enc.model.config)):
        want = enc.encode_documents(TEXTS)
    got = small.encode_documents(TEXTS)
    assert got.shape == (len(TEXTS), 48)
    np.testing.assert_allclose(got, want[:, plan.hidden], atol=2e-5)
    assert np.abs(want - enc.encode_documents(TEXTS)).max() > 1e-2, "the pruning must matter"


def test_uneven_causal_lm_generates_and_round_trips(tmp_path):
    """Layer 0 without attention: the KV cache must still count positions (cache indices skip it)."""
    torch.manual_seed(1)
    lm = ShapedLlamaForCausalLM(tiny_config(vocab_size=300, num_hidden_layers=3, tie_word_embeddings=True)).eval()
    plan = full_plan(lm.model)
    plan.layers[0].groups = []
    plan.layers[2].neurons = []
    plan.hidden = list(range(40))
    small = prune_llama(lm, plan)
    assert small.config.tie_word_embeddings and small.lm_head.weight is small.model.embed_tokens.weight
    prompt = torch.tensor([[5, 17, 42, 99]])
    cached = small.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0)
    uncached = small.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0, use_cache=False)
    assert cached.shape == (1, 12) and torch.equal(cached, uncached)
    small.save_pretrained(tmp_path / "lm", safe_serialization=True)
    again = ShapedLlamaForCausalLM.from_pretrained(tmp_path / "lm").eval()
    assert torch.equal(again.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0), cached)


@pytest.mark.parametrize("shapes, message", [
    ([{"heads": 4, "kv_heads": 2, "intermediate": 8}] * 2, "has 2 entries but num_hidden_layers is 3"),
    ([{"heads": 4, "kv_heads": 2, "intermediate": 8}] * 2 + [{"heads": 3, "kv_heads": 2, "intermediate": 8}],
     "layer_shapes[2]: heads=3 is not a multiple of kv_heads=2"),
    ([{"heads": 0, "kv_heads": 2, "intermediate": 8}] * 3, "layer_shapes[0]: heads=0 and kv_heads=2"),
    ([{"heads": 4, "kv_heads": 2, "intermediate": -1}] * 3, "layer_shapes[0].intermediate: must be a non-negative integer"),
    ([{"heads": 4, "kv_heads": 2, "width": 8}] * 3, "unknown fields ['width'], missing fields ['intermediate']"),
    ({"heads": 4}, "must be a list with one object per layer"),
])
def test_bad_layer_shapes_are_refused_naming_file_and_field(tiny, tmp_path, shapes, message):
    folder = tmp_path / "bad"
    shutil.copytree(tiny, folder)
    config = json.loads((folder / "config.json").read_text())
    config["layer_shapes"] = shapes
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError) as err:
        load_encoder(str(folder), device="cpu", dtype=torch.float32)
    assert str(folder / "config.json") in str(err.value) and message in str(err.value)

"""benchmarks/bench_prune_profile.py on a tiny random Llama: drops follow the table, counts follow the config.

The parameter counts are checked against sizes computed here from the config (not by
counting the pruned model's tensors again), and the dropped layers against the JSON's own
score table, so a wrong plan, a wrong kind or an off-by-one fraction all fail.
"""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from test_llama_shapes import save_tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_prune_profile", REPO / "benchmarks" / "bench_prune_profile.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def sublayer_sizes(config) -> tuple[int, int]:
    """(attention, MLP) parameters of one layer, each with the RMSNorm in front of it."""
    h, hd = config.hidden_size, config.head_dim
    attention = 2 * h * config.num_attention_heads * hd + 2 * h * config.num_key_value_heads * hd + h
    mlp = 3 * h * config.intermediate_size + h
    return attention, mlp


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-profile"), seed=7, num_hidden_layers=4)
    out = tmp_path_factory.mktemp("profile-out")
    bench = load_bench()
    bench.main(["--model", str(folder), "--corpus", str(REPO / "examples/tiny"), "--num-texts", "20",
                "--speed-texts", "6", "--repeats", "2", "--max-length", "48", "--fractions", "0,25,50",
                "--threads", str(torch.get_num_threads()),
                "--out", str(out / "profile.json"), "--figure", str(out / "profile.png")])
    config = json.loads((folder / "config.json").read_text())
    from transformers import LlamaConfig

    return json.loads((out / "profile.json").read_text()), out / "profile.png", LlamaConfig(**config)


def test_drops_are_the_highest_scores_and_remove_their_parameters(run):
    result, _, config = run
    attention, mlp = sublayer_sizes(config)
    full_params = config.num_hidden_layers * (attention + mlp) + config.hidden_size  # + final norm
    variants = {v["label"]: v for v in result["variants"]}
    assert list(variants) == ["full", "-25% mlp", "-50% mlp", "-25% attention", "-50% attention"]
    assert variants["full"]["parameters"] == full_params
    for v in result["variants"][1:]:
        n = math.floor(config.num_hidden_layers * v["percent"] / 100)
        scores = [row[v["kind"]] for row in result["layers"]]
        assert v["dropped"] == sorted(sorted(range(len(scores)), key=lambda i: -scores[i])[:n])
        size = mlp if v["kind"] == "mlp" else attention
        assert v["parameters"] == full_params - n * size
        assert v["cosine_to_full"] < 0.9999  # the output really changed
    assert variants["full"]["cosine_to_full"] == pytest.approx(1.0, abs=1e-5)


def test_speeds_are_medians_and_figure_is_small(run):
    result, figure, _ = run
    for v in result["variants"]:
        assert len(v["tokens_per_s_runs"]) == 2 and v["tokens_per_s"] == pytest.approx(sum(v["tokens_per_s_runs"]) / 2)
        assert v["speedup"] == pytest.approx(v["tokens_per_s"] / result["variants"][0]["tokens_per_s"])
    assert len(result["layers"]) == 4 and result["meta"]["num_texts"] == 20
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size < 100_000

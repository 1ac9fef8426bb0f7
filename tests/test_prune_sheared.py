"""Sheared-LLaMA pruning loop and the `prune` CLI on tiny Llamas.

The loop is checked for direction (the Lagrangian pulls every expected size from the full
shape toward its target; a sign error would leave it in place or grow it) and the final
model for its exact target shape, its equality with the masked model, and that it still
generates and loads as an encoder. The CLI runs both commands end to end.
"""
from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
import transformers
from click.testing import CliRunner

from conftest import LLAMA3_TOKENIZER, shared_path
from dramasearch.errors import DramaSearchError, UsageError
from dramasearch.models import load_encoder
from test_llama_shapes import TEXTS, save_tiny_checkpoint, tiny_config
from trainer.prune.cli import COMMANDS
from trainer.prune.hardconcrete import masked, masks_to_plan
from trainer.prune.shapes import ShapedLlamaForCausalLM, prune_llama
from trainer.prune.sheared import ShearedSettings, continue_pretraining, held_out_loss, learn_masks, lm_batches, token_windows

TARGETS = {"layers": 2, "heads": 2, "intermediate": 64, "hidden": 48}
FULL = {"layers": 3, "heads": 4, "intermediate": 128, "hidden": 64}


def random_batches(vocab: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    while True:
        ids = torch.randint(vocab, (4, 24), generator=generator)
        yield ids, torch.ones_like(ids)


@pytest.fixture()
def one_thread():
    """70 tiny steps are dominated by thread hand-offs on a busy machine: run them on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_loop_pulls_expected_shape_to_target_and_final_masks_hit_it_exactly(one_thread):
    torch.manual_seed(0)
    lm = ShapedLlamaForCausalLM(tiny_config(vocab_size=300, eos_token_id=1, bos_token_id=0))
    settings = ShearedSettings(targets=TARGETS, steps=70, warmup_steps=20, mask_lr=0.1, lagrangian_lr=3.0, model_lr=1e-3)
    masks, history = learn_masks(lm, random_batches(300), settings, log_every=10)
    start, end = history[0]["expected"], history[-1]["expected"]
    for kind, target in TARGETS.items():
        assert start[kind] > FULL[kind] - 0.05 * (FULL[kind] - target)  # gates start open (log_alpha = 5)
        assert end[kind] < FULL[kind] - 0.5 * (FULL[kind] - target), f"{kind} did not move toward its target"

    values = masks.final_values(TARGETS)
    small = prune_llama(lm, masks_to_plan(lm, values))
    assert small.config.num_hidden_layers == 2 and small.config.hidden_size == 48
    assert small.config.layer_shapes == [{"heads": 2, "kv_heads": 1, "intermediate": 64}] * 2
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad(), masked(lm, values):
        want = lm(input_ids=ids).logits
    with torch.no_grad():
        torch.testing.assert_close(small(input_ids=ids).logits, want, atol=2e-5, rtol=1e-4)


def test_unreachable_targets_are_refused():
    lm = ShapedLlamaForCausalLM(tiny_config(vocab_size=300, eos_token_id=1, bos_token_id=0))
    for targets, message, argument in [({"heads": 3}, "must be a multiple of 2", "target_heads"),
                                       ({"layers": 4}, "between 1 and the model's 3", "target_layers")]:
        with pytest.raises(UsageError, match=message) as raised:
            learn_masks(lm, random_batches(300), ShearedSettings(targets=targets, steps=1))
        assert raised.value.argument == argument


def test_lm_batches_are_bos_led_windows_with_padding_masked():
    tokenizer = transformers.AutoTokenizer.from_pretrained(shared_path("models", LLAMA3_TOKENIZER.name))
    ids, mask = next(lm_batches(tokenizer, TEXTS, max_length=8, batch_size=16, generator=torch.Generator().manual_seed(0)))
    assert ids.shape[0] == 16 and ids.shape[1] <= 8
    windows = {tuple(row[: int(m.sum())].tolist()) for row, m in zip(ids, mask)}
    first = [128000, *tokenizer(TEXTS[0], add_special_tokens=False)["input_ids"]][:8]
    all_windows = set()
    for text in TEXTS:
        full = [128000, *tokenizer(text, add_special_tokens=False)["input_ids"]]
        all_windows |= {tuple(full[i : i + 8]) for i in range(0, len(full), 8) if len(full[i : i + 8]) > 1}
    assert windows <= all_windows and tuple(first) in all_windows


@pytest.fixture()
def corpus(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"_id": str(i), "text": t}) + "\n" for i, t in enumerate(TEXTS * 3)))
    return path


def save_tiny_lm(folder):
    """A seeded random tied-embedding causal LM with the real Llama-3 tokenizer beside it."""
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(tiny_config(tie_word_embeddings=True)).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(shared_path("models", LLAMA3_TOKENIZER.name) / name, folder / name)
    return folder


def test_cli_sheared_prunes_a_causal_lm_that_generates_and_encodes(tmp_path, corpus):
    source = save_tiny_lm(tmp_path / "lm")
    args = ["prune", "sheared", str(source), "-o", str(tmp_path / "out"), "--calibration", str(corpus),
            "--target-heads", "2", "--target-intermediate", "96", "--steps", "2", "--warmup-steps", "1",
            "--max-length", "16", "--batch-size", "2"]
    result = CliRunner().invoke(_cli(), args, catch_exceptions=False)
    report = json.loads(result.stdout)
    assert report["layer_shapes"] == [{"heads": 2, "kv_heads": 1, "intermediate": 96}] * 3
    small = ShapedLlamaForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert small.generate(torch.tensor([[128000, 791]]), max_new_tokens=4, do_sample=False).shape == (1, 6)
    encoder = load_encoder(str(tmp_path / "out"), device="cpu", dtype=torch.float32)
    assert encoder.encode_documents(TEXTS).shape == (len(TEXTS), 64)


def _tokenizer():
    return transformers.AutoTokenizer.from_pretrained(shared_path("models", LLAMA3_TOKENIZER.name))


def test_held_out_loss_equals_per_window_cross_entropy_weighted_by_predicted_tokens():
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(tiny_config()).eval()
    tokenizer = _tokenizer()
    windows = token_windows(tokenizer, TEXTS, max_length=8)
    assert len(windows) > len(TEXTS)  # the long text is cut, so windows of different lengths are padded together
    total = count = 0.0
    with torch.no_grad():
        for window in windows:  # one unpadded window at a time: no mask, no padding to get wrong
            logits = model(input_ids=torch.tensor([window])).logits[0, :-1]
            total += float(torch.nn.functional.cross_entropy(logits, torch.tensor(window[1:]), reduction="sum"))
            count += len(window) - 1
    assert held_out_loss(model, tokenizer, TEXTS, max_length=8, batch_size=3) == pytest.approx(total / count, rel=1e-5)


def test_continued_pretraining_lowers_the_loss_on_its_text(one_thread):
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(tiny_config())
    tokenizer = _tokenizer()
    before = held_out_loss(model, tokenizer, TEXTS, max_length=16)
    batches = lm_batches(tokenizer, TEXTS, 16, 4, torch.Generator().manual_seed(0))
    history = continue_pretraining(model, batches, steps=20, lr=1e-3)
    after = held_out_loss(model, tokenizer, TEXTS, max_length=16)
    assert [h["step"] for h in history] == [0, 10, 19]
    assert after < before - 1.0, (before, after)


def test_cli_sheared_reports_held_out_loss_parameters_and_continues(tmp_path, corpus):
    source = save_tiny_lm(tmp_path / "lm")
    args = ["prune", "sheared", str(source), "-o", str(tmp_path / "out"), "--calibration", str(corpus),
            "--target-intermediate", "64", "--steps", "2", "--warmup-steps", "1", "--max-length", "16",
            "--batch-size", "2", "--num-texts", "8", "--eval-texts", "4", "--continue-steps", "3"]
    report = json.loads(CliRunner().invoke(_cli(), args, catch_exceptions=False).stdout)
    assert set(report["lm_loss"]) == {"full", "pruned", "continued"}
    assert [h["step"] for h in report["continue_history"]] == [0, 2]
    # 3 layers x (3 MLP matrices of 64 x 128 -> 64 x 64): the MLP neurons are what the target removes
    assert report["parameters_before"] - report["parameters_after"] == 3 * 3 * 64 * 64
    assert report["tokens_per_s_before"] > 0 and report["tokens_per_s_after"] > 0
    small = ShapedLlamaForCausalLM.from_pretrained(tmp_path / "out")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    held_out = [json.loads(line)["text"] for line in corpus.read_text().splitlines()[8:12]]
    assert held_out_loss(small, tokenizer, held_out, max_length=16) == pytest.approx(report["lm_loss"]["continued"], rel=1e-5)


@pytest.mark.parametrize("crash_at", [("masks", 3), ("continue", 0), ("continue", 2)])
def test_sheared_resumes_after_a_crash_with_the_uninterrupted_losses(tmp_path, corpus, monkeypatch, one_thread, crash_at):
    """A run killed at a checkpoint (in mask learning, right after the cut, or in continued
    pre-training) and rerun ends with the uninterrupted run's losses, shape and weights."""
    from trainer.prune import sheared_checkpoint
    from trainer.prune.sheared import sheared_prune

    source = save_tiny_lm(tmp_path / "lm")
    texts = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    settings = ShearedSettings(targets={"heads": 2, "intermediate": 64}, steps=7, warmup_steps=3, batch_size=2,
                               max_length=16, model_lr=1e-3, lagrangian_lr=1.0, continue_steps=5, continue_lr=1e-3,
                               checkpoint_every=2)
    whole = sheared_prune(source, tmp_path / "whole", texts[:8], settings, eval_texts=texts[8:12])

    real_save, saves = sheared_checkpoint.ShearedCheckpoint.save, []

    def save_then_die(self, stage, step, *args, **kwargs):  # the process dies after this checkpoint is written
        real_save(self, stage, step, *args, **kwargs)
        saves.append((stage, step))
        if (stage, step) == (crash_at[0], crash_at[1] + 1 if crash_at[0] == "masks" else crash_at[1]):
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(sheared_checkpoint.ShearedCheckpoint, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        sheared_prune(source, tmp_path / "resumed", texts[:8], settings, eval_texts=texts[8:12])
    assert (tmp_path / "resumed.sheared-work" / "checkpoint" / "state.json").is_file()
    assert not (tmp_path / "resumed").exists()
    monkeypatch.setattr(sheared_checkpoint.ShearedCheckpoint, "save", real_save)
    resumed = sheared_prune(source, tmp_path / "resumed", texts[:8], settings, eval_texts=texts[8:12])

    assert (resumed.history, resumed.continue_history, resumed.lm_loss) == (whole.history, whole.continue_history, whole.lm_loss)
    assert resumed.layer_shapes == whole.layer_shapes == [{"heads": 2, "kv_heads": 1, "intermediate": 64}] * 3
    a, b = (ShapedLlamaForCausalLM.from_pretrained(tmp_path / name).state_dict() for name in ("whole", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "resumed.sheared-work").exists()  # removed once the output is written

    other = dataclasses.replace(settings, steps=8)  # a checkpoint of other settings is refused, not mixed in
    monkeypatch.setattr(sheared_checkpoint.ShearedCheckpoint, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        sheared_prune(source, tmp_path / "third", texts[:8], settings)
    with pytest.raises(DramaSearchError, match="other settings"):
        sheared_prune(source, tmp_path / "third", texts[:8], other)


def test_cli_sheared_refuses_to_hold_out_every_document(tmp_path, corpus):
    source = save_tiny_lm(tmp_path / "lm")
    args = ["prune", "sheared", str(source), "-o", str(tmp_path / "out"), "--calibration", str(corpus),
            "--target-intermediate", "64", "--num-texts", "4", "--eval-texts", "12"]
    result = CliRunner().invoke(_cli(), args)
    assert result.exit_code == 2
    assert str(corpus) in result.output and "--eval-texts" in result.output and "too few to hold 12 out" in result.output
    assert not (tmp_path / "out").exists()


def test_cli_sheared_refuses_an_encoder_checkpoint(tmp_path, corpus):
    encoder_dir = save_tiny_checkpoint(tmp_path / "enc")  # LlamaModel weights only, untied: no LM head
    args = ["prune", "sheared", str(encoder_dir), "-o", str(tmp_path / "out"), "--calibration", str(corpus),
            "--target-layers", "2", "--steps", "1"]
    result = CliRunner().invoke(_cli(), args)
    assert isinstance(result.exception, ValueError) and "no language-modelling head" in str(result.exception)
    assert not (tmp_path / "out").exists()


def test_cli_effir_writes_a_pruned_encoder(tmp_path, corpus):
    encoder_dir = save_tiny_checkpoint(tmp_path / "enc")
    args = ["prune", "effir", str(encoder_dir), "-o", str(tmp_path / "out"), "--calibration", str(corpus),
            "--drop-mlp", "2", "--mlp-keep", "0.5", "--max-length", "32"]
    result = CliRunner().invoke(_cli(), args, catch_exceptions=False)
    report = json.loads(result.stdout)
    assert sorted(s["intermediate"] for s in report["layer_shapes"]) == [0, 0, 64]
    assert load_encoder(str(tmp_path / "out"), device="cpu", dtype=torch.float32).encode_queries(["x"]).shape == (1, 64)


def _cli():
    import click

    group = click.Group()
    for command in COMMANDS:
        group.add_command(command)
    return group

"""Mixing example files: counts from ratios by hand, unique ids, seeded."""
from __future__ import annotations

import pytest

from trainer.augment.mix import MixSource, informative_first, mix_counts, mix_examples
from trainer.data import Passage, TrainingExample, read_examples, write_examples


def test_mix_counts_by_hand():
    # Shares 0.5/0.25/0.25; the largest mix without repeats is bounded by 30 / 0.5 = 60.
    assert mix_counts([30, 100, 40], [2, 1, 1]) == [30, 15, 15]
    # 10 split 1:1:1 -> 3.33 each; one leftover goes to the first largest remainder.
    assert mix_counts([5, 5, 5], [1, 1, 1], total=10) == [4, 3, 3]
    assert mix_counts([5, 9], [0, 1]) == [0, 9]
    assert sum(mix_counts([7, 11, 13], [0.3, 0.3, 0.4], total=101)) == 101
    with pytest.raises(ValueError, match="ratios must be"):
        mix_counts([1, 2], [0, 0])
    with pytest.raises(ValueError, match="no examples"):
        mix_counts([0, 5], [1, 1], total=4)


def _file(path, prefix, n):
    write_examples(path, [TrainingExample(str(i), f"{prefix} query {i}", [Passage(f"{prefix}{i}", "", "t")], [])
                          for i in range(n)])
    return path


def test_mix_examples(tmp_path):
    a, b = _file(tmp_path / "crop.jsonl", "a", 6), _file(tmp_path / "gen.jsonl.gz", "b", 3)
    sources = [MixSource(a, 1.0), MixSource(b, 1.0)]
    assert mix_examples(sources, tmp_path / "mix.jsonl", seed=1) == [3, 3]
    mixed = list(read_examples(tmp_path / "mix.jsonl"))
    ids = [e.query_id for e in mixed]
    assert len(set(ids)) == 6 and sum(i.startswith("crop:") for i in ids) == 3 and sum(i.startswith("gen:") for i in ids) == 3
    assert {e.query for e in mixed if e.query_id.startswith("gen:")} == {f"b query {i}" for i in range(3)}
    # Same seed, same file; another seed, another order.
    mix_examples(sources, tmp_path / "again.jsonl", seed=1)
    assert (tmp_path / "again.jsonl").read_bytes() == (tmp_path / "mix.jsonl").read_bytes()
    orders = set()
    for seed in range(5):
        mix_examples(sources, tmp_path / f"s{seed}.jsonl", seed=seed)
        orders.add(tuple(e.query_id for e in read_examples(tmp_path / f"s{seed}.jsonl")))
    assert len(orders) > 1
    # Oversampling: every example of b appears before any repeats, repeats get #n.
    assert mix_examples(sources, tmp_path / "big.jsonl", total=16) == [8, 8]
    gen = [e.query_id for e in read_examples(tmp_path / "big.jsonl") if e.query_id.startswith("gen:")]
    assert len(gen) == len(set(gen)) == 8
    assert {f"gen:{i}" for i in range(3)} | {f"gen:{i}#2" for i in range(3)} < set(gen)
    assert sum(i.endswith("#3") for i in gen) == 2
    with pytest.raises(ValueError, match="labels must differ"):
        mix_examples([MixSource(a, 1), MixSource(a, 1)], tmp_path / "x.jsonl")


def test_informative_first_takes_ranks_2_to_20_then_rank_1_then_the_rest(tmp_path):
    ranks = [1, 25, 2, None, 20, 1, 7, 21, 1]
    examples = [TrainingExample(f"q{i}", "q", [Passage(f"d{i}", "", "t")], [], mined_rank=r) for i, r in enumerate(ranks)]
    picked = informative_first(examples, 6, seed=3)
    assert sorted(e.mined_rank for e in picked[:3]) == [2, 7, 20]
    assert [e.mined_rank for e in picked[3:]] == [1, 1, 1]
    assert {e.mined_rank for e in informative_first(examples, 9)[6:]} == {25, None, 21}
    # seeded within a tier: another seed can order the informative ones differently, never pick others
    orders = {tuple(e.query_id for e in informative_first(examples, 3, seed=s)) for s in range(20)}
    assert len(orders) > 1 and all(set(o) == {"q2", "q4", "q6"} for o in orders)
    # the mix keeps the rank, so adapt can count what it trains on
    path = tmp_path / "mined.jsonl"
    write_examples(path, examples)
    mix_examples([MixSource(path, 1.0, "crop")], tmp_path / "mix.jsonl")
    assert sorted(map(str, (e.mined_rank for e in read_examples(tmp_path / "mix.jsonl")))) == sorted(map(str, ranks))

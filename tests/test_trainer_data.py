"""Tevatron jsonl and HF dataset conversions: round trips, and bad input named by file:line:field."""
from __future__ import annotations

import gzip
import json

import pytest

from dramasearch.errors import InputError
from trainer.data import Passage, TrainingExample, from_dataset, read_examples, to_dataset, write_examples


def _examples() -> list[TrainingExample]:
    return [
        TrainingExample(
            "q1", "what causes rain?",
            [Passage("d1", "Rain", "Water vapour condenses into droplets.")],
            [Passage("d2", "", "Snow is frozen."), Passage("d3", "Sun", "The sun is hot — très chaud.")],
        ),
        TrainingExample("q2", "who wrote hamlet", [Passage("d4", "Hamlet", "Shakespeare wrote it.")], [
            Passage("d5", "", "Marlowe wrote Faustus."), Passage("d6", "Globe", "A theatre."),
        ]),
    ]


@pytest.mark.parametrize("name", ["train.jsonl", "train.jsonl.gz"])
def test_jsonl_round_trip(tmp_path, name):
    path = tmp_path / name
    assert write_examples(path, iter(_examples())) == 2
    assert list(read_examples(path)) == _examples()
    if name.endswith(".gz"):
        lines = gzip.open(path, "rt", encoding="utf-8").read().splitlines()
    else:
        lines = path.read_text(encoding="utf-8").splitlines()
    first = json.loads(lines[0])
    assert list(first) == ["query_id", "query", "positive_passages", "negative_passages"]
    assert first["negative_passages"][1] == {"docid": "d3", "title": "Sun", "text": "The sun is hot — très chaud."}


def test_reads_tevatron_variants(tmp_path):
    """Integer ids, missing titles and missing negatives (common in published files) are accepted."""
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"query_id": 7, "query": "q", "positive_passages": [{"docid": 3, "text": "t"}]}) + "\n\n")
    assert list(read_examples(path)) == [TrainingExample("7", "q", [Passage("3", "", "t")], [])]


def test_mined_rank_is_an_extra_key_only_when_set(tmp_path):
    """Mining's rank of the positive travels with the example; files without it read as before."""
    path = tmp_path / "mined.jsonl"
    ranked = TrainingExample("q", "rain", [Passage("d1", "", "t")], [], mined_rank=4)
    write_examples(path, [ranked, _examples()[0]])
    first, second = path.read_text(encoding="utf-8").splitlines()
    assert json.loads(first)["mined_rank"] == 4 and "mined_rank" not in json.loads(second)
    assert list(read_examples(path)) == [ranked, _examples()[0]]


def test_teacher_scores_are_an_extra_key_only_when_set(tmp_path):
    """A hybrid teacher's score per passage travels with it (integers read as floats); passages without one
    are written and read as before."""
    path = tmp_path / "teacher.jsonl"
    scored = TrainingExample("q", "rain", [Passage("d1", "", "t", score=0.61)], [Passage("d2", "", "u", score=-0.25)])
    write_examples(path, [scored, _examples()[0]])
    first, second = path.read_text(encoding="utf-8").splitlines()
    assert json.loads(first)["negative_passages"][0]["score"] == -0.25
    assert all("score" not in p for p in json.loads(second)["positive_passages"])
    assert list(read_examples(path)) == [scored, _examples()[0]]
    path.write_text(json.dumps({"query_id": "1", "query": "q", "positive_passages": [{"docid": "a", "text": "t", "score": 1}]}))
    (example,) = read_examples(path)
    assert example.positives[0].score == 1.0 and isinstance(example.positives[0].score, float)


@pytest.mark.parametrize(
    "record, line_field, words",
    [
        ({"query": "q", "positive_passages": [{"docid": "a", "text": "t"}]}, "query_id", "missing"),
        ({"query_id": "1", "query": 5, "positive_passages": []}, "query", "expected a string"),
        ({"query_id": "1", "query": "  ", "positive_passages": []}, "query", "blank"),
        ({"query_id": "1", "query": "q"}, "positive_passages", "missing"),
        ({"query_id": "1", "query": "q", "positive_passages": []}, "positive_passages", "at least one positive"),
        ({"query_id": "1", "query": "q", "positive_passages": {"docid": "a"}}, "positive_passages", "expected a list"),
        ({"query_id": "1", "query": "q", "positive_passages": [{"docid": "a", "text": "t"}, "x"]},
         "positive_passages[1]", "expected an object"),
        ({"query_id": "1", "query": "q", "positive_passages": [{"docid": "a", "text": "t"}],
          "negative_passages": [{"docid": "b", "title": 3, "text": "t"}]}, "negative_passages[0].title", "expected a string"),
        ({"query_id": "1", "query": "q", "positive_passages": [{"docid": "a"}]}, "positive_passages[0].text", "missing"),
        ({"query_id": "1", "query": "q", "positive_passages": [{"docid": "a", "text": "t"}], "mined_rank": 0},
         "mined_rank", "integer >= 1"),
        ({"query_id": "1", "query": "q", "positive_passages": [{"docid": "a", "text": "t"}], "mined_rank": "2"},
         "mined_rank", "integer >= 1"),
        ({"query_id": "1", "query": "q", "positive_passages": [{"docid": "a", "text": "t", "score": "high"}]},
         "positive_passages[0].score", "finite number"),
        ({"query_id": "1", "query": "q", "positive_passages": [{"docid": "a", "text": "t"}],
          "negative_passages": [{"docid": "b", "text": "t", "score": float("nan")}]}, "negative_passages[0].score", "finite number"),
        ({"query_id": "1", "query": "q", "positive_passages": [{"docid": "a", "text": "t", "score": True}]},
         "positive_passages[0].score", "finite number"),
    ],
)
def test_bad_records_name_file_line_field(tmp_path, record, line_field, words):
    path = tmp_path / "bad.jsonl"
    good = {"query_id": "0", "query": "ok", "positive_passages": [{"docid": "a", "title": "", "text": "t"}]}
    path.write_text(json.dumps(good) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(InputError) as info:
        list(read_examples(path))
    assert (info.value.line, info.value.field) == (2, line_field)
    assert str(info.value).startswith(f"{path}:2: field '{line_field}'")
    assert words in str(info.value)


def test_malformed_json_and_missing_file(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"query_id": "1",\n')
    with pytest.raises(InputError, match=r"bad.jsonl:1: malformed JSON"):
        list(read_examples(path))
    with pytest.raises(InputError, match="no such file"):
        read_examples(tmp_path / "absent.jsonl")


def test_dataset_columns_and_round_trip():
    examples = _examples()
    one = to_dataset(examples)
    assert one.column_names == ["anchor", "positive", "negative"]
    assert one[0] == {"anchor": "what causes rain?", "positive": "Rain Water vapour condenses into droplets.",
                      "negative": "Snow is frozen."}
    two = to_dataset(examples, num_negatives=2)
    assert two.column_names == ["anchor", "positive", "negative_1", "negative_2"]
    back = list(from_dataset(two))
    # Texts survive; ids are synthesized (row number, text hash) and titles are folded into the text.
    assert [(e.query, [p.content() for p in e.positives], [p.content() for p in e.negatives]) for e in back] == [
        (e.query, [e.positives[0].content()], [p.content() for p in e.negatives]) for e in examples
    ]
    assert [e.query_id for e in back] == ["0", "1"]
    assert to_dataset(back, num_negatives=2).to_dict() == two.to_dict()
    same = list(from_dataset(to_dataset([examples[0], examples[0]])))
    assert same[0].positives[0].docid == same[1].positives[0].docid != same[0].negatives[0].docid


def test_dataset_errors():
    with pytest.raises(InputError, match="<examples>:1: field 'negative_passages': query 'q1' has 2 negatives, fewer than num_negatives=3"):
        to_dataset(_examples(), num_negatives=3)
    from datasets import Dataset

    with pytest.raises(InputError, match="field 'positive': missing column"):
        list(from_dataset(Dataset.from_dict({"anchor": ["a"], "pos": ["b"]})))

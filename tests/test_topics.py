from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from dramasearch.errors import InputError
from dramasearch.topics import Query, read_qrels, read_queries

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

MLDR_RECORDS = [
    {"query_id": "q1", "query": "what is x", "positive_passages": [{"docid": "d1", "text": "..."}, {"docid": "d2"}],
     "negative_passages": [{"docid": "d9"}]},
    {"query_id": "q2", "query": "why y", "positive_passages": [{"docid": "d3"}], "negative_passages": []},
]


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def assert_located(err: InputError, path: Path, line: int | None, field: str | None) -> None:
    assert (err.path, err.line, err.field) == (str(path), line, field)
    where = str(path) if line is None else f"{path}:{line}"
    assert str(err).startswith(f"{where}: " + (f"field '{field}': " if field else ""))


def test_beir_queries_jsonl_and_folder(tmp_path):
    write_jsonl(tmp_path / "queries.jsonl", [{"_id": "1", "text": "first", "metadata": {}}, {"_id": "2", "text": "second"}])
    expected = [Query("1", "first"), Query("2", "second")]
    assert read_queries(tmp_path / "queries.jsonl") == expected
    assert read_queries(tmp_path) == expected


def test_queries_alternative_field_names(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"id": 5, "query": "five"}])
    assert read_queries(path) == [Query("5", "five")]


def test_mldr_queries(tmp_path):
    path = tmp_path / "mldr.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in MLDR_RECORDS))
    assert read_queries(path) == [Query("q1", "what is x"), Query("q2", "why y")]


@pytest.mark.parametrize("header", ["", "query-id\ttext\n", "qid\tquery\n"])
def test_queries_tsv(tmp_path, header):
    path = tmp_path / "queries.tsv"
    path.write_text(header + "1\tfirst query\n\n2\tsecond\twith tab\n", encoding="utf-8")
    assert read_queries(path) == [Query("1", "first query"), Query("2", "second\twith tab")]


def test_queries_errors(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"_id": "1", "text": "a"}, {"_id": "1", "text": "b"}])
    with pytest.raises(InputError) as info:
        read_queries(path)
    assert_located(info.value, path, 2, "_id")
    assert info.value.message == "duplicate id '1' (first seen on line 1); ids must be unique"

    path = write_jsonl(tmp_path / "q2.jsonl", [{"qid": "1", "text": "a"}])
    with pytest.raises(InputError) as info:
        read_queries(path)
    assert_located(info.value, path, 1, "_id|id|query_id")

    path.write_text('{"_id": "1", "text": "a"\n', encoding="utf-8")
    with pytest.raises(InputError) as info:
        read_queries(path)
    assert_located(info.value, path, 1, None)
    assert "malformed JSON" in info.value.message

    path = tmp_path / "q.tsv"
    path.write_text("1\tok\n2\n", encoding="utf-8")
    with pytest.raises(InputError) as info:
        read_queries(path)
    assert_located(info.value, path, 2, "text")


def test_queries_missing_or_unsupported(tmp_path):
    with pytest.raises(InputError) as info:
        read_queries(tmp_path)
    assert_located(info.value, tmp_path / "queries.jsonl", None, None)
    path = tmp_path / "q.csv"
    path.write_text("1,a\n", encoding="utf-8")
    with pytest.raises(InputError) as info:
        read_queries(path)
    assert_located(info.value, path, None, None)
    assert "unsupported queries file" in info.value.message


def test_beir_qrels_tsv_and_folder(tmp_path):
    (tmp_path / "qrels").mkdir()
    path = tmp_path / "qrels" / "test.tsv"
    path.write_text("query-id\tcorpus-id\tscore\n1\td1\t1\n1\td2\t2\n\n2\td1\t0\n", encoding="utf-8")
    expected = {"1": {"d1": 1, "d2": 2}, "2": {"d1": 0}}
    assert read_qrels(path) == expected
    assert read_qrels(tmp_path) == expected


def test_beir_qrels_without_header(tmp_path):
    path = tmp_path / "q.tsv"
    path.write_text("1\td1\t1\n", encoding="utf-8")
    assert read_qrels(path) == {"1": {"d1": 1}}


def test_trec_qrels(tmp_path):
    path = tmp_path / "qrels.txt"
    path.write_text("301 0 FBIS3-10082 1\n301  0\tFBIS3-10169 0\n302 Q0 LA010189-0001 2\n", encoding="utf-8")
    assert read_qrels(path) == {"301": {"FBIS3-10082": 1, "FBIS3-10169": 0}, "302": {"LA010189-0001": 2}}


def test_mldr_qrels(tmp_path):
    path = write_jsonl(tmp_path / "mldr.jsonl", MLDR_RECORDS)
    assert read_qrels(path) == {"q1": {"d1": 1, "d2": 1}, "q2": {"d3": 1}}


def test_qrels_bad_score(tmp_path):
    path = tmp_path / "q.tsv"
    path.write_text("query-id\tcorpus-id\tscore\n1\td1\t1\n1\td2\thigh\n", encoding="utf-8")
    with pytest.raises(InputError) as info:
        read_qrels(path)
    assert_located(info.value, path, 3, "score")
    assert info.value.message == "expected an integer relevance grade, got 'high'"


def test_qrels_wrong_column_count(tmp_path):
    path = tmp_path / "q.tsv"
    path.write_text("1\td1\t1\n1\td2\n", encoding="utf-8")
    with pytest.raises(InputError) as info:
        read_qrels(path)
    assert_located(info.value, path, 2, None)
    assert "got 2 columns" in info.value.message


def test_mldr_qrels_errors(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [MLDR_RECORDS[0], {"query_id": "q2", "query": "y"}])
    with pytest.raises(InputError) as info:
        read_qrels(path)
    assert_located(info.value, path, 2, "positive_passages")

    path = write_jsonl(tmp_path / "m2.jsonl", [{"query_id": "q1", "positive_passages": [{"id": "d1"}]}])
    with pytest.raises(InputError) as info:
        read_qrels(path)
    assert_located(info.value, path, 1, "docid")

    path = write_jsonl(tmp_path / "m3.jsonl", [{"query_id": "", "positive_passages": []}])
    with pytest.raises(InputError) as info:
        read_qrels(path)
    assert_located(info.value, path, 1, "query_id")


def test_qrels_missing_path(tmp_path):
    with pytest.raises(InputError) as info:
        read_qrels(tmp_path)
    assert_located(info.value, tmp_path / "qrels" / "test.tsv", None, None)


@pytest.mark.skipif(not (SHARED_DATA / "scifact").is_dir(), reason=f"shared data not present at {SHARED_DATA / 'scifact'}")
def test_real_scifact_topics():
    queries = read_queries(SHARED_DATA / "scifact")
    qrels = read_qrels(SHARED_DATA / "scifact")
    assert len(queries) == 300
    assert sum(len(docs) for docs in qrels.values()) == 339
    assert queries[0] == Query("1", "0-dimensional biomaterials show inductive properties.")
    assert qrels["1"] == {"31715818": 1}

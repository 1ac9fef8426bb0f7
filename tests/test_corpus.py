from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dramasearch.corpus import CorpusStats, Document, iter_documents
from dramasearch.errors import InputError

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def read_error(path: Path, **kwargs) -> InputError:
    with pytest.raises(InputError) as info:
        list(iter_documents(path, **kwargs))
    return info.value


def assert_located(err: InputError, path: Path, line: int | None, field: str | None) -> None:
    assert (err.path, err.line, err.field) == (str(path), line, field)
    where = str(path) if line is None else f"{path}:{line}"
    assert str(err).startswith(f"{where}: " + (f"field '{field}': " if field else ""))


def test_content_joins_title_and_text():
    assert Document("1", "Title", "body").content() == "Title body"
    assert Document("1", "", "body").content() == "body"
    assert Document("1", "Title", "").content() == "Title"


def test_beir_folder_jsonl(tmp_path):
    write_jsonl(tmp_path / "corpus.jsonl", [
        {"_id": "d1", "title": "T1", "text": "one", "metadata": {}},
        {"_id": "d2", "text": "two"},
    ])
    assert list(iter_documents(tmp_path)) == [Document("d1", "T1", "one"), Document("d2", "", "two")]


@pytest.mark.parametrize("id_key,text_key", [("id", "contents"), ("docid", "body"), ("doc_id", "text")])
def test_jsonl_autodetects_fields(tmp_path, id_key, text_key):
    path = write_jsonl(tmp_path / "c.jsonl", [{id_key: "a", text_key: "alpha"}, {id_key: 7, text_key: "seven"}])
    assert list(iter_documents(path)) == [Document("a", "", "alpha"), Document("7", "", "seven")]


def test_jsonl_explicit_fields(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"_id": "x", "pid": "p1", "head": "H", "passage": "P", "text": "no"}])
    docs = list(iter_documents(path, id_field="pid", title_field="head", text_field="passage"))
    assert docs == [Document("p1", "H", "P")]


def test_jsonl_gz_with_blank_lines_and_bom(tmp_path):
    path = tmp_path / "corpus.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write('\ufeff{"_id": "a", "text": "x"}\n\n   \n{"_id": "b", "title": "t", "text": "y"}\n')
    assert list(iter_documents(path)) == [Document("a", "", "x"), Document("b", "t", "y")]
    assert list(iter_documents(tmp_path)) == [Document("a", "", "x"), Document("b", "t", "y")]


def test_tsv_without_header_two_and_three_columns(tmp_path):
    two = tmp_path / "two.tsv"
    two.write_text("1\thello world\n2\tsecond\twith tab\n", encoding="utf-8")
    assert list(iter_documents(two)) == [Document("1", "", "hello world"), Document("2", "", "second\twith tab")]
    three = tmp_path / "three.tsv"
    three.write_text("1\tT\thello\n\n2\t\tbye\n", encoding="utf-8")
    assert list(iter_documents(three)) == [Document("1", "T", "hello"), Document("2", "", "bye")]


def test_tsv_with_header(tmp_path):
    path = tmp_path / "c.tsv"
    path.write_text("id\ttitle\ttext\nd1\tA\tbody a\nd2\tB\tbody b\n", encoding="utf-8")
    assert list(iter_documents(path)) == [Document("d1", "A", "body a"), Document("d2", "B", "body b")]
    path.write_text("id\ttext\nd1\tbody a\n", encoding="utf-8")
    assert list(iter_documents(path)) == [Document("d1", "", "body a")]


def test_tsv_missing_text_column(tmp_path):
    path = tmp_path / "c.tsv"
    path.write_text("d1\tbody\nd2\n", encoding="utf-8")
    err = read_error(path)
    assert_located(err, path, 2, "text")
    assert "missing" in err.message


def test_parquet_read_in_batches(tmp_path):
    path = tmp_path / "c.parquet"
    n = 2500  # more than one record batch
    table = pa.table({"docid": list(range(n)), "title": ["t"] * n, "text": [f"doc {i}" for i in range(n)]})
    pq.write_table(table, path, row_group_size=700)
    docs = list(iter_documents(path))
    assert len(docs) == n
    assert docs[0] == Document("0", "t", "doc 0")
    assert docs[-1] == Document(str(n - 1), "t", f"doc {n - 1}")


def test_parquet_errors_use_row_numbers(tmp_path):
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "a"], "text": ["x", "y", "z"]}), path)
    err = read_error(path)
    assert_located(err, path, 3, "id")
    assert "duplicate id 'a' (first seen on line 1)" in err.message


def test_text_folder(tmp_path):
    (tmp_path / "sub" / "deep").mkdir(parents=True)
    (tmp_path / "b.txt").write_text("bee", encoding="utf-8")
    (tmp_path / "a.md").write_text("# A\n", encoding="utf-8")
    (tmp_path / "sub" / "deep" / "c.txt").write_text("sea", encoding="utf-8")
    (tmp_path / "sub" / "ignored.json").write_text("{}", encoding="utf-8")
    assert list(iter_documents(tmp_path)) == [
        Document("a.md", "", "# A\n"),
        Document("b.txt", "", "bee"),
        Document("sub/deep/c.txt", "", "sea"),
    ]


def test_text_folder_undecodable_file(tmp_path):
    (tmp_path / "a.txt").write_text("fine", encoding="utf-8")
    bad = tmp_path / "b.txt"
    bad.write_bytes(b"line one\nline \xff two\n")
    err = read_error(tmp_path)
    assert_located(err, bad, 2, None)
    assert "not valid UTF-8" in err.message


def test_empty_folder_is_an_error(tmp_path):
    err = read_error(tmp_path)
    assert_located(err, tmp_path, None, None)
    assert "no corpus.jsonl" in err.message


def test_stats_count_empty_documents(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [
        {"_id": "a", "text": "x"}, {"_id": "b", "text": "  "}, {"_id": "c", "title": "", "text": ""},
        {"_id": "d", "title": "only title", "text": ""},
    ])
    stats = CorpusStats()
    docs = list(iter_documents(path, stats=stats))
    assert [d.id for d in docs] == ["a", "b", "c", "d"]
    assert stats == CorpusStats(documents=4, empty=2)


def test_streaming_yields_before_bad_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"_id": "a", "text": "x"}\n{oops\n', encoding="utf-8")
    docs = iter_documents(path)
    assert next(docs) == Document("a", "", "x")
    with pytest.raises(InputError):
        next(docs)


def test_malformed_json(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"_id": "a", "text": "x"}\n\n{"_id": "b", "text": \n', encoding="utf-8")
    err = read_error(path)
    assert_located(err, path, 3, None)
    assert "malformed JSON (Expecting value: line 1 column 22 (char 21))" in err.message


def test_record_not_an_object(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"_id": "a", "text": "x"}, ["b", "y"]])
    err = read_error(path)
    assert_located(err, path, 2, None)
    assert "expected a JSON object, got array" in err.message


def test_missing_id_names_fields_looked_for(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"key": "a", "text": "x"}])
    err = read_error(path)
    assert_located(err, path, 1, "_id|id|docid|doc_id")
    assert "looked for '_id', 'id', 'docid', 'doc_id' (found ['key', 'text'])" in err.message


def test_missing_text_names_fields_looked_for(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"_id": "a", "passage": "x"}])
    err = read_error(path)
    assert_located(err, path, 1, "text|contents|body")
    assert "looked for 'text', 'contents', 'body'" in err.message


def test_explicit_field_missing(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"_id": "a", "text": "x"}])
    err = read_error(path, text_field="passage")
    assert_located(err, path, 1, "passage")
    assert "looked for 'passage'" in err.message


def test_field_missing_in_later_record(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"_id": "a", "text": "x"}, {"_id": "b"}])
    err = read_error(path)
    assert_located(err, path, 2, "text")
    assert "missing or null" in err.message


@pytest.mark.parametrize("record,field,message", [
    ({"_id": ["a"], "text": "x"}, "_id", "expected a string or integer, got array ['a']"),
    ({"_id": True, "text": "x"}, "_id", "expected a string or integer, got boolean True"),
    ({"_id": "a", "text": 3.5}, "text", "expected a string, got number 3.5"),
    ({"_id": "a", "title": 1, "text": "x"}, "title", "expected a string, got number 1"),
    ({"_id": " ", "text": "x"}, "_id", "empty id; every record needs a non-blank id"),
])
def test_bad_values(tmp_path, record, field, message):
    path = write_jsonl(tmp_path / "c.jsonl", [{"_id": "ok", "title": "t", "text": "x"}, record])
    err = read_error(path)
    assert_located(err, path, 2, field)
    assert err.message == message


def test_duplicate_id_reports_both_lines(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"_id": "a", "text": "x"}, {"_id": "b", "text": "y"}, {"_id": "a", "text": "z"}])
    err = read_error(path)
    assert_located(err, path, 3, "_id")
    assert err.message == "duplicate id 'a' (first seen on line 1); ids must be unique"


def test_undecodable_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"_id": "a", "text": "x"}\n{"_id": "b", "text": "\xc3\x28"}\n')
    err = read_error(path)
    assert_located(err, path, 2, None)
    assert "not valid UTF-8 (invalid continuation byte at byte 22)" in err.message


def test_corrupt_gzip(tmp_path):
    path = tmp_path / "c.jsonl.gz"
    path.write_bytes(b"not gzip at all")
    err = read_error(path)
    assert err.path == str(path) and "corrupt gzip data" in err.message


def test_missing_path(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(InputError) as info:
        iter_documents(path)  # raised at call time, before iterating
    assert_located(info.value, path, None, None)
    assert "no such file or folder" in info.value.message


def test_unsupported_file_type(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("id,text\n", encoding="utf-8")
    err = read_error(path)
    assert_located(err, path, None, None)
    assert err.message.startswith("unsupported file type; use .jsonl")


@pytest.mark.skipif(not (SHARED_DATA / "scifact").is_dir(), reason=f"shared data not present at {SHARED_DATA / 'scifact'}")
def test_real_scifact_corpus():
    stats = CorpusStats()
    first = next(iter_documents(SHARED_DATA / "scifact"))
    assert first.id == "4983" and first.title.startswith("Microstructural development")
    assert sum(1 for _ in iter_documents(SHARED_DATA / "scifact", stats=stats)) == 5183
    assert stats.documents == 5183

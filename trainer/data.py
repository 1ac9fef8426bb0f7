"""Training examples in the formats users already have: Tevatron jsonl and HF `datasets` columns.

Tevatron jsonl (one query per line) keeps ids and every positive and negative, so it is the
format the augmentation steps write and the trainer reads. The (anchor, positive, negative)
columns are what sentence-transformers trainers take; they hold texts only.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from dramasearch.corpus import iter_json_objects, title_and_text
from dramasearch.errors import InputError
from dramasearch.fsutil import atomic_write


@dataclass(frozen=True)
class Passage:
    docid: str
    title: str
    text: str
    # A teacher's score for this passage against its example's query (mining with a hybrid teacher):
    # training on it distills the teacher's judgement of hard negatives instead of calling them wrong.
    score: float | None = None

    def content(self) -> str:
        return title_and_text(self.title, self.text)


@dataclass
class TrainingExample:
    query_id: str
    query: str
    positives: list[Passage]
    negatives: list[Passage] = field(default_factory=list)
    # Set by mining: the retriever's rank for the positive among the corpus's other documents (1 = it
    # already wins; depth + 1 = below the mined depth). Lets adapt prefer queries that still teach.
    mined_rank: int | None = None


def example_to_json(example: TrainingExample) -> dict[str, Any]:
    """The Tevatron record of an example (key order fixed, so equal examples give equal lines)."""
    record: dict[str, Any] = {
        "query_id": example.query_id,
        "query": example.query,
        "positive_passages": [_passage_json(p) for p in example.positives],
        "negative_passages": [_passage_json(p) for p in example.negatives],
    }
    if example.mined_rank is not None:  # an extra key, which Tevatron's readers ignore
        record["mined_rank"] = example.mined_rank
    return record


def example_line(example: TrainingExample) -> str:
    """One jsonl line (with its newline) for an example."""
    return json.dumps(example_to_json(example), ensure_ascii=False) + "\n"


def example_from_json(record: dict[str, Any], path: str | Path = "<record>", line: int | None = None) -> TrainingExample:
    """Validate one Tevatron record; errors name `path`, `line` and the offending field."""
    query_id = _string(record, "query_id", path, line, allow_int=True)
    query = _string(record, "query", path, line)
    if not query.strip():
        raise InputError(path, line, "query", "blank query; every example needs query text")
    positives = _passages(record, "positive_passages", path, line, required=True)
    if not positives:
        raise InputError(path, line, "positive_passages", "empty; every training example needs at least one positive")
    negatives = _passages(record, "negative_passages", path, line, required=False)
    mined_rank = record.get("mined_rank")
    if mined_rank is not None and (not isinstance(mined_rank, int) or isinstance(mined_rank, bool) or mined_rank < 1):
        raise InputError(path, line, "mined_rank", f"expected an integer >= 1, got {mined_rank!r:.40}")
    return TrainingExample(query_id, query, positives, negatives, mined_rank)


def read_examples(path: str | Path) -> Iterator[TrainingExample]:
    """Stream the examples of a Tevatron jsonl(.gz) file, validating each line.

    A missing file is reported at call time; bad lines surface while iterating.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, None, None, "no such file; expected Tevatron jsonl (one query per line)")
    return (example_from_json(record, path, line_no) for line_no, record in iter_json_objects(path))


def read_examples_or_queries(path: str | Path) -> tuple[Iterable[TrainingExample], int | None]:
    """Tevatron examples, or the queries of a queries file as examples without passages.

    For steps that label queries themselves (mining with top ranks as positives, LLM
    reranking). A jsonl whose first record has "positive_passages" is Tevatron; anything
    else is read by dramasearch's `read_queries` (BEIR/MLDR jsonl, tsv, BEIR folder).
    Returns the examples and their count when known without reading them all.
    """
    from dramasearch.topics import read_queries

    path = Path(path)
    if path.is_file() and path.name.lower().endswith((".jsonl", ".jsonl.gz")):
        first = next(iter_json_objects(path), None)
        if first is not None and "positive_passages" in first[1]:
            return read_examples(path), None
    queries = read_queries(path)
    return [TrainingExample(q.id, q.text, [], []) for q in queries], len(queries)


def write_examples(path: str | Path, examples: Iterable[TrainingExample]) -> int:
    """Write examples as Tevatron jsonl (gzipped for .gz) atomically; returns how many were written."""
    path = Path(path)
    count = 0

    def write(raw: IO[bytes]) -> None:
        nonlocal count
        out: IO[bytes] = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if path.name.endswith(".gz") else raw
        for example in examples:
            out.write(example_line(example).encode("utf-8"))
            count += 1
        if out is not raw:
            out.close()

    atomic_write(path, write)
    return count


def to_dataset(examples: Iterable[TrainingExample], num_negatives: int = 1):
    """A `datasets.Dataset` with one row per example: anchor, positive, then the hard negatives.

    Columns follow sentence-transformers: `negative` for one negative, `negative_1..negative_n`
    for more. The first positive is used; an example with fewer than `num_negatives`
    negatives is an error (a ragged row cannot be a column).
    """
    from datasets import Dataset

    if num_negatives < 0:
        raise ValueError(f"num_negatives must be >= 0, got {num_negatives}")
    names = _negative_columns(num_negatives)
    columns: dict[str, list[str]] = {"anchor": [], "positive": [], **{name: [] for name in names}}
    for index, example in enumerate(examples):
        if len(example.negatives) < num_negatives:
            raise InputError(
                "<examples>", index + 1, "negative_passages",
                f"query {example.query_id!r} has {len(example.negatives)} negatives, fewer than "
                f"num_negatives={num_negatives}; mine more negatives or lower num_negatives",
            )
        columns["anchor"].append(example.query)
        columns["positive"].append(example.positives[0].content())
        for name, passage in zip(names, example.negatives):
            columns[name].append(passage.content())
    return Dataset.from_dict(columns)


def from_dataset(dataset) -> Iterator[TrainingExample]:
    """Examples from (anchor, positive, negative | negative_1..n) columns.

    Columns carry no ids, so the row number becomes the query id and each passage's id is a
    hash of its text (equal texts get equal ids, which keeps in-batch duplicates detectable).
    """
    names = list(dataset.column_names)
    for required in ("anchor", "positive"):
        if required not in names:
            raise InputError("<dataset>", None, required, f"missing column (found {names}); expected anchor, positive, negative")
    negatives = _negative_columns_of(names)
    for index, row in enumerate(dataset):
        for name in ("anchor", "positive", *negatives):
            if not isinstance(row[name], str):
                raise InputError("<dataset>", index + 1, name, f"expected a string, got {type(row[name]).__name__}")
        yield TrainingExample(
            query_id=str(index),
            query=row["anchor"],
            positives=[_text_passage(row["positive"])],
            negatives=[_text_passage(row[name]) for name in negatives],
        )


def _negative_columns(n: int) -> list[str]:
    return ["negative"] if n == 1 else [f"negative_{i}" for i in range(1, n + 1)]


def _negative_columns_of(names: list[str]) -> list[str]:
    """`negative`, then `negative_<i>` in numeric order; other columns are not negatives."""
    numbered = [n for n in names if n.startswith("negative_") and n[len("negative_"):].isdigit()]
    numbered.sort(key=lambda n: int(n[len("negative_"):]))
    return (["negative"] if "negative" in names else []) + numbered


def _text_passage(text: str) -> Passage:
    return Passage("sha1:" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:16], "", text)


def _passage_json(p: Passage) -> dict[str, Any]:
    record: dict[str, Any] = {"docid": p.docid, "title": p.title, "text": p.text}
    if p.score is not None:  # an extra key, which Tevatron's readers ignore
        record["score"] = p.score
    return record


def _passages(record: dict[str, Any], key: str, path, line, *, required: bool) -> list[Passage]:
    value = record.get(key)
    if value is None:
        if required:
            raise InputError(path, line, key, "missing; expected a list of {docid, title, text} objects")
        return []
    if not isinstance(value, list):
        raise InputError(path, line, key, f"expected a list of {{docid, title, text}} objects, got {type(value).__name__}")
    passages = []
    for i, item in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(item, dict):
            raise InputError(path, line, where, f"expected an object with docid, title, text, got {type(item).__name__}")
        docid = _string(item, "docid", path, line, allow_int=True, where=f"{where}.docid")
        title = _string(item, "title", path, line, where=f"{where}.title") if item.get("title") is not None else ""
        score = item.get("score")
        if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score)):
            raise InputError(path, line, f"{where}.score", f"expected a finite number (a teacher's score), got {score!r:.40}")
        passages.append(Passage(docid, title, _string(item, "text", path, line, where=f"{where}.text"),
                                None if score is None else float(score)))
    return passages


def _string(record: dict[str, Any], key: str, path, line, *, allow_int: bool = False, where: str | None = None) -> str:
    where = where or key
    value = record.get(key)
    if value is None:
        raise InputError(path, line, where, "missing or null")
    if isinstance(value, str):
        return value
    if allow_int and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    expected = "a string or integer" if allow_int else "a string"
    raise InputError(path, line, where, f"expected {expected}, got {type(value).__name__} {value!r:.40}")

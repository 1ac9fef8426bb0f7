"""Queries and relevance judgments (qrels) for evaluation, in BEIR, TREC and MLDR layouts."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from .corpus import documents_from_records, iter_json_objects, iter_lines, record_id, tsv_records
from .errors import InputError

QUERY_ID_FIELDS = ("_id", "id", "query_id")
QUERY_TEXT_FIELDS = ("text", "query")
QUERY_ID_HEADERS = ("query-id", "qid", "query_id", "_id", "id")

Qrels = dict[str, dict[str, int]]  # query id -> doc id -> relevance grade


@dataclass(frozen=True)
class Query:
    id: str
    text: str


def read_queries(path: str | Path) -> list[Query]:
    """Read queries from BEIR/MLDR jsonl(.gz), an id<TAB>text .tsv, or a BEIR folder's queries.jsonl."""
    path = _existing(path, "queries.jsonl")
    if _is_jsonl(path):
        records = lambda: iter_json_objects(path)
        fields = {"id_fields": QUERY_ID_FIELDS, "text_fields": QUERY_TEXT_FIELDS}
    elif path.name.lower().endswith(".tsv"):
        records = lambda: tsv_records(path, header_ids=QUERY_ID_HEADERS, allow_title=False)
        fields = {"id_fields": ("id",), "text_fields": ("text",)}
    else:
        raise InputError(path, None, None, "unsupported queries file; use .jsonl, .jsonl.gz, .tsv or a BEIR folder")
    # Queries are validated exactly like documents (types, blank and duplicate ids).
    return [Query(doc.id, doc.text) for doc in documents_from_records(path, records, require_text=True, **fields)]


def read_qrels(path: str | Path) -> Qrels:
    """Read judgments from BEIR tsv, TREC qrels, MLDR jsonl (positives get grade 1) or a BEIR folder."""
    path = _existing(path, "qrels/test.tsv")
    return _mldr_qrels(path) if _is_jsonl(path) else _table_qrels(path)


def _table_qrels(path: Path) -> Qrels:
    """BEIR 'query-id<TAB>corpus-id<TAB>score' (with header) or TREC 'qid 0 docid rel' lines."""
    qrels: Qrels = {}
    header_checked = False
    for line_no, line in iter_lines(path):
        if not line.strip():
            continue
        cols = line.split()  # ids never contain whitespace in BEIR or TREC qrels
        if not header_checked:
            header_checked = True
            if cols[0].lower() in QUERY_ID_HEADERS:
                continue
        if len(cols) not in (3, 4):
            raise InputError(
                path, line_no, None,
                f"expected 'query-id<TAB>corpus-id<TAB>score' or TREC 'qid 0 docid rel', got {len(cols)} columns",
            )
        query_id, doc_id, score = (cols[0], cols[1], cols[2]) if len(cols) == 3 else (cols[0], cols[2], cols[3])
        try:
            grade = int(score)
        except ValueError:
            raise InputError(path, line_no, "score", f"expected an integer relevance grade, got {score!r}") from None
        qrels.setdefault(query_id, {})[doc_id] = grade
    return qrels


def _mldr_qrels(path: Path) -> Qrels:
    """MLDR-style queries jsonl: every positive_passages docid is relevant (grade 1)."""
    qrels: Qrels = {}
    for line_no, record in iter_json_objects(path):
        query_id = record_id(path, line_no, record, "query_id")
        positives = record.get("positive_passages")
        if not isinstance(positives, list):
            raise InputError(
                path, line_no, "positive_passages", "missing or not a list; expected [{\"docid\": ...}, ...]"
            )
        for i, passage in enumerate(positives):
            if not isinstance(passage, dict):
                raise InputError(path, line_no, f"positive_passages[{i}]", "expected an object with a 'docid'")
            doc_id = record_id(path, line_no, passage, "docid")
            qrels.setdefault(query_id, {})[doc_id] = 1
    return qrels


def _existing(path: str | Path, beir_member: str) -> Path:
    """Resolve a BEIR folder to its member file and fail early, with a located error, on missing paths."""
    path = Path(path)
    if path.is_dir():
        path = path / beir_member
    if not path.is_file():
        raise InputError(path, None, None, "no such file; check the path (a BEIR folder needs " + beir_member + ")")
    return path


def _is_jsonl(path: Path) -> bool:
    return path.name.lower().endswith((".jsonl", ".jsonl.gz"))

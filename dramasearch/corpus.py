"""Streaming corpus readers: turn BEIR folders, jsonl(.gz), tsv, parquet or text folders into Documents.

Corpora can be far larger than memory, so every reader yields one document at a time. Duplicate
ids are found with 64-bit hashes (idhash.SeenIds, 16 bytes per id), confirmed by re-reading
the earlier record, and reported with both line numbers.
"""
from __future__ import annotations

import gzip
import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from . import validate
from .errors import InputError
from .idhash import SeenIds, check_duplicate

ID_FIELDS = ("_id", "id", "docid", "doc_id")
TEXT_FIELDS = ("text", "contents", "body")
TITLE_FIELDS = ("title",)
TEXT_FILE_SUFFIXES = (".txt", ".md")
PARQUET_BATCH_ROWS = 1024

Record = tuple[int, dict[str, Any]]  # (1-based line or row number, record)


def title_and_text(title: str, text: str) -> str:
    """The text to encode: title and text joined by a space, as MTEB/BEIR do (one rule for the
    index and for training, so a model is trained on what it will be served)."""
    return f"{title} {text}".strip() if title else text


@dataclass(frozen=True)
class Document:
    id: str
    title: str
    text: str

    def content(self) -> str:
        return title_and_text(self.title, self.text)


@dataclass
class CorpusStats:
    documents: int = 0
    empty: int = 0  # documents whose content() is blank: yielded anyway, so ids stay aligned


def iter_documents(
    path: str | Path,
    *,
    id_field: str | None = None,
    title_field: str | None = None,
    text_field: str | None = None,
    stats: CorpusStats | None = None,
) -> Iterator[Document]:
    """Stream the documents of a corpus; explicit *_field names override jsonl/parquet auto-detection.

    A .tsv is positional (id, text or id, title, text), so the *_field names do not apply to it.
    Path problems are raised here, at call time; problems inside the data surface while iterating.
    """
    path = Path(path)
    if path.is_dir():
        path = _beir_corpus_file(path) or path
    elif not path.exists():
        raise InputError(path, None, None, "no such file or folder; check the path")

    fields = {
        "id_fields": (id_field,) if id_field else ID_FIELDS,
        "text_fields": (text_field,) if text_field else TEXT_FIELDS,
        "title_fields": (title_field,) if title_field else TITLE_FIELDS,
    }
    name = path.name.lower()
    if path.is_dir():
        documents = _text_folder_documents(path, _text_files(path))
    elif name.endswith((".jsonl", ".jsonl.gz")):
        documents = documents_from_records(path, lambda: iter_json_objects(path), **fields)
    elif name.endswith(".parquet"):
        documents = documents_from_records(path, lambda: _parquet_records(path), **fields)
    elif name.endswith(".tsv"):
        documents = documents_from_records(
            path, lambda: tsv_records(path, header_ids=ID_FIELDS, allow_title=True),
            id_fields=("id",), text_fields=("text",), title_fields=("title",),
        )
    else:
        raise InputError(
            path, None, None,
            "unsupported file type; use .jsonl, .jsonl.gz, .tsv, .parquet, "
            "a BEIR folder (corpus.jsonl) or a folder of .txt/.md files",
        )
    return _counted(documents, stats) if stats is not None else documents


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, line without its newline) from a plain or gzipped UTF-8 file.

    Lines are decoded one by one so an undecodable byte is reported on its own line.
    """
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    line_no = 0
    try:
        with opener(path, "rb") as f:
            for line_no, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise InputError(
                        path, line_no, None,
                        f"not valid UTF-8 ({e.reason} at byte {e.start}); re-encode the file as UTF-8",
                    ) from None
                if line_no == 1:
                    line = line.removeprefix("\ufeff")
                yield line_no, line.rstrip("\r\n")
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise InputError(path, line_no + 1, None, f"corrupt gzip data ({e}); re-download or re-compress it") from None


def iter_json_objects(path: Path) -> Iterator[Record]:
    """Yield (line number, object) for each non-blank line of a jsonl(.gz) file."""
    for line_no, line in iter_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(
                path, line_no, None, f"malformed JSON ({e}); each line must hold one complete JSON object"
            ) from None
        if not isinstance(record, dict):
            raise InputError(
                path, line_no, None, f"expected a JSON object, got {_json_type(record)}; each line must be {{...}}"
            )
        yield line_no, record


def tsv_records(path: Path, *, header_ids: Iterable[str], allow_title: bool) -> Iterator[Record]:
    """Yield tab-separated lines as {"id", ["title",] "text"} records.

    The first line is a header when its first column is one of header_ids; the column count
    of the first line decides between id/text and id/title/text (only when allow_title).
    """
    header_ids = {name.lower() for name in header_ids}
    columns: tuple[str, ...] | None = None
    for line_no, line in iter_lines(path):
        if not line.strip():
            continue
        if columns is None:
            first = line.split("\t")
            columns = ("id", "title", "text") if allow_title and len(first) >= 3 else ("id", "text")
            if first[0].strip().lower() in header_ids:
                continue
        yield line_no, dict(zip(columns, line.split("\t", len(columns) - 1)))


def documents_from_records(
    path: Path,
    records: Callable[[], Iterable[Record]],
    *,
    id_fields: tuple[str, ...],
    text_fields: tuple[str, ...],
    title_fields: tuple[str, ...] = (),
    require_text: bool = False,
) -> Iterator[Document]:
    """Validate records into Documents (`require_text`: a blank text is an error, as for queries).

    The first record decides which id and text fields a file uses; the title is optional, so
    it is looked up in each record. `records()` is called again only to confirm a duplicate.
    """
    seen = SeenIds()
    keys: tuple[str, str] | None = None

    def id_on_line(line: int) -> str:
        return next(record_id(path, n, r, keys[0]) for n, r in records() if n == line)

    for line_no, record in records():
        if keys is None:
            keys = (_pick_field(path, line_no, record, id_fields), _pick_field(path, line_no, record, text_fields))
        id_key, text_key = keys
        title_key = next((name for name in title_fields if record.get(name) is not None), None)
        doc_id = record_id(path, line_no, record, id_key)
        first = check_duplicate(seen, doc_id, line_no, id_on_line)
        if first is not None:
            raise InputError(
                path, line_no, id_key, f"duplicate id {doc_id!r} (first seen on line {first}); ids must be unique",
            )
        title = _string(path, line_no, record, title_key) if title_key else ""
        text = _string(path, line_no, record, text_key)
        if require_text and not text.strip():
            raise InputError(path, line_no, text_key, "empty text; a query needs words")
        yield Document(doc_id, title, text)


def _pick_field(path: Path, line_no: int, record: dict[str, Any], candidates: tuple[str, ...]) -> str:
    for name in candidates:
        if name in record:
            return name
    looked_for = ", ".join(repr(name) for name in candidates)
    raise InputError(
        path, line_no, "|".join(candidates),
        f"missing; looked for {looked_for} (found {sorted(record)}); name the right field explicitly",
    )


def record_id(path: Path, line_no: int, record: dict[str, Any], key: str) -> str:
    """A record's id as a string: integer ids are accepted (common in parquet), blank ones are not."""
    value = _string(path, line_no, record, key, allow_int=True)
    if not value.strip():
        raise InputError(path, line_no, key, "empty id; every record needs a non-blank id")
    return value


def _string(path: Path, line_no: int, record: dict[str, Any], key: str, allow_int: bool = False) -> str:
    value = record.get(key)
    if value is None:
        raise InputError(path, line_no, key, "missing or null; every record needs it")
    if isinstance(value, str):
        problem = validate.unsafe_text(value)
        if problem:
            raise InputError(path, line_no, key, f"{problem}; the tokenizer cannot take it")
        return value
    if allow_int and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    expected = "a string or integer" if allow_int else "a string"
    raise InputError(path, line_no, key, f"expected {expected}, got {_json_type(value)} {value!r:.40}")


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return names.get(type(value), type(value).__name__)


def _beir_corpus_file(folder: Path) -> Path | None:
    for name in ("corpus.jsonl", "corpus.jsonl.gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _parquet_records(path: Path) -> Iterator[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    row = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH_ROWS):
            for record in batch.to_pylist():
                row += 1
                yield row, record
    except (pa.ArrowException, OSError) as e:
        raise InputError(path, None, None, f"cannot read parquet ({e}); check the file is complete") from None


def _text_files(folder: Path) -> list[Path]:
    files = sorted(
        (p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_FILE_SUFFIXES),
        key=lambda p: p.relative_to(folder).as_posix(),
    )
    if not files:
        raise InputError(
            folder, None, None,
            "folder has no corpus.jsonl(.gz) and no .txt/.md files; point at a corpus file or a BEIR folder",
        )
    return files


def _text_folder_documents(folder: Path, files: list[Path]) -> Iterator[Document]:
    for file in files:
        data = file.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            line_no = data.count(b"\n", 0, e.start) + 1
            raise InputError(
                file, line_no, None, f"not valid UTF-8 ({e.reason} at byte {e.start}); re-encode the file as UTF-8"
            ) from None
        yield Document(file.relative_to(folder).as_posix(), "", text)


def _counted(documents: Iterator[Document], stats: CorpusStats) -> Iterator[Document]:
    for doc in documents:
        stats.documents += 1
        stats.empty += not doc.content().strip()
        yield doc

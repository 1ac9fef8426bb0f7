"""LLM-generated queries (DRAMA style), filtered by round-trip consistency with a retriever.

The LLM first names a retrieval task the passage supports, then writes a query for that
task in the passage's language; naming the task first makes queries more varied than
"write a question". Only the query is kept. A query survives if it is new (after
normalization) and its source passage ranks in the retriever's top-k for it, which drops
queries the passage does not actually answer.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from dramasearch.encoder import Encoder

from ..data import Passage, TrainingExample
from ..llm import CausalLM
from .resume import Progress, ResumableOutput, run_batches
from .retrieval import DenseCorpus, load_passages, ranks_of

SYSTEM = "You write search queries for training a search engine."
INSTRUCTION = (
    "Read the passage. First name a search task that this passage would help with. Then write one "
    "search query for that task which the passage answers. Write the query in the language of the "
    "passage. Answer with three lines: Task, Query, Language."
)
FEW_SHOT = (
    (
        "The Great Barrier Reef, off the coast of Queensland, is the largest coral reef system on "
        "Earth and is made of more than 2,900 separate reefs.",
        "Given a question about a natural landmark, find passages that describe it.",
        "where is the largest coral reef system in the world",
        "English",
    ),
    (
        "La fotosíntesis es el proceso por el cual las plantas convierten la luz del sol, el agua y "
        "el dióxido de carbono en glucosa y oxígeno.",
        "Given a biology question, find passages that explain the process it asks about.",
        "cómo fabrican las plantas su alimento con la luz",
        "Spanish",
    ),
    (
        "In a cohort of 2,000 adults followed for ten years, high serum ferritin was linked to a "
        "greater risk of developing type 2 diabetes.",
        "Given a health claim, find studies that support or refute it.",
        "high iron stores raise the risk of diabetes",
        "English",
    ),
)
ANSWER_PREFIX = "Task:"
_QUERY_LINE = re.compile(r"^[\W_]*query[\W_]*?[:：]\s*(.*)$", re.IGNORECASE | re.MULTILINE)
_NEXT_FIELD = re.compile(r"\s*\b(?:language|task|passage)\s*[:：].*$", re.IGNORECASE | re.DOTALL)
_WRAPPERS = "\"'`*“”‘’«»[]() "


@dataclass(frozen=True)
class QueryGenConfig:
    samples_per_passage: int = 4  # sampled completions per passage
    queries_per_passage: int = 1  # kept at most, first sampled first
    temperature: float = 0.8
    top_p: float = 0.9
    max_new_tokens: int = 64
    max_passage_tokens: int = 256  # passages are cut to this many LLM tokens in the prompt
    min_words: int = 2
    max_words: int = 48
    round_trip_k: int | None = 20  # keep a query only if its passage ranks in this top-k; None: no filter
    dim: int | None = None  # Matryoshka dimension for the round-trip retriever
    seed: int = 0


def build_prompt(lm: CausalLM, passage_text: str) -> str:
    """Instruction, then each few-shot example as its own chat turn, then the passage."""
    shots = [(f"{INSTRUCTION}\n\nPassage: {p}", f"Task: {t}\nQuery: {q}\nLanguage: {lang}") for p, t, q, lang in FEW_SHOT]
    return lm.chat_prompt(f"{INSTRUCTION}\n\nPassage: {passage_text}", system=SYSTEM, answer_prefix=ANSWER_PREFIX, shots=shots)


def parse_query(completion: str, min_words: int = 2, max_words: int = 48) -> str | None:
    """The query from a "Task / Query / Language" completion, or None when there is none.

    Tolerates markdown (`**Query:**`), quotes, a full-width colon, and the next field
    running on in the same line; a query outside the word bounds is None.
    """
    match = _QUERY_LINE.search(completion)
    if not match:
        return None
    query = _NEXT_FIELD.sub("", match.group(1))
    query = " ".join(query.strip(_WRAPPERS).split()).strip(_WRAPPERS)
    if not min_words <= len(query.split()) <= max_words:
        return None
    return query


def normalize_query(query: str) -> str:
    """The de-duplication key: case-folded, punctuation removed, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", query).casefold()
    return " ".join("".join(ch if not unicodedata.category(ch).startswith("P") else " " for ch in text).split())


_PROMPT_KEYS = [normalize_query(text) for shot in FEW_SHOT for text in shot[:3]]
COPY_MIN_WORDS = 4


def copied_from_prompt(key: str) -> bool:
    """True for a normalized query that is a few-shot query or task, or a run of 4+ words from
    a few-shot text: small LLMs copy their examples, and such a query is not about the passage."""
    for shown in _PROMPT_KEYS:
        if key == shown or (len(key.split()) >= COPY_MIN_WORDS and f" {key} " in f" {shown} "):
            return True
    return False


def select_queries(
    encoder: Encoder,
    corpus: DenseCorpus | None,
    sources: Sequence[Passage],
    candidates: Sequence[Sequence[str | None]],
    seen: set[str],
    config: QueryGenConfig,
) -> tuple[list[TrainingExample], dict[str, int]]:
    """Keep, per source passage, up to `queries_per_passage` parsed, new, round-trip-consistent queries.

    `candidates[i]` are the parsed queries for `sources[i]` (None: unparsable). `seen` holds
    the keys of queries kept so far and is updated; only kept queries enter it, so a resumed
    run (which rebuilds it from the output) decides exactly as an uninterrupted one.
    """
    if config.round_trip_k is not None and corpus is None:
        raise ValueError("round_trip_k is set but no corpus was given to check queries against")
    counts = {"unparsable": 0, "copied_from_prompt": 0, "duplicate": 0, "round_trip": 0, "kept": 0}
    flat: list[tuple[int, str, str]] = []
    for i, queries in enumerate(candidates):
        batch_keys: set[str] = set()
        for query in queries:
            if query is None:
                counts["unparsable"] += 1
                continue
            key = normalize_query(query)
            if copied_from_prompt(key):
                counts["copied_from_prompt"] += 1
                continue
            if key in seen or key in batch_keys:
                counts["duplicate"] += 1
                continue
            batch_keys.add(key)
            flat.append((i, query, key))
    passes = np.ones(len(flat), dtype=bool)
    if flat and config.round_trip_k is not None:
        targets = np.array([_row(corpus, sources[i]) for i, _, _ in flat])
        q = encoder.encode_queries([query for _, query, _ in flat], dim=config.dim)
        passes = ranks_of(q, corpus.embeddings, targets) <= config.round_trip_k
    kept_per_source = [0] * len(sources)
    examples = []
    for (i, query, key), ok in zip(flat, passes):
        if not ok:
            counts["round_trip"] += 1
        elif key in seen:  # the same query kept for an earlier passage of this batch
            counts["duplicate"] += 1
        elif kept_per_source[i] < config.queries_per_passage:
            seen.add(key)
            examples.append(TrainingExample(f"{sources[i].docid}-gen{kept_per_source[i]}", query, [sources[i]], []))
            kept_per_source[i] += 1
            counts["kept"] += 1
    return examples, counts


def generate_queries(
    corpus: str | Path,
    out: str | Path,
    lm: CausalLM,
    encoder: Encoder,
    config: QueryGenConfig = QueryGenConfig(),
    *,
    batch_size: int = 8,
    limit: int | None = None,
    corpus_limit: int | None = None,
) -> Progress:
    """Generate queries for the first `limit` passages of `corpus`; resumable (see resume.py).

    The round-trip retriever searches the first `corpus_limit` passages (all by default).
    Sampling is seeded per batch, so a resumed run reproduces an uninterrupted one on the
    same machine.
    """
    output = ResumableOutput(out, {
        "step": "queries", "corpus": str(Path(corpus).resolve()), "limit": limit, "corpus_limit": corpus_limit, "llm": lm.name,
        "retriever": encoder.spec.name, "batch_size": batch_size, **asdict(config),
    })
    if output.progress.finished:
        return output.progress
    passages = load_passages(corpus, corpus_limit)
    sources = passages[:limit] if limit is not None else passages
    dense = DenseCorpus.encode(encoder, passages, config.dim) if config.round_trip_k is not None else None
    seen = {normalize_query(e.query) for e in output.written()}

    def process(batch_index: int, batch: list[Passage]) -> tuple[list[TrainingExample], dict[str, int]]:
        prompts = [build_prompt(lm, lm.truncate(p.content(), config.max_passage_tokens)) for p in batch]
        completions = lm.generate(
            prompts, max_new_tokens=config.max_new_tokens, num_return_sequences=config.samples_per_passage,
            temperature=config.temperature, top_p=config.top_p, seed=config.seed * 1_000_003 + batch_index,
        )
        parsed = [[parse_query(ANSWER_PREFIX + c, config.min_words, config.max_words) for c in per] for per in completions]
        return select_queries(encoder, dense, batch, parsed, seen, config)

    return run_batches(output, sources, process, batch_size=batch_size, total=len(sources), desc="queries")


def _row(corpus: DenseCorpus, passage: Passage) -> int:
    row = corpus.position(passage.docid)
    if row is None:
        raise ValueError(f"passage {passage.docid!r} is not in the round-trip corpus")
    return row

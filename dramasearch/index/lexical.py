"""The lexical (BM25) side of an index built with `--bm25`: term postings per segment.

    segments/<name>/
      bm25.terms.bin + bm25.terms.off.npy  the segment's terms (UTF-8, sorted) and their byte offsets
      bm25.ptr.npy      int64 [terms + 1]: postings of term t are [ptr[t], ptr[t + 1])
      bm25.docs.npy     int32 [postings]: document number in the segment (ascending within a term)
      bm25.tf.npy       int32 [postings]: how often the term occurs in that document
      bm25.len.npy      int32 [documents]: document length in tokens (after stopwords)
      bm25.json         written last: tokenizer/BM25 settings, counts, size and sha256 of every file

Why raw term frequencies and not bm25s's own saved index: bm25s stores finished scores, with
the IDF and average length of the corpus it was given baked in. A living index has several
segments and tombstones, so those statistics change with every add and delete. Keeping term
frequencies lets search compute BM25 with corpus-wide statistics of the live documents of the
pinned generation (N, document frequency, average length), which makes scores identical to
bm25s run on exactly the live documents, whatever the segment layout. Segments stay
immutable: deletes reuse the segment tombstones, compact and refresh carry postings over
without re-reading text. Tokenization is bm25s's (lowercase, `\\w\\w+` tokens, English
stopwords, Snowball English stemmer from PyStemmer); the lexical unit is the whole document
(`title + " " + text`), also in chunk mode. Nothing is pickled: .npy without objects, JSON.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import numpy as np

from ..corpus import Document
from ..errors import DramaSearchError, IndexDamagedError, IndexFormatError, UsageError
from ..fsutil import atomic_write_bytes
from .files import file_problem, load_npy, npy_bytes, npy_header_size, sha256_bytes
from .records import read_record, record_bytes
from .segment import DOCROWS, FileInfo

if TYPE_CHECKING:
    from .snapshot import Snapshot

SIDECAR = "bm25.json"
TERMS, TERM_OFFSETS, POINTERS, DOCS, FREQS, LENGTHS = (
    "bm25.terms.bin", "bm25.terms.off.npy", "bm25.ptr.npy", "bm25.docs.npy", "bm25.tf.npy", "bm25.len.npy")
TOKENIZE_BATCH = 1_000
REBUILD_HINT = "rebuild it with `dramasearch build-index CORPUS -o NEW_INDEX --bm25` (BuildSettings(bm25=True))"


@dataclass(frozen=True)
class LexicalConfig:
    """Tokenizer and BM25 settings, recorded in the generation (settings["bm25"]) and in each segment.

    k1=0.9, b=0.4 are Anserini/Pyserini's defaults (the shared data's reference scores use them);
    the term-frequency and IDF formulas are Lucene's (bm25s method "lucene").
    """

    k1: float = 0.9
    b: float = 0.4
    stopwords: str = "en"
    stemmer: str | None = "english"  # a PyStemmer algorithm, or None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "LexicalConfig":
        return cls(**{f.name: raw[f.name] for f in dataclasses.fields(cls) if f.name in raw})


def tokenizer(config: LexicalConfig) -> Callable[[list[str]], list[list[str]]]:
    """bm25s's tokenizer with the configured stopwords and stemmer: texts -> lists of terms."""
    try:
        import bm25s
    except ImportError:
        raise DramaSearchError("BM25 needs the bm25s package: pip install bm25s PyStemmer") from None
    stemmer = None
    if config.stemmer:
        try:
            import Stemmer
        except ImportError:
            raise DramaSearchError(f"this BM25 index stems with the {config.stemmer!r} Snowball stemmer: "
                                   "pip install PyStemmer") from None
        if config.stemmer not in Stemmer.algorithms():
            raise UsageError("bm25_stemmer", f"unknown stemmer {config.stemmer!r}; choose one of "
                             f"{', '.join(sorted(Stemmer.algorithms()))}, or none")
        stemmer = Stemmer.Stemmer(config.stemmer)

    def tokenize(texts: list[str]) -> list[list[str]]:
        return bm25s.tokenize(texts, stopwords=config.stopwords, stemmer=stemmer, return_ids=False,
                              show_progress=False)

    return tokenize


@dataclass(frozen=True)
class Postings:
    """A segment's term-major table in memory (or memory-mapped when read back)."""

    terms: list[str]  # sorted
    ptr: np.ndarray  # int64 [terms + 1]
    docs: np.ndarray  # int32 [postings]
    tf: np.ndarray  # int32 [postings]
    lengths: np.ndarray  # int32 [documents]

    @property
    def documents(self) -> int:
        return len(self.lengths)


def _assemble(terms: Sequence[str], term_of: np.ndarray, docs: np.ndarray, tf: np.ndarray,
              lengths: np.ndarray) -> Postings:
    """Postings from (term number, document, tf) triples: terms sorted, documents ascending per term."""
    order = sorted(range(len(terms)), key=terms.__getitem__)
    rank = np.empty(len(terms), dtype=np.int64)
    rank[order] = np.arange(len(terms))
    term_of = rank[term_of] if len(term_of) else term_of.astype(np.int64)
    by = np.lexsort((docs, term_of))
    ptr = np.zeros(len(terms) + 1, dtype=np.int64)
    np.cumsum(np.bincount(term_of, minlength=len(terms)), out=ptr[1:])
    return Postings([terms[i] for i in order], ptr, docs[by].astype(np.int32), tf[by].astype(np.int32),
                    np.asarray(lengths, dtype=np.int32))


def postings_from_documents(documents: Iterable[Document], config: LexicalConfig) -> Postings:
    """Tokenize documents (in segment order) into postings; memory grows with the postings only."""
    tokenize = tokenizer(config)
    vocab: dict[str, int] = {}
    term_parts, doc_parts, tf_parts, lengths = [], [], [], []
    batch: list[str] = []

    def flush() -> None:
        for tokens in tokenize(batch):
            counts = Counter(tokens)
            term_parts.append(np.fromiter((vocab.setdefault(t, len(vocab)) for t in counts), np.int64, len(counts)))
            tf_parts.append(np.fromiter(counts.values(), np.int64, len(counts)))
            doc_parts.append(np.full(len(counts), len(lengths), dtype=np.int64))
            lengths.append(len(tokens))
        batch.clear()

    for doc in documents:
        batch.append(doc.content())
        if len(batch) == TOKENIZE_BATCH:
            flush()
    if batch:
        flush()
    cat = lambda parts: np.concatenate(parts) if parts else np.empty(0, np.int64)
    return _assemble(list(vocab), cat(term_parts), cat(doc_parts), cat(tf_parts), np.asarray(lengths))


def select(sources: Sequence[Postings], picks: Sequence[np.ndarray], documents: int) -> Postings:
    """The postings of chosen documents of several sources, renumbered.

    `picks[s][d]` is the new number of source s's document d, or -1 to leave it out (deleted).
    Compact and refresh use this: the text need not be stored, and nothing is re-tokenized.
    """
    vocab: dict[str, int] = {}
    term_parts, doc_parts, tf_parts = [], [], []
    lengths = np.full(documents, -1, dtype=np.int64)
    for src, new_of_old in zip(sources, picks):
        local = np.fromiter((vocab.setdefault(t, len(vocab)) for t in src.terms), np.int64, len(src.terms))
        term_of = np.repeat(local, np.diff(src.ptr))
        new_docs = new_of_old[np.asarray(src.docs)]
        keep = new_docs >= 0
        term_parts.append(term_of[keep])
        doc_parts.append(new_docs[keep])
        tf_parts.append(np.asarray(src.tf)[keep].astype(np.int64))
        chosen = np.nonzero(new_of_old >= 0)[0]
        lengths[new_of_old[chosen]] = np.asarray(src.lengths)[chosen]
    if (lengths < 0).any():
        raise IndexFormatError(f"{int((lengths < 0).sum())} documents of the new segment have no lexical source; "
                               "the index is damaged: run `dramasearch verify`")
    term_of, docs, tf = (np.concatenate(p) if p else np.empty(0, np.int64) for p in (term_parts, doc_parts, tf_parts))
    used = np.zeros(len(vocab), dtype=bool)
    used[term_of] = True  # terms only deleted documents had are dropped
    renumber = np.cumsum(used) - 1
    terms = [t for t, u in zip(vocab, used.tolist()) if u]
    return _assemble(terms, renumber[term_of], docs, tf, lengths)


def write_postings(folder: Path, postings: Postings, config: LexicalConfig) -> dict:
    """Write the files atomically, then the sidecar (the segment's lexical part exists once it does)."""
    term_bytes = [t.encode("utf-8", "surrogatepass") for t in postings.terms]
    offsets = np.zeros(len(term_bytes) + 1, dtype=np.uint64)
    np.cumsum([len(t) for t in term_bytes], out=offsets[1:])
    payloads = {TERMS: b"".join(term_bytes), TERM_OFFSETS: npy_bytes(offsets), POINTERS: npy_bytes(postings.ptr),
                DOCS: npy_bytes(postings.docs), FREQS: npy_bytes(postings.tf), LENGTHS: npy_bytes(postings.lengths)}
    files = {}
    for name, payload in payloads.items():
        atomic_write_bytes(folder / name, payload)
        header = npy_header_size(payload) if name.endswith(".npy") else 0
        files[name] = dataclasses.asdict(FileInfo(len(payload), sha256_bytes(payload), header))
    sidecar = {"config": config.to_dict(), "documents": postings.documents, "terms": len(postings.terms),
               "postings": int(postings.ptr[-1]), "files": files}
    atomic_write_bytes(folder / SIDECAR, record_bytes(sidecar))
    return sidecar


def read_sidecar(folder: Path) -> dict:
    return read_record(folder / SIDECAR, "BM25 sidecar (the generation says the index keeps BM25 postings)")


def read_postings(folder: Path, config: LexicalConfig, documents: int) -> Postings:
    """A segment's postings, checked against its sidecar (sizes, settings, document count)."""
    sidecar = read_sidecar(folder)
    if LexicalConfig.from_dict(sidecar["config"]) != config or sidecar["documents"] != documents:
        raise IndexFormatError(f"{folder / SIDECAR}: settings or document count ({sidecar['documents']}) differ "
                               f"from the generation ({documents} documents); the index is damaged: "
                               "run `dramasearch verify`")
    data = (folder / TERMS).read_bytes()
    offsets = load_npy(folder / TERM_OFFSETS).tolist()
    terms = [data[offsets[i]:offsets[i + 1]].decode("utf-8", "surrogatepass") for i in range(len(offsets) - 1)]
    mapped = lambda name: np.load(folder / name, mmap_mode="r", allow_pickle=False)
    return Postings(terms, load_npy(folder / POINTERS), mapped(DOCS), mapped(FREQS), load_npy(folder / LENGTHS))


def lexical_problems(folder: Path, full: bool, cached: bool = True) -> list[str]:
    """What is wrong with a segment's BM25 files: the sidecar's own checksum, then each file's
    size (and sha256 when `full`), as for the segment's other files."""
    try:
        sidecar = read_sidecar(folder)
    except IndexDamagedError as exc:
        return [str(exc).splitlines()[0]]
    found = [file_problem(folder / name, info, full, cached) for name, info in sidecar["files"].items()]
    return [p for p in found if p]


def generation_config(settings: dict) -> LexicalConfig | None:
    raw = settings.get("bm25")
    return None if raw is None else LexicalConfig.from_dict(raw)


# --- writers' hooks ---------------------------------------------------------------------------------

def write_from_documents(folder: Path, documents: Iterable[Document], config: LexicalConfig) -> dict:
    """build and add: the new segment's postings from the documents it was encoded from."""
    return write_postings(folder, postings_from_documents(documents, config), config)


def carry_over(folder: Path, snap: "Snapshot", order: Iterable[tuple[int, int]], documents: int,
               config: LexicalConfig) -> dict:
    """compact and refresh: the new segment's document j is `order[j]` = (segment, document) of `snap`."""
    picks = [np.full(s.info.documents, -1, dtype=np.int64) for s in snap.segments]
    count = 0
    for new, (i, doc) in enumerate(order):
        picks[i][doc] = new
        count += 1
    if count != documents:
        raise IndexFormatError(f"{folder}: {count} documents found for a segment of {documents}")
    sources = [read_postings(s.folder, config, s.info.documents) for s in snap.segments]
    return write_postings(folder, select(sources, picks, documents), config)


# --- search ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LexicalHit:
    score: float
    segment: int  # position in the snapshot
    doc: int  # document number in the segment


class LexicalReader:
    """BM25 over the live documents of one pinned generation (a Snapshot), with its statistics.

    Per-segment postings are loaded once and reused by the next generation's reader when the
    segment is the same; live masks and corpus statistics belong to the generation.
    """

    def __init__(self, snap: "Snapshot", previous: "LexicalReader | None" = None):
        config = generation_config(snap.settings)
        if config is None:
            raise UsageError("hybrid", f"{snap.dir.root} was built without --bm25, so it has no lexical index for "
                                       f"hybrid or BM25 search; {REBUILD_HINT}")
        self.config = config
        self._tokenize = tokenizer(config)
        reuse = previous._postings if previous is not None and previous.config == config else {}
        self._postings: dict[str, Postings] = {}
        self._vocab: dict[str, dict[str, int]] = {}
        self.live: list[np.ndarray] = []
        for i, segment in enumerate(snap.segments):
            postings = reuse.get(segment.name) or read_postings(segment.folder, config, segment.info.documents)
            self._postings[segment.name] = postings
            self._vocab[segment.name] = (previous._vocab[segment.name] if segment.name in reuse
                                         else {t: n for n, t in enumerate(postings.terms)})
            self.live.append(_live_documents(snap, i))
        self.names = [s.name for s in snap.segments]
        self.documents = int(sum(m.sum() for m in self.live))
        total = sum(int(self._postings[n].lengths[m].astype(np.int64).sum()) for n, m in zip(self.names, self.live))
        self.average_length = total / self.documents if self.documents else 0.0

    def search(self, queries: Sequence[str], depth: int) -> list[list[LexicalHit]]:
        """Top-`depth` live documents per query by BM25 (documents with no query term are left out)."""
        return [self._one(tokens, depth) for tokens in self._tokenize(list(queries))]

    def scores(self, query: str) -> list[np.ndarray]:
        """BM25 of every document of every segment for one query (deleted documents: -inf)."""
        return self._segment_scores(self._tokenize([query])[0])

    def _segment_scores(self, tokens: list[str]) -> list[np.ndarray]:
        counts = Counter(tokens)  # a repeated query term counts as often as it is repeated (as bm25s does)
        slices: list[dict[str, tuple[np.ndarray, np.ndarray]]] = []
        df = Counter()
        for name, live in zip(self.names, self.live):
            postings, vocab, found = self._postings[name], self._vocab[name], {}
            for term in counts:
                t = vocab.get(term)
                if t is None:
                    continue
                lo, hi = int(postings.ptr[t]), int(postings.ptr[t + 1])
                docs = np.asarray(postings.docs[lo:hi])
                alive = live[docs]
                found[term] = (docs[alive], np.asarray(postings.tf[lo:hi])[alive].astype(np.float64))
                df[term] += int(alive.sum())
            slices.append(found)
        n, k1, b = self.documents, self.config.k1, self.config.b
        out = []
        for name, live, found in zip(self.names, self.live, slices):
            lengths = self._postings[name].lengths
            scores = np.zeros(len(live), dtype=np.float64)
            for term, (docs, tf) in found.items():
                idf = np.log(1.0 + (n - df[term] + 0.5) / (df[term] + 0.5))
                norm = k1 * (1.0 - b + b * lengths[docs] / self.average_length)
                scores[docs] += counts[term] * idf * tf / (tf + norm)
            scores[~live] = -np.inf
            out.append(scores)
        return out

    def _one(self, tokens: list[str], depth: int) -> list[LexicalHit]:
        per_segment = self._segment_scores(tokens) if self.documents else []
        candidates = []
        for i, scores in enumerate(per_segment):
            matched = np.nonzero(scores > 0)[0]
            if len(matched) > depth:
                matched = matched[np.argpartition(-scores[matched], depth - 1)[:depth]]
            candidates += [(float(scores[d]), i, int(d)) for d in matched.tolist()]
        candidates.sort(key=lambda c: (-c[0], c[1], c[2]))
        return [LexicalHit(s, i, d) for s, i, d in candidates[:depth]]


def _live_documents(snap: "Snapshot", i: int) -> np.ndarray:
    """bool [documents] of segment i: False where the document's rows are tombstoned."""
    segment = snap.segments[i]
    live = np.ones(segment.info.documents, dtype=bool)
    deleted = snap.deleted_rows(i)
    if len(deleted):
        if segment.info.chunked:
            first_rows = load_npy(segment.folder / DOCROWS)
            deleted = np.unique(np.searchsorted(first_rows, deleted, side="right") - 1)
        live[deleted] = False
    return live

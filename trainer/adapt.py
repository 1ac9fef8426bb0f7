"""`adapt(settings)`: make a retriever better at one corpus without labels, then refresh an index.

The whole DRAMA-style loop, composed from the trainer's parts (nothing here re-implements them):

    1 index   a dramasearch index of CORPUS with the starting model, for mining: --index itself when
              it is one, else built in the work folder (build_index; a rerun reuses it)
    2 augment cropped-sentence queries (crop.py, inverse-cloze style: the sentence is removed from
              its positive, so the model learns context, not string matching); optionally title
              queries (titles.py: a title is a query for its body) and LLM queries (queries.py,
              round-trip filtered)
    3 mine    hard negatives and each query's rank for its own document (mining.py). With
              hybrid_teacher (the CPU default) the ranking is the model blended with BM25 (teacher.py):
              its top 10, each passage with its teacher score, which step 5 distils, plus
              teacher_hard_negatives from ranks 30-50 under the relative-margin filter against false
              negatives, which step 5 calls wrong. Without it (the GPU default), ranks 30-50 of the
              index's own vectors under that filter
    4 mix     the sources mixed (mix.py; every LLM query when the sources overflow the cap, see
              mix_plan; hard_queries_first keeps a cut source's ranks 2-20 first), then split: a dev
              set carved from the augmented data
              (held-out queries, their documents held out of training), the rest for training.
              The collection's own queries and qrels are never read.
    5 train   InfoNCE + Matryoshka (train.py) with the zero-shot baseline measured first on that dev
              set; the best checkpoint that passes the bar is chosen, else the baseline
    6 export  the model to OUT (export.py): by default ½ x the start + ½ x the last step (WiSE-FT
              weight averaging, average.py; export_from, fine_tuned_weight), or the chosen checkpoint
              (export_from="best"); anything but the chosen checkpoint itself is scored on the dev
              set and must pass the same bar, else the starting model is kept and the report says so
    7 refresh INDEX re-encoded with it, when one is given (dramasearch.index.refresh)

Every step is resumable after `kill -9`: steps 2-4 write through resume.py's progress files (a
finished output is skipped, an unfinished one continues, a changed setting is refused), step 1
and 7 resume through dramasearch's own shard work files, step 5 through train.py's checkpoint,
step 6 is one atomic folder. Work files live in `work_dir` (default `OUT.adapt-work`).

Defaults for a ~5k-document corpus on this 2-core CPU with MiniLM, from the cranfield run
(benchmarks/RESULTS.md §13; 1.4k documents, machine at load ~3.5): mining ran at ~21 queries/s,
so 5k documents take ~4 min; the index ~28 docs/s, ~3 min; 5 dev evaluations of the
1,000-document dev corpus ~3 min; a training step of 32 queries + 32 x (1 + 3) passages took
75-86 s (fwd + bwd, bf16 autocast: far slower than the 3x-encoding estimate first assumed).
So the CPU cap is 1,200 pairs = 37 steps, ~50 min of training: ~1 hour in all at that load.
On a GPU the caps rise (20,000 pairs, batch 64, 7 negatives, LLM queries for 2,000 passages).
"""
from __future__ import annotations

import dataclasses
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dramasearch import validate
from dramasearch.errors import IndexFormatError, UsageError
from dramasearch.fsutil import atomic_write_bytes
from dramasearch.matryoshka import prepare

from .augment.crop import CropConfig, crop_passage
from .augment.mining import INFORMATIVE_RANKS, MiningConfig, is_informative, mine_batch
from .augment.mix import MixSource, informative_first, mix_counts, mix_examples
from .augment.resume import ResumableOutput, progress_path, run_batches
from .augment.retrieval import DenseCorpus
from .augment.titles import MIN_WORDS as TITLE_MIN_WORDS, title_queries
from .data import Passage, TrainingExample, read_examples, write_examples

WIDE_WINDOW = (30, 50)  # DRAMA's negative ranks, for corpora of at least SMALL_CORPUS documents
TEACHER_WINDOW = (1, 10)  # a hybrid teacher's candidates: the top ranks, where it and the model disagree most
TEACHER_WEIGHT = 0.5  # the dense share of the hybrid teacher, as in `dramasearch search --hybrid linear`
SMALL_CORPUS = 100
MIN_EXAMPLES = 10  # fewer cannot make a dev set (a fifth of them) and a training batch
MAX_CROPS = 8  # cropped queries per passage at most, however small the corpus
EXPORT_FROM = ("best", "last")


@dataclass(frozen=True)
class DeviceDefaults:
    """What `None` means for the size settings, by device (see the module doc for the arithmetic)."""

    llm_passages: int
    max_train_examples: int
    batch_size: int
    negatives_per_query: int
    llm_batch_size: int  # passages per generate call (each sampled several times)
    hybrid_teacher: bool  # what hybrid_teacher=None means
    teacher_hard_negatives: int  # what teacher_hard_negatives=None means, with a hybrid teacher


# The CPU mines with the hybrid teacher and 1 hard-label negative: it beat the crop-only default on two
# paired seeds (RESULTS §13.18-13.19). The GPU defaults have not been measured with it, so they stay.
CPU_DEFAULTS = DeviceDefaults(llm_passages=0, max_train_examples=1200, batch_size=32, negatives_per_query=3,
                              llm_batch_size=8, hybrid_teacher=True, teacher_hard_negatives=1)
# 64 passages per generate call in one process wrote no more per second on an H200 than four processes
# at 32 together, and peaked at 27 GB (RESULTS §13.14), so the smaller batch stays.
GPU_DEFAULTS = DeviceDefaults(llm_passages=2000, max_train_examples=20000, batch_size=64, negatives_per_query=7,
                              llm_batch_size=32, hybrid_teacher=False, teacher_hard_negatives=0)


@dataclass
class AdaptSettings:
    corpus: str  # any corpus dramasearch reads (BEIR folder, jsonl, tsv, parquet, folder of .txt)
    model: str  # the starting encoder: alias, hub id or folder
    output: str  # the exported, adapted encoder folder
    index: str | None = None  # an index to refresh with the adapted model at the end
    work_dir: str | None = None  # step outputs; default OUT.adapt-work
    device: str | None = None  # default: cuda when available, else cpu
    llm_queries: int | None = None  # passages to write LLM queries for; None: 0 on CPU, 2000 on GPU
    llm: str = "smollm2"  # causal LM for queries: "smollm2", a .gguf, a folder or a hub id
    crops_per_passage: int | None = None  # None: 1, more for a corpus too small to fill the cap; 0: no crops
    title_queries: bool = False  # each document's title as a query for its body (no-op without titles)
    # when a source overflows the mix, keep first the queries whose positive the starting model ranks
    # 2-20 (INFORMATIVE_RANKS), not a random subset: a query it already answers at rank 1 teaches little.
    # Off: it did not beat the default on its pre-registered test (RESULTS §13.16)
    hard_queries_first: bool = False
    # mine with a hybrid teacher (the starting model blended with BM25, augment/teacher.py): negatives from
    # its top ranks (TEACHER_WINDOW), each with its teacher score, which training distils (losses.py).
    # None: the device's default (on for CPU, off on GPU); False: the wide window under the hard label
    hybrid_teacher: bool | None = None
    # with hybrid_teacher: this many of each query's negatives come from the wide window (ranks 30-50 of
    # the teacher, margin-filtered, at most this many kept) and stay under the hard label; the rest from
    # TEACHER_WINDOW, distilled. 0: all from TEACHER_WINDOW; None: the device's default (1 on CPU, 0 on GPU)
    teacher_hard_negatives: int | None = None
    negative_ranks: tuple[int, int] | None = None  # None: (30, 50), scaled down for corpora under 100 docs
    # drop negatives scoring above this x the positive's score; with hybrid_teacher only those of the wide
    # window (teacher_hard_negatives), since the teacher's scores judge its own top ranks
    margin_ratio: float | None = 0.95
    max_train_examples: int | None = None  # None: 1,200 on CPU, 20,000 on GPU
    max_steps: int | None = None  # None: one pass over the training examples
    batch_size: int | None = None  # None: 32 on CPU, 64 on GPU
    negatives_per_query: int | None = None  # None: 3 on CPU, 7 on GPU
    learning_rate: float = 2e-5
    temperature: float = 0.05  # MiniLM's own scale 20; 0.1 lost and 0.025 tied on paired draws (RESULTS §13.13)
    attention_dropout: float | None = None  # while training; None = the model's own (TrainSettings)
    warmup_ratio: float = 0.1
    matryoshka_dims: tuple[int, ...] = ()
    max_length: int | None = None  # training and exported max length; None: the model's
    dev_queries: int = 200  # held-out augmented queries for model selection
    dev_corpus_size: int = 1000  # the dev corpus: held-out documents, their negatives, then random others
    evaluations: int = 4  # dev evaluations after the baseline, evenly spaced
    # a checkpoint must beat the starting model on this share of bootstrap resamples of the dev
    # queries (a small dev set's higher mean can be one query's luck); 0 = any higher mean
    min_dev_confidence: float = 0.95
    # the export is (1 - w) * start + w * a checkpoint (WiSE-FT, trainer/average.py); 1: the checkpoint.
    # ½ start + ½ last is the default: it beat the dev set's chosen checkpoint on draws that did not
    # choose it (benchmarks/RESULTS.md §13.12)
    fine_tuned_weight: float = 0.5
    # that checkpoint: "last" (the final step) or "best" (the dev set's choice); anything but the chosen
    # checkpoint itself must pass the bar on the dev set, and the starting model is kept when it fails
    export_from: str = "last"
    seed: int = 0
    show_progress: bool = True

    @property
    def work(self) -> Path:
        return Path(self.work_dir) if self.work_dir else Path(f"{self.output}.adapt-work")

    def check(self) -> None:
        """Argument rules, before any model loads or anything is written."""
        for name in ("corpus", "model", "output"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise UsageError(name, f"expected a non-empty path or name, got {getattr(self, name)!r:.40}")
        validate.check_device(self.device)
        validate.optional_integer("llm_queries", self.llm_queries, minimum=0)
        validate.optional_integer("crops_per_passage", self.crops_per_passage, minimum=0)
        if self.crops_per_passage == 0 and not self.llm_queries and not self.title_queries:
            raise UsageError("crops_per_passage", "0 turns cropped queries off, which leaves no training data "
                                                  "unless --llm-queries N or --title-queries is given too")
        for name in ("max_train_examples", "max_steps", "batch_size", "max_length"):
            validate.optional_integer(name, getattr(self, name))
        validate.optional_integer("negatives_per_query", self.negatives_per_query, minimum=0)
        validate.optional_integer("teacher_hard_negatives", self.teacher_hard_negatives, minimum=0)
        validate.integer("dev_queries", self.dev_queries, minimum=1)
        validate.integer("dev_corpus_size", self.dev_corpus_size, minimum=2)
        validate.integer("evaluations", self.evaluations, minimum=1)
        validate.integer("seed", self.seed, minimum=0)
        for dim in self.matryoshka_dims:
            validate.integer("matryoshka_dims", dim)
        if self.negative_ranks is not None:
            lo, hi = self.negative_ranks
            validate.integer("negative_ranks", lo)
            validate.integer("negative_ranks", hi, minimum=lo)
        _positive("learning_rate", self.learning_rate)
        _positive("temperature", self.temperature)
        if self.margin_ratio is not None:
            _positive("margin_ratio", self.margin_ratio)
        _positive("fine_tuned_weight", self.fine_tuned_weight)
        if self.fine_tuned_weight > 1:
            raise UsageError("fine_tuned_weight", f"must be in (0, 1], got {self.fine_tuned_weight}")
        if self.export_from not in EXPORT_FROM:
            raise UsageError("export_from", f"must be one of {', '.join(EXPORT_FROM)}, got {self.export_from!r:.40}")
        if not 0 <= self.min_dev_confidence < 1:
            raise UsageError("min_dev_confidence", f"must be in [0, 1), got {self.min_dev_confidence}")
        if not 0 <= self.warmup_ratio < 1:
            raise UsageError("warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        if self.attention_dropout is not None and not 0 <= self.attention_dropout < 1:
            raise UsageError("attention_dropout", f"must be in [0, 1), got {self.attention_dropout}")
        if Path(self.work).resolve() == Path(self.output).resolve():
            raise UsageError("work_dir", "must differ from the output folder (the export replaces that folder)")
        out = Path(self.output)
        if out.is_file() or (out.is_dir() and any(out.iterdir()) and not (out / _metadata_file()).is_file()):
            raise UsageError("output", f"{out} exists and is not an encoder folder written by dramasearch; "
                                       "choose a new folder (the export replaces it)")
        if self.index is not None:
            from dramasearch.index.generation import IndexDir

            if not IndexDir(self.index).is_index():
                raise IndexFormatError(f"{self.index}: not a dramasearch index (no dramasearch-index.json); "
                                       "build it first with `dramasearch build-index`, or leave out --index")


@dataclass
class AdaptReport:
    output: str
    work_dir: str
    device: str
    skipped: list[str] = field(default_factory=list)  # steps whose finished output was reused
    seconds: dict[str, float] = field(default_factory=dict)  # per step, this run
    corpus_documents: int = 0
    crop_examples: int = 0
    title_examples: int = 0
    llm_examples: int = 0
    mined: dict[str, dict[str, int]] = field(default_factory=dict)  # per source: examples, drop counts
    hybrid_teacher: bool = False  # mined with the hybrid teacher (the setting as resolved for the device)
    negative_ranks: tuple[int, int] = WIDE_WINDOW
    hard_negative_ranks: tuple[int, int] | None = None  # with a hybrid teacher's hard-label window
    train_examples: int = 0
    train_informative: int = 0  # of them, mined at INFORMATIVE_RANKS
    dev_queries: int = 0
    dev_documents: int = 0
    steps: int = 0
    batch_size: int = 0
    negatives_per_query: int = 0
    baseline: float | None = None  # dev nDCG@10 of the starting model
    best: float | None = None
    best_step: int | None = None
    baseline_kept: bool = False  # no checkpoint beat the baseline (confidently): OUT holds the starting model
    candidate_step: int | None = None  # the checkpoint the export was built from, whether or not it passed the bar
    fine_tuned_weight: float | None = None  # when OUT averages that checkpoint with the start
    exported_dev: float | None = None  # dev nDCG@10 of the export, when it is not the chosen checkpoint itself
    exported_dev_confidence: float | None = None  # its share of bootstrap resamples beating the baseline
    selection_note: str = ""  # why a checkpoint with a higher dev score was passed over, if one was
    refreshed_generation: int | None = None

    @property
    def exported_step(self) -> int | None:
        """The checkpoint OUT comes from (None: the starting model)."""
        return None if self.baseline_kept else self.candidate_step

    def summary(self) -> str:
        windows = "{}-{}".format(*self.negative_ranks)
        if self.hard_negative_ranks:
            windows += ", unscored {}-{}".format(*self.hard_negative_ranks)
        lines = [
            f"corpus: {self.corpus_documents} documents; augmented: {self.crop_examples} cropped-sentence queries"
            + (f", {self.title_examples} title queries" if self.title_examples else "")
            + (f", {self.llm_examples} LLM queries" if self.llm_examples else ""),
            "mined (negative ranks {}): {}".format(windows, "; ".join(
                f"{k}: {v.get('examples', 0)} kept, {v.get('dropped_by_margin', 0)} negatives dropped by the margin, "
                f"{v.get('dropped_few_negatives', 0)} queries without enough negatives" for k, v in self.mined.items())),
            f"training: {self.train_examples} examples ({self.train_informative} with the positive mined at ranks "
            f"{INFORMATIVE_RANKS[0]}-{INFORMATIVE_RANKS[1]}), {self.steps} steps of batch {self.batch_size} "
            f"with {self.negatives_per_query} hard negatives; dev: {self.dev_queries} held-out queries over "
            f"{self.dev_documents} documents",
        ]
        if self.baseline is not None:
            lines.append(f"dev nDCG@10: baseline {self.baseline:.4f}, best {self.best:.4f} at step {self.best_step}")
        if self.selection_note:
            lines.append(self.selection_note)
        if self.exported_dev is not None:
            what = f"step {self.candidate_step}" if self.fine_tuned_weight is None else (
                f"{1 - self.fine_tuned_weight:g} x the starting model + {self.fine_tuned_weight:g} x step {self.candidate_step}")
            lines.append(f"{'exported' if not self.baseline_kept else 'not exported'}: {what}, dev nDCG@10 "
                         f"{self.exported_dev:.4f} (beats the baseline on {self.exported_dev_confidence:.0%} of "
                         "bootstrap resamples)")
        if self.baseline_kept:
            lines.append("training did not beat the starting model on the dev set: "
                         f"{self.output} holds the starting model (baseline kept)")
        lines.append(f"model: {self.output}")
        if self.refreshed_generation is not None:
            lines.append(f"index refreshed: generation {self.refreshed_generation}")
        if self.skipped:
            lines.append(f"reused finished steps: {', '.join(self.skipped)}")
        lines.append("time: " + ", ".join(f"{k} {v:.0f}s" for k, v in self.seconds.items()))
        return "\n".join(lines)


def adapt(settings: AdaptSettings) -> AdaptReport:
    """Run (or resume) the loop of the module doc; returns what each step did."""
    import torch

    settings.check()
    device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
    defaults = GPU_DEFAULTS if device.startswith("cuda") else CPU_DEFAULTS
    negatives = _or(settings.negatives_per_query, defaults.negatives_per_query)
    settings = _resolve_teacher(settings, defaults, negatives)
    if settings.teacher_hard_negatives and settings.teacher_hard_negatives >= negatives:
        raise UsageError("teacher_hard_negatives", f"{settings.teacher_hard_negatives} of {negatives} negatives per "
                                                   "query leaves none for the teacher; give fewer, or more --negatives")
    work = settings.work
    work.mkdir(parents=True, exist_ok=True)
    report = AdaptReport(output=settings.output, work_dir=str(work), device=device)
    report.hybrid_teacher = settings.hybrid_teacher
    report.batch_size = _or(settings.batch_size, defaults.batch_size)
    report.negatives_per_query = negatives
    corpus = str(Path(settings.corpus).resolve())

    side = MiningSide(settings, work / "index", device, report)
    cap = _or(settings.max_train_examples, defaults.max_train_examples)
    with _timed(report, "augment", side):
        sources = {"crop": _crop(settings, cap + settings.dev_queries, corpus, side, work / "crop.jsonl", report)}
        if settings.title_queries:
            report.title_examples = _count(_titles(corpus, side, work / "title.jsonl", report))
            if report.title_examples:  # a corpus without titles mixes exactly as crops alone
                sources["title"] = work / "title.jsonl"
        llm_passages = _or(settings.llm_queries, defaults.llm_passages)
        if llm_passages:
            sources["llm"] = _llm_queries(settings, corpus, side, llm_passages, work / "llm.jsonl", device,
                                          defaults.llm_batch_size, report)
    report.crop_examples = _count(sources["crop"])
    report.llm_examples = _count(sources["llm"]) if "llm" in sources else 0
    report.negative_ranks = settings.negative_ranks or (
        TEACHER_WINDOW if settings.hybrid_teacher else negative_window(report.corpus_documents))

    with _timed(report, "mine", side):
        if settings.hybrid_teacher:  # every window negative kept: training draws its negatives from them
            hard = settings.teacher_hard_negatives
            report.hard_negative_ranks = _hard_window(report.negative_ranks, report.corpus_documents) if hard else None
            config = MiningConfig(negative_ranks=report.negative_ranks, teacher_weight=TEACHER_WEIGHT,
                                  hard_ranks=report.hard_negative_ranks, max_negatives=hard or None,
                                  margin_ratio=settings.margin_ratio if hard else None)
        else:
            config = MiningConfig(negative_ranks=report.negative_ranks, margin_ratio=settings.margin_ratio,
                                  max_negatives=max(report.negatives_per_query, 1))
        mined = {name: _mine(side, path, work / f"mined-{name}.jsonl", config, report) for name, path in sources.items()}

    with _timed(report, "mix", side):
        split = _mix_and_split(settings, side, mined, work, cap, report)
    report.train_examples, report.dev_queries, report.dev_documents = split["train"], split["dev"], split["dev_documents"]
    report.train_informative = split.get("train_informative", 0)
    side.release()

    with _timed(report, "train"):
        trained = _train(settings, work, device, report)
    report.steps = trained.steps
    report.baseline, report.best, report.best_step = trained.baseline, trained.best_score, trained.best_step
    report.baseline_kept = trained.baseline_kept
    report.selection_note = trained.selection_note

    with _timed(report, "export"):
        _export(settings, trained, report)

    if settings.index is not None:
        with _timed(report, "refresh"):
            report.refreshed_generation = _refresh(settings, corpus, report)
    atomic_write_bytes(work / "adapt-report.json", json.dumps(dataclasses.asdict(report), indent=1).encode())
    return report


def crops_per_passage(documents: int, wanted: int) -> int:
    """Cropped queries per passage for `wanted` examples: one when the corpus is big enough,
    else more (distinct sentences, at most MAX_CROPS). At one crop each, ADI's 82 documents gave
    55 training pairs and a single step (benchmarks/RESULTS.md section 13.3)."""
    return max(1, min(MAX_CROPS, -(-wanted // max(documents, 1))))


def negative_window(documents: int) -> tuple[int, int]:
    """DRAMA's ranks 30-50, or for a small corpus the same share of it (ranks 30%-50%, from 2)."""
    if documents >= SMALL_CORPUS:
        return WIDE_WINDOW
    lo = max(2, documents * 3 // 10)
    return lo, max(lo, documents // 2)


def _resolve_teacher(settings: AdaptSettings, defaults: DeviceDefaults, negatives: int) -> AdaptSettings:
    """The settings with the device's teacher defaults in place of None, so every later step reads one value.
    The default hard-label share leaves the teacher at least one negative of `negatives`."""
    teacher = _or(settings.hybrid_teacher, defaults.hybrid_teacher)
    hard = _or(settings.teacher_hard_negatives,
               min(defaults.teacher_hard_negatives, max(negatives - 1, 0)) if teacher else 0)
    if hard and not teacher:  # off by --no-hybrid-teacher or by the device's default
        raise UsageError("teacher_hard_negatives", "splits a hybrid teacher's negatives, and the teacher is off "
                                                   "(--no-hybrid-teacher, or this device's default); give --hybrid-teacher too")
    return dataclasses.replace(settings, hybrid_teacher=teacher, teacher_hard_negatives=hard)


def _hard_window(teacher: tuple[int, int], documents: int) -> tuple[int, int]:
    """The default's window for a hybrid teacher's unscored negatives, past the teacher's own (a small
    corpus's 30%-50% can reach into its top 10)."""
    lo, hi = negative_window(documents)
    lo = max(lo, teacher[1] + 1)
    return lo, max(lo, hi)


# --- step 1: the mining index ---------------------------------------------------------------

class MiningSide:
    """The starting encoder and the mining retriever's document side, loaded on first use only, so a
    rerun whose augmentation, mining and mix are finished loads neither.

    The documents are the stored vectors of an index of the corpus built with the starting model, so
    the corpus is encoded once: --index itself when it already is one (same model fingerprint and max
    length, stored text, one row per document), else adapt's own work index, built (or on a rerun
    reused) here."""

    def __init__(self, settings: AdaptSettings, folder: Path, device: str, report: AdaptReport):
        self.settings, self.folder, self.device, self.report = settings, folder, device, report
        self._encoder = None
        self._dense: DenseCorpus | None = None
        self._lexical = None
        self.seconds = 0.0  # spent building or reading the index (reported apart from the step that needed it)

    def encoder(self):
        if self._encoder is None:
            from dramasearch.models import load_encoder

            self._encoder = load_encoder(self.settings.model, device=self.device, max_length=self.settings.max_length)
        return self._encoder

    def dense(self) -> DenseCorpus:
        if self._dense is None:
            started = time.perf_counter()
            self._dense = self._load()
            self.seconds = time.perf_counter() - started
            self.report.seconds["index"] = round(self.seconds, 1)
        return self._dense

    def lexical(self):
        """BM25 over the mining passages, in their order (the hybrid teacher's other half)."""
        if self._lexical is None:
            from .augment.teacher import LexicalScorer

            self._lexical = LexicalScorer(self.dense().passages)
        return self._lexical

    def release(self) -> None:
        self._encoder = self._dense = self._lexical = None  # free memory before training loads its own copy

    def _load(self) -> DenseCorpus:
        from dramasearch.index.build import BuildSettings, build_index
        from dramasearch.index.generation import IndexDir
        from dramasearch.index.snapshot import Snapshot

        encoder, settings, folder = self.encoder(), self.settings, self.folder
        if settings.index is not None and _usable_for_mining(IndexDir(settings.index).read(), encoder):
            folder = Path(settings.index)
            self.report.skipped.append("index (--index reused)")
        else:
            build_index(BuildSettings(corpus=settings.corpus, output=str(folder), model=settings.model,
                                      store_text=True, max_length=settings.max_length,
                                      show_progress=settings.show_progress), encoder=encoder)
        snap = Snapshot(folder, checks="cheap")
        try:
            if not _usable_for_mining(snap.generation, encoder):
                raise IndexFormatError(f"{folder} was built with another model or settings; delete it "
                                       "(it is adapt's work index)")
            passages, rows = [], []
            for i, segment in enumerate(snap.segments):
                vectors = np.concatenate(list(segment.vector_blocks()))
                for doc, start, _ in snap.live_documents(i):
                    title, text = segment.fields(doc)
                    passages.append(Passage(segment.docid(doc), title, text))
                    rows.append(vectors[start])
        finally:
            snap.close()
        return DenseCorpus(passages, prepare(np.stack(rows), None, encoder.spec.normalize))


def _usable_for_mining(generation, encoder) -> bool:
    return (generation.encoder.get("fingerprint") == encoder.spec.fingerprint
            and generation.encoder.get("max_length") == encoder.spec.max_length
            and bool(generation.settings.get("store_text")) and generation.settings.get("long_doc") == "full")


# --- step 2: augmentation -------------------------------------------------------------------

def _crop(settings: AdaptSettings, wanted: int, corpus: str, side: MiningSide, out: Path, report: AdaptReport) -> Path:
    """Cropped-sentence examples; with crops_per_passage unset, as many per passage as `wanted`
    needs, counted on the passages mining loads anyway (a finished step loads none)."""
    config = CropConfig(remove_from_positive=True, seed=settings.seed)
    chosen = settings.crops_per_passage
    key = {**dataclasses.asdict(config), "queries_per_passage": f"auto for {wanted}" if chosen is None else chosen}
    output = ResumableOutput(out, {"step": "crop", "corpus": corpus, **key})
    if output.progress.finished:
        report.skipped.append("crop")
    else:
        passages = side.dense().passages
        crops = crops_per_passage(len(passages), wanted) if chosen is None else chosen
        config = dataclasses.replace(config, queries_per_passage=crops)
        run_batches(output, passages, lambda _, batch: ([e for p in batch for e in crop_passage(p, config)], {}),
                    batch_size=1000, total=len(passages), desc="crop")
    report.corpus_documents = output.progress.inputs_done
    return out


def _titles(corpus: str, side: MiningSide, out: Path, report: AdaptReport) -> Path:
    output = ResumableOutput(out, {"step": "titles", "corpus": corpus, "min_words": TITLE_MIN_WORDS})
    if output.progress.finished:
        report.skipped.append("titles")
    else:
        passages = side.dense().passages
        run_batches(output, passages, lambda _, batch: (list(title_queries(batch)), {}), batch_size=1000,
                    total=len(passages), desc="titles")
    return out


def _llm_queries(settings: AdaptSettings, corpus: str, side: MiningSide, passages: int, out: Path, device: str,
                 batch_size: int, report: AdaptReport) -> Path:
    from .augment.queries import QueryGenConfig, generate_queries
    from .llm import load_causal_lm

    progress = progress_path(out)  # peek, so a finished run does not load the LLM
    if progress.is_file() and json.loads(progress.read_text(encoding="utf-8")).get("finished"):
        report.skipped.append("llm-queries")
        return out
    lm = load_causal_lm(settings.llm, device=device)
    generate_queries(corpus, out, lm, side.encoder(), QueryGenConfig(seed=settings.seed), limit=passages,
                     batch_size=batch_size)
    return out


# --- step 3: mining ---------------------------------------------------------------------------

def _mine(side: MiningSide, examples: Path, out: Path, config: MiningConfig, report: AdaptReport) -> Path:
    """mining.py's batches over the index's vectors (mine_negatives would re-encode the corpus)."""
    output = ResumableOutput(out, {"step": "mining", "examples": str(examples.resolve()),
                                   "model": side.encoder().spec.fingerprint, "batch_size": 256,
                                   **dataclasses.asdict(config)})
    if output.progress.finished:
        report.skipped.append(f"mine-{examples.stem}")
    progress = run_batches(output, read_examples(examples),
                           lambda _, batch: mine_batch(side.encoder(), side.dense(), batch, config,
                                                       side.lexical() if config.teacher_weight is not None else None),
                           batch_size=256, desc="mining")
    report.mined[examples.stem] = {"examples": progress.examples, **progress.counts}
    return out


# --- step 4: mix and carve the dev set ----------------------------------------------------------

def _mix_and_split(settings: AdaptSettings, side: MiningSide, mined: dict[str, Path], work: Path, cap: int,
                   report: AdaptReport) -> dict[str, int]:
    """Mix the sources, hold out dev queries whose documents no training example uses, write the dev
    corpus (held-out documents as their positives read, their negatives, random others) and train.jsonl."""
    out = work / "train.jsonl"
    config = {"step": "mix", "sources": {k: str(v.resolve()) for k, v in mined.items()}, "cap": cap,
              "dev_queries": settings.dev_queries, "dev_corpus_size": settings.dev_corpus_size, "seed": settings.seed,
              "hard_queries_first": settings.hard_queries_first}
    output = ResumableOutput(out, config)
    if output.progress.inputs_done:  # written in one commit: a crash before finish() lost nothing
        output.finish()
        report.skipped.append("mix")
        return output.progress.counts
    sizes = {k: _count(v) for k, v in mined.items()}
    if not sum(sizes.values()):
        raise UsageError("corpus", f"{settings.corpus}: no training example survived mining; the corpus is too small "
                                   "or its documents have no sentences of 4-64 words")
    counts = mix_plan(sizes, cap + settings.dev_queries)
    sources = dict(mined)
    if settings.hard_queries_first:
        counts, sources = _informative_cut(mined, sizes, counts, cap + settings.dev_queries, work, settings.seed)
    mix_examples([MixSource(sources[k], counts[k], k) for k in sources if counts[k]], work / "mix.jsonl", seed=settings.seed)
    mixed = list(read_examples(work / "mix.jsonl"))
    if len(mixed) < MIN_EXAMPLES:
        raise UsageError("corpus", f"{settings.corpus}: only {len(mixed)} training examples survived mining, fewer "
                                   f"than {MIN_EXAMPLES}; adaptation needs a larger corpus")
    # A dev query holds its document (and every example of it) out of training: a fifth of the
    # documents at most, or several crops per document would leave nothing to train on.
    documents = len({e.positives[0].docid for e in mixed})
    dev, dev_docids = [], set()
    for example in mixed:
        if len(dev) == min(settings.dev_queries, len(mixed) // 5, max(1, documents // 5)):
            break
        docid = example.positives[0].docid
        if docid not in dev_docids:
            dev.append(example)
            dev_docids.add(docid)
    held = {id(e) for e in dev}
    train = [e for e in mixed if id(e) not in held and not dev_docids & {p.docid for p in e.positives}][:cap]
    dev_documents = _write_dev_set(work / "dev", side.dense(), dev, settings.dev_corpus_size, settings.seed)
    counts = {"train": len(train), "dev": len(dev), "dev_documents": dev_documents,
              "train_informative": sum(map(is_informative, train))}
    output.commit(len(mixed), train, counts)
    output.finish()
    return counts


def _informative_cut(mined: dict[str, Path], sizes: dict[str, int], counts: dict[str, int], budget: int, work: Path,
                     seed: int) -> tuple[dict[str, int], dict[str, Path]]:
    """hard_queries_first: the mix cut to `budget` here (not by the split), each source that loses examples
    written down to its share with its most informative queries first (`informative_first`)."""
    if sum(counts.values()) > budget:
        counts = dict(zip(counts, mix_counts(list(counts.values()), list(counts.values()), budget)))
    sources = dict(mined)
    for k in (k for k in mined if 0 < counts[k] < sizes[k]):
        sources[k] = work / f"informative-{k}.jsonl"
        write_examples(sources[k], informative_first(list(read_examples(mined[k])), counts[k], seed=seed))
    return counts, sources


def mix_plan(sizes: dict[str, int], budget: int) -> dict[str, int]:
    """How many examples each source gives the mix, of which the split keeps `budget` (dev + train).

    In proportion to size, LLM queries were 77 of 1,200 trained pairs on Vaswani, while on Cranfield,
    where all 161 fit, they tripled the gain (RESULTS §13.6). So when the sources overflow the budget,
    every LLM query goes in and the other sources fill the rest in proportion to their sizes; otherwise
    all of every source, shuffled together (crops alone: as before this rule). Vaswani with every LLM
    query in still gained nothing (§13.9)."""
    if sum(sizes.values()) <= budget or not sizes.get("llm"):
        return dict(sizes)
    llm = min(sizes["llm"], budget)
    others = {k: v for k, v in sizes.items() if k != "llm"}
    counts = list(others.values())
    if sum(counts) > budget - llm:
        counts = mix_counts(counts, counts, budget - llm)
    return {**dict(zip(others, counts)), "llm": llm}


def _write_dev_set(folder: Path, dense: DenseCorpus, dev: list[TrainingExample], size: int, seed: int) -> int:
    """BEIR files the trainer's DevSet reads. A held-out document appears as its example's positive
    (for a crop: the document without the query sentence), so the dev task is not string matching."""
    documents: dict[str, Passage] = {e.positives[0].docid: e.positives[0] for e in dev}
    for example in dev:
        for p in example.negatives:
            documents.setdefault(p.docid, dense.passages[dense.position(p.docid)])
    others = [p for p in dense.passages if p.docid not in documents]
    random.Random(seed).shuffle(others)
    for p in others[: max(0, size - len(documents))]:
        documents[p.docid] = p
    folder.mkdir(parents=True, exist_ok=True)
    _write_lines(folder / "corpus.jsonl", [{"_id": p.docid, "title": p.title, "text": p.text} for p in documents.values()])
    _write_lines(folder / "queries.jsonl", [{"_id": e.query_id, "text": e.query} for e in dev])
    qrels = "query-id\tcorpus-id\tscore\n" + "".join(f"{e.query_id}\t{e.positives[0].docid}\t1\n" for e in dev)
    atomic_write_bytes(folder / "qrels.tsv", qrels.encode("utf-8"))
    return len(documents)


# --- steps 5-7 -------------------------------------------------------------------------------

def _train(settings: AdaptSettings, work: Path, device: str, report: AdaptReport):
    from .train import RESUMABLE_CHANGES, TrainReport, TrainSettings, train

    examples = report.train_examples
    steps = settings.max_steps or max(1, examples // report.batch_size)
    every = max(1, -(-steps // settings.evaluations))
    dev = work / "dev"
    train_settings = TrainSettings(
        model=settings.model, train_data=str(work / "train.jsonl"), output=str(work / "train"),
        negatives_per_query=report.negatives_per_query, batch_size=min(report.batch_size, examples),
        max_steps=steps, learning_rate=settings.learning_rate, warmup_steps=int(settings.warmup_ratio * steps),
        temperature=settings.temperature, distill=settings.hybrid_teacher,
        hard_negatives=settings.teacher_hard_negatives, attention_dropout=settings.attention_dropout,
        matryoshka_dims=tuple(settings.matryoshka_dims),
        max_length=settings.max_length, seed=settings.seed, save_steps=every, eval_steps=every,
        dev_corpus=str(dev / "corpus.jsonl"), dev_queries=str(dev / "queries.jsonl"), dev_qrels=str(dev / "qrels.tsv"),
        min_dev_confidence=settings.min_dev_confidence, device=device, show_progress=settings.show_progress,
    )
    report.batch_size = train_settings.batch_size
    state, done = work / "train" / "checkpoint" / "state.json", work / "train" / "report.json"
    if state.is_file():
        saved, current = json.loads(state.read_text(encoding="utf-8"))["settings"], train_settings.to_dict()
        changed = sorted(k for k in current if k not in RESUMABLE_CHANGES and saved.get(k) != current[k])
        if changed:
            raise UsageError(", ".join(changed), f"{work / 'train'} was trained with other settings; rerun with the "
                             "same ones to resume, or delete it (or use another --work-dir) to train anew")
        if done.is_file():
            report.skipped.append("train")
            raw = json.loads(done.read_text(encoding="utf-8"))
            raw["evaluations"] = [tuple(e) for e in raw["evaluations"]]
            return TrainReport(**raw)
    return train(train_settings)


def _export(settings: AdaptSettings, trained, report: AdaptReport) -> None:
    """OUT: `(1 - w) * start + w * checkpoint` in fp32, the checkpoint being the chosen one or the last
    (export_from), or the starting model.

    The bar that chose the checkpoint applies to what is exported: anything but the chosen checkpoint
    itself (an average, the last step) is scored on the dev set as served, and replaces the starting
    model only when it beats the baseline's mean on min_dev_confidence of bootstrap resamples. The
    decision and its scores are kept in OUT's metadata, so a rerun with the same settings reuses them.
    """
    from .export import METADATA_FILE

    work, out = settings.work, Path(settings.output)
    if settings.export_from == "last":
        source, step = work / "train" / "last", trained.steps
    else:
        source, step = (None, None) if trained.baseline_kept else (Path(trained.model_dir), trained.best_step)
    weight = None if source is None or settings.fine_tuned_weight == 1 else settings.fine_tuned_weight
    request = {"source_model": settings.model, "work_dir": str(work.resolve()), "export_from": settings.export_from,
               "train_step": step, "fine_tuned_weight": weight, "min_dev_confidence": settings.min_dev_confidence}
    meta_path = out / METADATA_FILE
    saved = json.loads(meta_path.read_text(encoding="utf-8")).get("adapt", {}) if meta_path.is_file() else {}
    if saved.get("request") == request:
        report.skipped.append("export")
        facts = saved
    else:
        facts = _write_export(settings, trained, source, weight, request, report.device)
    report.candidate_step = step
    report.fine_tuned_weight = weight
    report.exported_dev, report.exported_dev_confidence = facts["exported_dev"], facts["exported_dev_confidence"]
    report.baseline_kept = facts["baseline_kept"]


def _write_export(settings: AdaptSettings, trained, source: Path | None, weight: float | None,
                  request: dict, device: str) -> dict:
    """Build the export, score it on the dev set when it must pass the bar, and write OUT; returns its facts."""
    import shutil

    import torch

    from dramasearch.models import load_encoder as load_start

    from .average import average_with_start
    from .devset import DevSet, gain_confidence, mean, per_query_ndcg10
    from .export import METADATA_FILE, export_encoder, load_encoder

    facts = {"request": request, "baseline_kept": source is None, "chosen_step": trained.best_step,
             "chosen_dev_ndcg@10": trained.best_score, "baseline_dev_ndcg@10": trained.baseline,
             "exported_dev": None, "exported_dev_confidence": None}
    scored = source is not None and (weight is not None or settings.export_from == "last")
    encoder = load_encoder(source, device="cpu", dtype=torch.float32) if source is not None else None
    if weight is not None:
        encoder = average_with_start(load_start(settings.model, device="cpu", dtype=torch.float32), encoder, weight)
    if scored:  # scored as served: written, then loaded at the serving precision
        candidate = export_encoder(encoder, settings.work / "export-candidate")
        dev = settings.work / "dev"
        per_query = per_query_ndcg10(load_encoder(candidate, device=device),
                                     DevSet.load(dev / "corpus.jsonl", dev / "queries.jsonl", dev / "qrels.tsv"),
                                     [None])[None]
        facts["exported_dev"] = mean(per_query)
        facts["exported_dev_confidence"] = gain_confidence(trained.baseline_per_query, per_query, seed=settings.seed)
        facts["baseline_kept"] = not (facts["exported_dev"] > mean(trained.baseline_per_query)
                                      and facts["exported_dev_confidence"] >= settings.min_dev_confidence)
        shutil.rmtree(candidate)
    if facts["baseline_kept"]:
        encoder = load_start(settings.model, device="cpu", dtype=torch.float32, max_length=settings.max_length)
        training = None
    else:
        training = json.loads((source / METADATA_FILE).read_text(encoding="utf-8")).get("training")
    export_encoder(encoder, settings.output, extra={"training": training, "adapt": facts})
    return facts


def _refresh(settings: AdaptSettings, corpus: str, report: AdaptReport) -> int:
    """Refresh --index to OUT, unless it already holds OUT, or the starting model that OUT equals
    (baseline kept): re-encoding would give the same vectors."""
    from dramasearch.index.generation import IndexDir
    from dramasearch.index.refresh import refresh
    from dramasearch.models import load_encoder

    latest = IndexDir(settings.index).read()
    current = latest.encoder.get("fingerprint")
    if report.baseline_kept and current == load_encoder(settings.model, device="cpu").spec.fingerprint:
        report.skipped.append("refresh (the index holds the starting model, which was kept)")
        return latest.generation
    new = load_encoder(settings.output, device=report.device)
    if current == new.spec.fingerprint:
        report.skipped.append("refresh")
        return latest.generation
    return refresh(settings.index, encoder=new, corpus=None if latest.settings.get("store_text") else corpus,
                   show_progress=settings.show_progress).generation


# --- helpers -----------------------------------------------------------------------------------

class _timed:
    """Seconds of one step into the report, less what the mining index took inside it."""

    def __init__(self, report: AdaptReport, step: str, side: MiningSide | None = None):
        self.report, self.step, self.side = report, step, side

    def __enter__(self) -> None:
        self.started, self.index_before = time.perf_counter(), self.side.seconds if self.side else 0.0

    def __exit__(self, *exc: Any) -> None:
        index = (self.side.seconds if self.side else 0.0) - self.index_before
        self.report.seconds[self.step] = round(time.perf_counter() - self.started - index, 1)


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


def _count(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def _positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise UsageError(name, f"must be a number > 0, got {value!r:.40}")


def _metadata_file() -> str:
    from .export import METADATA_FILE

    return METADATA_FILE


def _write_lines(path: Path, records: list[dict]) -> None:
    atomic_write_bytes(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8"))

"""MLDR (multilingual long-document retrieval) from the Hugging Face hub -> local files the CLI reads.

The hub dataset `Shitao/MLDR` is a loading script (`MLDR.py`; configs `corpus-<lang>` and
`<lang>`), which `datasets` >= 4 no longer runs. Its data are plain gzipped JSON lines,
`mldr-v1.0-<lang>/corpus.jsonl.gz` ({"docid", "text"}) and `mldr-v1.0-<lang>/<split>.jsonl.gz`
({"query_id", "query", "positive_passages", "negative_passages"}, passages as {"docid", "text"}),
so they are read with the `json` builder: the same records as the script's configs, no remote code.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from .errors import DramaSearchError
from .fsutil import atomic_dir

MLDR_DATASET = "Shitao/MLDR"
MLDR_LANGUAGES = ("ar", "de", "en", "es", "fr", "hi", "it", "ja", "ko", "pt", "ru", "th", "zh")
MLDR_SPLITS = ("train", "dev", "test")


def download_mldr(language: str, out_dir: Path, split: str = "test") -> Path:
    """Write `corpus.jsonl`, `queries.jsonl` (MLDR records as published) and `qrels/<split>.tsv` to `out_dir`.

    Qrels hold the positive passages with grade 1 (BEIR header); negatives carry no gain and
    are left out, as in BEIR. The folder appears complete or not at all. Returns `out_dir`.
    """
    if language not in MLDR_LANGUAGES:
        raise DramaSearchError(f"MLDR has no language '{language}'; choose one of {', '.join(MLDR_LANGUAGES)}")
    if split not in MLDR_SPLITS:
        raise DramaSearchError(f"MLDR has no split '{split}'; choose one of {', '.join(MLDR_SPLITS)}")
    out_dir = Path(out_dir)
    corpus = _load_jsonl(f"mldr-v1.0-{language}/corpus.jsonl.gz")
    queries = _load_jsonl(f"mldr-v1.0-{language}/{split}.jsonl.gz")
    with atomic_dir(out_dir) as tmp:
        _write_jsonl(tmp / "corpus.jsonl", ({"docid": r["docid"], "text": r["text"]} for r in corpus))
        _write_jsonl(tmp / "queries.jsonl", queries)
        (tmp / "qrels").mkdir()
        with open(tmp / "qrels" / f"{split}.tsv", "w", encoding="utf-8") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            for record in queries:
                for passage in record["positive_passages"]:
                    f.write(f"{record['query_id']}\t{passage['docid']}\t1\n")
    return out_dir


def _load_jsonl(member: str):
    """One MLDR file through `datasets` (downloaded once into the HF cache), or a DramaSearchError saying what to do."""
    from datasets import load_dataset

    url = f"hf://datasets/{MLDR_DATASET}/{member}"
    try:
        return load_dataset("json", data_files=url, split="train")
    except Exception as exc:  # offline, hub unreachable or moved: all end the same way for the user
        raise DramaSearchError(
            f"could not load {member} of the hub dataset {MLDR_DATASET} ({type(exc).__name__}: {exc}). "
            "Run this where the Hugging Face hub is reachable (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE unset), "
            "or pass local files: a corpus.jsonl with docid/text and an MLDR queries jsonl, "
            "which also serves as qrels."
        ) from exc


def _write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")

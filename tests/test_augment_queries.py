"""LLM query generation: parsing, de-duplication and the round-trip filter on a real retriever."""
from __future__ import annotations

import json

import pytest

from trainer.augment.queries import (
    FEW_SHOT, QueryGenConfig, copied_from_prompt, generate_queries, normalize_query, parse_query, select_queries,
)
from trainer.augment.retrieval import DenseCorpus
from trainer.data import Passage, read_examples

PASSAGES = [
    Passage("rain", "", "Rain forms when water vapour in clouds condenses into droplets heavy enough to fall."),
    Passage("violin", "", "The violin has four strings tuned in fifths and is played with a horsehair bow."),
    Passage("tides", "", "Ocean tides rise and fall twice a day because of the moon's gravity."),
    Passage("bread", "", "Yeast ferments sugar in dough, releasing carbon dioxide that makes bread rise."),
    Passage("chess", "", "In chess, castling moves the king two squares towards a rook."),
]


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("Task: find facts.\nQuery: why does it rain\nLanguage: English", "why does it rain"),
        ("Task: x\n**Query:** \"how do tides work?\"\n**Language:** English", "how do tides work?"),
        ("Task: x\nquery： qué hace subir el pan Language: Spanish", "qué hace subir el pan"),
        ("Task: x\nQuery:   violin   strings  count  \n", "violin strings count"),
        ("Task: x\nLanguage: English", None),  # no query line
        ("Task: x\nQuery: rain\n", None),  # one word: below min_words
        ("Task: x\nQuery: " + "word " * 60, None),  # too long
        ("", None),
    ],
)
def test_parse_query(completion, expected):
    assert parse_query(completion) == expected


def test_normalize_query():
    assert normalize_query("  Why does it RAIN?! ") == normalize_query("why does it rain") == "why does it rain"
    assert normalize_query("Ｑué hace") == "qué hace"  # NFKC folds full-width letters


def test_copied_from_prompt():
    assert copied_from_prompt(normalize_query(FEW_SHOT[1][2].upper() + "?"))
    assert copied_from_prompt(normalize_query("high serum ferritin was linked to a greater risk"))  # from a shot passage
    assert not copied_from_prompt("coral reef")  # too short to call a copy
    assert not copied_from_prompt("largest coral reef system in queensland waters")  # not a run of shot text
    assert not copied_from_prompt("serum ferritin was link")  # word boundaries


def test_select_queries_dedup_copy_and_round_trip(minilm):
    corpus = DenseCorpus.encode(minilm, PASSAGES)
    config = QueryGenConfig(queries_per_passage=2, round_trip_k=1)
    seen = {normalize_query("what makes bread rise")}  # kept earlier (e.g. before a resume)
    candidates = [
        ["why does rain fall from clouds", None, "Why does rain fall from clouds?", "how many strings does a violin have",
         "how does water vapour turn into rain droplets"],
        ["what makes bread rise"],
        [FEW_SHOT[0][2], "what causes ocean tides"],
        ["how does castling work in chess", "why does rain fall from clouds"],
    ]
    sources = [PASSAGES[0], PASSAGES[3], PASSAGES[2], PASSAGES[4]]
    examples, counts = select_queries(minilm, corpus, sources, candidates, seen, config)
    assert [(e.query_id, e.query, e.positives[0].docid) for e in examples] == [
        ("rain-gen0", "why does rain fall from clouds", "rain"),
        ("rain-gen1", "how does water vapour turn into rain droplets", "rain"),
        ("tides-gen0", "what causes ocean tides", "tides"),
        ("chess-gen0", "how does castling work in chess", "chess"),
    ]
    # The violin query fails the round trip for the rain passage (its top-1 is the violin passage),
    # and so does the rain query for the chess passage (the round trip is checked first).
    assert counts == {"unparsable": 1, "copied_from_prompt": 1, "duplicate": 2, "round_trip": 2, "kept": 4}
    assert normalize_query("what causes ocean tides") in seen
    # Without the filter the off-topic query is kept, capped by queries_per_passage.
    loose = QueryGenConfig(queries_per_passage=3, round_trip_k=None)
    examples, counts = select_queries(minilm, None, sources[:1], candidates[:1], set(), loose)
    assert [e.query for e in examples] == [candidates[0][0], candidates[0][3], candidates[0][4]]


class ScriptedLM:
    """Stands in for the LLM where the test must know its output: sampled text from a real
    model cannot be asserted on, and SmolLM2 is far too slow for a unit test. The prompt
    building, parsing, filtering and resumable writing around it are the real code."""

    name = "scripted"

    def __init__(self, answers: dict[str, list[str]]):
        self.answers = answers
        self.seeds: list[int] = []

    def truncate(self, text: str, max_tokens: int) -> str:
        return text

    def chat_prompt(self, user, system=None, answer_prefix="", shots=()):
        return user + answer_prefix

    def generate(self, prompts, *, max_new_tokens, num_return_sequences, temperature, top_p, seed):
        self.seeds.append(seed)
        out = []
        for prompt in prompts:
            key = next(k for k in self.answers if k in prompt.rsplit("Passage:", 1)[1])
            out.append(self.answers[key][:num_return_sequences])
        return out


def test_generate_queries_end_to_end(tmp_path, minilm):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": p.docid, "text": p.text}) + "\n" for p in PASSAGES))
    lm = ScriptedLM({
        "Rain": [" x\nQuery: why does rain fall\nLanguage: English", " x\nQuery: why does rain fall"],
        "violin": [" garbage", " x\nQuery: how is a violin played"],
        "tides": [" x\nQuery: why does rain fall"],  # duplicate of an earlier passage's query
        "Yeast": [" x\nQuery: castling rules in chess"],  # fails the round trip
        "chess": [" x\nQuery: how does a king castle"],
    })
    config = QueryGenConfig(samples_per_passage=2, round_trip_k=1, seed=5)
    progress = generate_queries(corpus, tmp_path / "q.jsonl", lm, minilm, config, batch_size=2)
    got = [(e.query_id, e.query, e.positives[0].docid) for e in read_examples(tmp_path / "q.jsonl")]
    assert got == [("rain-gen0", "why does rain fall", "rain"), ("violin-gen0", "how is a violin played", "violin"),
                   ("chess-gen0", "how does a king castle", "chess")]
    assert progress.counts == {"unparsable": 1, "copied_from_prompt": 0, "duplicate": 2, "round_trip": 1, "kept": 3}
    assert lm.seeds == [5 * 1_000_003 + b for b in range(3)]  # seeded per batch, so resumes reproduce

"""Small real things for the trainer tests: a tiny random DRAMA checkpoint and Tevatron data."""
from __future__ import annotations

import shutil
from pathlib import Path

import torch
import transformers

from conftest import LLAMA3_TOKENIZER, shared_path
from trainer.data import Passage, TrainingExample, write_examples

TOPICS = {
    "bike": ["Fixing a flat bicycle tyre needs tyre levers and a patch.", "A bicycle chain needs oil every few hundred km.",
             "Brake pads on a bike wear out and must be replaced.", "Road bikes use narrow tyres at high pressure."],
    "bread": ["Bread goes stale as starch recrystallises.", "Sourdough rises with wild yeast and bacteria.",
              "Knead the dough until it is smooth and elastic.", "Bake bread in a hot oven with steam."],
    "tide": ["Tides come from the Moon's gravity pulling on the oceans.", "Spring tides happen at full and new moon.",
             "A tide table lists high and low water times.", "Neap tides have the smallest range."],
    "sky": ["The sky is blue because air scatters short wavelengths.", "Sunsets are red as light crosses more air.",
            "Clouds are white because droplets scatter all colours.", "At night the sky is dark as the Sun is below the horizon."],
}
QUERIES = {"bike": ["how do I repair a flat tyre", "bike maintenance"], "bread": ["why does bread go stale", "baking bread"],
           "tide": ["what causes tides", "high tide times"], "sky": ["why is the sky blue", "colour of sunset"]}


def make_tiny_drama(folder: Path, attention_dropout: float = 0.0) -> Path:
    """DRAMA's shape in miniature (hidden 64, 2 layers, GQA, Llama-3 vocab and rope) with the real Llama-3 tokenizer."""
    tokenizer_dir = shared_path("models", LLAMA3_TOKENIZER.name)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=128256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        bos_token_id=128000, eos_token_id=128001, attention_dropout=attention_dropout,
    )
    transformers.LlamaModel(config).save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, folder / name)
    return folder


def examples() -> list[TrainingExample]:
    """Each query: a positive from its topic, negatives from the other topics (sorted, so stable)."""
    out = []
    for topic, queries in QUERIES.items():
        for i, query in enumerate(queries):
            positives = [Passage(f"{topic}-{j}", "", t) for j, t in enumerate(TOPICS[topic]) if j % 2 == i % 2]
            negatives = [Passage(f"{other}-{j}", other, t) for other, texts in TOPICS.items() if other != topic
                         for j, t in enumerate(texts)]
            out.append(TrainingExample(f"{topic}{i}", query, positives, negatives))
    return out


def write_train_file(path: Path) -> Path:
    write_examples(path, examples())
    return path


def write_dev_set(folder: Path) -> tuple[Path, Path, Path]:
    """A BEIR-layout dev set over the same passages, with the training queries judged by topic."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "corpus.jsonl", "w") as f:
        for topic, texts in TOPICS.items():
            for j, text in enumerate(texts):
                f.write(json.dumps({"_id": f"{topic}-{j}", "title": "", "text": text}) + "\n")
    with open(folder / "queries.jsonl", "w") as f:
        for topic, queries in QUERIES.items():
            for i, query in enumerate(queries):
                f.write(json.dumps({"_id": f"{topic}{i}", "text": query}) + "\n")
    with open(folder / "qrels.tsv", "w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for topic, queries in QUERIES.items():
            for i in range(len(queries)):
                for j in range(len(TOPICS[topic])):
                    f.write(f"{topic}{i}\t{topic}-{j}\t1\n")
    return folder / "corpus.jsonl", folder / "queries.jsonl", folder / "qrels.tsv"


class _EmbeddingColumn(torch.nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, features):
        return {**features, "sentence_embedding": features["emb"]}

    def get_embedding_dimension(self) -> int:
        return self.dim


def precomputed_sentence_transformer(dim: int):
    """A SentenceTransformer whose embedding of a column is the tensor in its features ({"emb": ...}),
    so its losses can be fed our embeddings. Built through the public constructor: a bare module
    standing in for the model broke when sentence-transformers 6.3 began calling private methods."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(modules=[_EmbeddingColumn(dim)], device="cpu")


def perturbed_minilm(scale: float, seed: int = 0):
    """The packaged MiniLM in fp32 with every weight moved by seeded noise: a stand-in for a fine-tune of it."""
    from dramasearch.models import load_encoder

    encoder = load_encoder("minilm", device="cpu", dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in encoder.model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator))
    return encoder

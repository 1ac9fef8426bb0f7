"""Training data from a corpus: cropped sentences, LLM queries, mined negatives, LLM reranking, mixing.

Each step writes Tevatron jsonl (trainer.data) so its output feeds the next step or the trainer.
"""

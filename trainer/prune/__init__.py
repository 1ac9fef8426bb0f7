"""Structured pruning of Llama encoders: EffiR redundancy pruning and Sheared-LLaMA hard-concrete masks."""

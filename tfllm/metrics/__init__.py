"""Evaluation metrics, one explicit table per task (accuracy, perplexity, entity F1, ...).

Level 2 (docs/architecture.md): imports `tfllm.config`, `tfllm.tagging` and `tfllm.data`.
"""

"""Artifacts: the one loader of a trained model_dir (model, tokenizer, config).

Level 4 (docs/architecture.md): export, prediction, evaluation and distillation read a
model_dir here, never through the trainer.
"""

"""Artifacts: the one loader of a trained model_dir (model, tokenizer, config) and the reading
of its checkpoints.

Level 4 (docs/architecture.md): export, prediction, evaluation and distillation read a
model_dir here, never through the trainer. Writes go through `tfllm.model_dir`'s staging
helpers (`write_atomically`, `publish_directory`). The public names below import their module
on first use (`tfllm.lazy_exports`), as the other packages' do.
"""

from tfllm.lazy_exports import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "checkpoints": ["best_checkpoint", "checkpoint_to_use", "describe_best",
                    "latest_checkpoint", "restore_model"],
    "files": ["read_json"],
    "loader": ["load_config", "load_trained", "load_trained_model"],
})

"""Evaluation metrics, one explicit table per task (accuracy, perplexity, entity F1, ...),
and the weighted cross-entropy sums that the training loss shares with them.

Level 2 (docs/architecture.md): imports `tfllm.config`, `tfllm.tagging` and `tfllm.data`.
The public names below import their module on first use (`tfllm.lazy_exports`), as the other
packages' do.
"""

from tfllm.lazy_exports import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "base": ["EvalMetric", "LossAndAccuracy", "head_evaluated", "task_heads"],
    "char_loss": ["CharacterLoss", "character_loss"],
    "classification_f1": ["ClassificationF1"],
    "entity_f1": ["EntityF1", "entity_counts", "entity_reports_from_results", "entity_scores",
                  "format_entity_report"],
    "tables": ["TASK_METRICS", "eval_metrics"],
})

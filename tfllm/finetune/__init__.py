"""Fine-tuning a pretrained encoder: initialization, strategies (top layers, LoRA, adapters), int8
quantization, distillation and the task metrics (entity F1, classification F1)."""

from tfllm.lazy_exports import lazy_exports

# Imported on first use, so that the TF-free config schema (`tfllm.finetune.config`) imports
# without TensorFlow (`tfllm.lazy_exports`).
__getattr__, _LAZY_NAMES = lazy_exports(__name__, {
    "adapters": ["adapter_weights", "load_adapter_weights", "save_adapter_weights"],
    "classification_f1": ["ClassificationF1"],
    "distillation": ["TeacherStudent", "distillation_loss", "distillation_objective",
                     "distillation_sums", "load_teacher", "teacher_student"],
    "entity_f1": ["EntityF1", "entity_counts", "entity_reports_from_results", "entity_scores",
                  "format_entity_report", "iob2_scheme"],
    "lora": ["lora_weights", "load_lora_weights", "merge_lora", "save_lora_weights"],
    "prepare": ["load_trained_model", "minilm_l6_dir", "prepare_model"],
    "pruning": ["Pruning", "build_pruning", "fold_masks", "weight_sparsity"],
    "quantization": ["load_quantized_weights", "quantization_mode", "quantize_int8",
                     "save_quantized_weights"],
    "strategies": ["adapters_enabled", "apply_strategy", "enable_adapters", "enable_lora",
                   "freeze_all_but_top",
                   "lora_target_layers", "trainable_parameter_count"],
})


def register_eval_metrics() -> None:
  """Adds entity F1 (token classification) and per-class F1 (sequence classification) to
  every evaluation of those tasks (idempotent)."""
  # pylint: disable=import-outside-toplevel
  from tfllm.finetune.classification_f1 import ClassificationF1
  from tfllm.finetune.entity_f1 import EntityF1
  from tfllm.training import metrics
  registered = metrics._REGISTRY  # pylint: disable=protected-access
  for task, factory in (("token_classification", EntityF1.from_config),
                        ("sequence_classification", ClassificationF1.from_config)):
    if factory not in registered.get(task, []):
      metrics.register_eval_metric(task, factory)


__all__ = sorted(_LAZY_NAMES + ["register_eval_metrics"])

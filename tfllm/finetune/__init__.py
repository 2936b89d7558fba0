"""Fine-tuning a pretrained encoder: initialization, strategies (top layers, LoRA, adapters), int8
quantization, distillation and the task metrics (entity F1, classification F1)."""

from tfllm.finetune.adapters import adapter_weights, load_adapter_weights, save_adapter_weights
from tfllm.finetune.classification_f1 import ClassificationF1
from tfllm.finetune.distillation import (TeacherStudent, distillation_loss,
                                         distillation_objective, distillation_sums, load_teacher,
                                         teacher_student)
from tfllm.finetune.entity_f1 import (EntityF1, entity_counts, entity_reports_from_results,
                                      entity_scores, format_entity_report, iob2_scheme)
from tfllm.finetune.lora import lora_weights, load_lora_weights, merge_lora, save_lora_weights
from tfllm.finetune.pruning import Pruning, build_pruning, fold_masks, weight_sparsity
from tfllm.finetune.prepare import load_trained_model, minilm_l6_dir, prepare_model
from tfllm.finetune.quantization import (load_quantized_weights, quantization_mode,
                                         quantize_int8, save_quantized_weights)
from tfllm.finetune.strategies import (adapters_enabled, apply_strategy, enable_adapters,
                                       enable_lora, freeze_all_but_top, lora_target_layers,
                                       trainable_parameter_count)


def register_eval_metrics() -> None:
  """Adds entity F1 (token classification) and per-class F1 (sequence classification) to
  every evaluation of those tasks (idempotent)."""
  from tfllm.training import metrics  # pylint: disable=import-outside-toplevel
  registered = metrics._REGISTRY  # pylint: disable=protected-access
  for task, factory in (("token_classification", EntityF1.from_config),
                        ("sequence_classification", ClassificationF1.from_config)):
    if factory not in registered.get(task, []):
      metrics.register_eval_metric(task, factory)


__all__ = [
    "ClassificationF1", "EntityF1", "Pruning", "TeacherStudent", "adapter_weights",
    "adapters_enabled", "apply_strategy", "build_pruning", "enable_adapters", "fold_masks",
    "load_adapter_weights", "save_adapter_weights", "weight_sparsity", "distillation_loss",
    "distillation_objective", "distillation_sums", "enable_lora", "entity_counts", "entity_reports_from_results",
    "entity_scores",
    "format_entity_report", "freeze_all_but_top", "iob2_scheme", "load_lora_weights",
    "load_quantized_weights", "load_teacher", "lora_target_layers", "lora_weights",
    "load_trained_model", "merge_lora", "minilm_l6_dir", "prepare_model", "quantization_mode", "quantize_int8",
    "register_eval_metrics", "save_lora_weights", "save_quantized_weights", "teacher_student",
    "trainable_parameter_count",
]

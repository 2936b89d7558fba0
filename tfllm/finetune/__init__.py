"""Fine-tuning a pretrained encoder: initialization, strategies (top layers, LoRA, adapters), int8
quantization, pruning and distillation.

Level 3 (docs/architecture.md): the task metrics are in `tfllm.metrics`, tag decoding in
`tfllm.tagging`, loading a trained model_dir in `tfllm.artifacts`."""

from tfllm.lazy_exports import lazy_exports

# Imported on first use, so that the TF-free config schema (`tfllm.finetune.config`) imports
# without TensorFlow (`tfllm.lazy_exports`).
__getattr__, _LAZY_NAMES = lazy_exports(__name__, {
    "adapters": ["adapter_weights", "load_adapter_weights", "save_adapter_weights"],
    "distillation": ["TeacherStudent", "check_student", "distillation_loss",
                     "distillation_objective", "distillation_sums", "pair_with_teacher"],
    "lora": ["lora_weights", "load_lora_weights", "merge_lora", "save_lora_weights"],
    "prepare": ["minilm_l6_dir", "prepare_model"],
    "pruning": ["Pruning", "build_pruning", "fold_masks", "weight_sparsity"],
    "quantization": ["load_quantized_weights", "quantization_mode", "quantize_int8",
                     "save_quantized_weights"],
    "strategies": ["adapters_enabled", "apply_strategy", "enable_adapters", "enable_lora",
                   "freeze_all_but_top",
                   "lora_target_layers", "trainable_parameter_count"],
})


__all__ = _LAZY_NAMES

"""What a tfllm model_dir holds, by name: one place for the layout every tool reads.

  config.json         the resolved config (vocab size from the tokenizer), written at start
  tokenizer/          the tokenizer (`tfllm.data.tokenizers.save_tokenizer`)
  checkpoints/        model + optimizer + step (`tfllm.training.checkpointing`)
  train/, eval/       TensorBoard summaries
  eval_metrics.json   the last evaluation's metrics, step and split
  best_checkpoint/, best_checkpoint.json
                      with `train.early_stopping`: the checkpoint of the best evaluation by
                      the monitored metric, and which one it is (step, metric, value)
  eval_metrics_int8.json, model.int8.weights.h5
                      with `finetune.quantize=int8`: the quantized model's metrics, weights

Training (`tfllm.training.job`) writes it; resume, export, generation and distillation
teachers (`tfllm.finetune.load_trained_model`) read it.
"""

import os

CONFIG_FILE = "config.json"
TOKENIZER_SUBDIR = "tokenizer"
CHECKPOINT_SUBDIR = "checkpoints"
EVAL_FILE = "eval_metrics.json"
BEST_CHECKPOINT_SUBDIR = "best_checkpoint"
BEST_CHECKPOINT_FILE = "best_checkpoint.json"
INT8_EVAL_FILE = "eval_metrics_int8.json"
INT8_WEIGHTS_FILE = "model.int8.weights.h5"


def config_path(model_dir: str) -> str:
  return os.path.join(model_dir, CONFIG_FILE)


def tokenizer_dir(model_dir: str) -> str:
  return os.path.join(model_dir, TOKENIZER_SUBDIR)


def checkpoint_dir(model_dir: str) -> str:
  """Where the chief keeps the checkpoints of `model_dir`."""
  return os.path.join(model_dir, CHECKPOINT_SUBDIR)


def best_checkpoint_dir(model_dir: str) -> str:
  """Where early stopping keeps the best checkpoint (outside the newest-N rotation)."""
  return os.path.join(model_dir, BEST_CHECKPOINT_SUBDIR)


def best_checkpoint_path(model_dir: str) -> str:
  """The record of the best checkpoint: JSON with step, metric, mode, value, checkpoint."""
  return os.path.join(model_dir, BEST_CHECKPOINT_FILE)

"""Exporting a training run's directory: its model, tokenizer and config
(`tfllm.artifacts.load_trained`) to a TF Serving version (`saved_model`) or a LiteRT bundle
(`litert`), as `config.export.format` says.
"""

from __future__ import annotations

from typing import Optional

from tfllm import artifacts
from tfllm.export import litert
from tfllm.export.saved_model import ExportError, export_saved_model


def load_trained(model_dir: str):
  """The model, tokenizer and config a training run left in `model_dir`
  (`tfllm.artifacts.load_trained`: config.json, every weight of the checkpoint to use, LoRA
  merged, int8-quantized when the run's `finetune.quantize` says so).

  Returns:
    `(model, tokenizer, config)`.

  Raises:
    ExportError: `model_dir` is missing, or has no config, checkpoint or tokenizer, or its
      checkpoint does not match its config.
  """
  try:
    return artifacts.load_trained(model_dir)
  except (FileNotFoundError, ValueError) as error:
    raise ExportError(str(error)) from error


def export_model_dir(model_dir: str, export_dir: str, version: Optional[int] = None,
                     overwrite: bool = False, overrides=None) -> str:
  """`export_saved_model` of what `load_trained(model_dir)` returns (or, with
  `config.export.format="litert"`, `tfllm.export.litert.export_litert`).

  Args:
    overrides: optional dict of `export` section values replacing the trained config's.
  """
  model, tokenizer, config = load_trained(model_dir)
  if overrides:
    config.export.update(dict(overrides))
  if config.export.format == "litert":
    return litert.export_litert(model, tokenizer, config, export_dir, version, overwrite)
  return export_saved_model(model, tokenizer, config, export_dir, version, overwrite)

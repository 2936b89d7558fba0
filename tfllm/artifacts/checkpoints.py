"""Reading a model_dir's checkpoints: which one a trained model is used from, and restoring it.

The trainer writes checkpoints (`tfllm.training.checkpointing.Checkpointer`); everything that
uses a trained model (export, prediction, generation, a distillation teacher, `--mode=eval`)
reads them here, so serving does not depend on the trainer. Early stopping's best checkpoint
(`model_dir/best_checkpoint/`, named by `best_checkpoint.json`) is used when the run kept one;
else the newest in `model_dir/checkpoints`.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional, Tuple

import tensorflow as tf

from tfllm.model_dir import best_checkpoint_path, checkpoint_dir


def latest_checkpoint(model_dir: str) -> Optional[str]:
  """Path prefix of the newest checkpoint in `model_dir`, or None."""
  return tf.train.latest_checkpoint(checkpoint_dir(model_dir))


def _exists(prefix: str) -> bool:
  return tf.io.gfile.exists(prefix + ".index")


def best_checkpoint(model_dir: str) -> Optional[Dict[str, Any]]:
  """The record of early stopping's best checkpoint in `model_dir`, or None.

  Returns:
    `best_checkpoint.json` as a dict (`step`, `metric`, `mode`, `value`, `checkpoint`
    relative to `model_dir`) plus `path`, the checkpoint's full prefix; None when the run
    kept no best checkpoint (no early stopping) or its files are gone.
  """
  record_path = best_checkpoint_path(model_dir)
  if not tf.io.gfile.exists(record_path):
    return None
  with tf.io.gfile.GFile(record_path) as f:
    record = json.load(f)
  record["path"] = os.path.join(model_dir, record["checkpoint"])
  return record if _exists(record["path"]) else None


def describe_best(record: Dict[str, Any]) -> str:
  """A phrase naming early stopping's best checkpoint, e.g. "the best checkpoint by loss
  (step 20, loss 1.2345)"."""
  return (f"the best checkpoint by {record['metric']} (step {record['step']}, "
          f"{record['metric']} {record['value']:.4f})")


def checkpoint_to_use(model_dir: str) -> Tuple[Optional[str], str]:
  """The checkpoint a trained model is used from, and a phrase saying which it is.

  Early stopping's best checkpoint when the run kept one; else the newest.

  Returns:
    `(path prefix or None, e.g. "the best checkpoint by loss (step 20, loss 1.2345)")`.
  """
  best = best_checkpoint(model_dir)
  if best is not None:
    return best["path"], describe_best(best)
  path = latest_checkpoint(model_dir)
  step = path.rsplit("-", 1)[-1] if path else "?"
  return path, f"the newest checkpoint (step {step})"


def restore_model(model, model_dir: str) -> str:
  """Restores every variable of `model` from `checkpoint_to_use` (for export, generation,
  distillation teachers and evaluation):
  early stopping's best checkpoint when the run kept one, else the newest.

  The optimizer's slots in the checkpoint are left out; a model variable the checkpoint lacks
  (a model built from another config, or without the LoRA adapters it was trained with) is an
  error, never a silently half-restored model.

  Returns:
    The checkpoint path restored.

  Raises:
    FileNotFoundError: `model_dir` holds no checkpoint.
    ValueError: the checkpoint does not hold all of `model`'s variables.
  """
  path, _ = checkpoint_to_use(model_dir)
  if path is None:
    raise FileNotFoundError(f"no checkpoint in {checkpoint_dir(model_dir)}; train first")
  status = tf.train.Checkpoint(model=model).restore(path).expect_partial()
  try:
    status.assert_existing_objects_matched()
  except AssertionError as error:
    first = str(error).splitlines()[0][:300]
    raise ValueError(f"checkpoint {path} does not hold every variable of the model "
                     f"({first}); build the model from the run's own config.json") from error
  return path

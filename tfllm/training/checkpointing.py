"""Checkpoints of model, optimizer and step: the chief writes, other workers write and clean up.

Every worker calls `save` (variables may live on several workers); only the chief's copy goes
to `model_dir/checkpoints`. TF writes a checkpoint's files under a temporary name and records
it in the `checkpoint` state file last (atomically), so a save that fails half-way leaves the
previous checkpoints and the state file as they were; `save` removes the partial files and
raises `CheckpointWriteError` naming the last good checkpoint.
"""

from __future__ import annotations

import os
from typing import Optional

import tensorflow as tf

from tfllm.model_dir import checkpoint_dir  # pylint: disable=unused-import (callers' name)
from tfllm.model_dir import remove


class CheckpointWriteError(RuntimeError):
  """A checkpoint could not be written; the earlier ones are intact."""


def latest_checkpoint(model_dir: str) -> Optional[str]:
  """Path prefix of the newest checkpoint in `model_dir`, or None."""
  return tf.train.latest_checkpoint(checkpoint_dir(model_dir))


def restore_model(model, model_dir: str) -> str:
  """Restores every variable of `model` from the newest checkpoint (for export/generate).

  The optimizer's slots in the checkpoint are left out; a model variable the checkpoint lacks
  (a model built from another config, or without the LoRA adapters it was trained with) is an
  error, never a silently half-restored model.

  Returns:
    The checkpoint path restored.

  Raises:
    FileNotFoundError: `model_dir` holds no checkpoint.
    ValueError: the checkpoint does not hold all of `model`'s variables.
  """
  path = latest_checkpoint(model_dir)
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


class Checkpointer:
  """Saves and restores `tf.train.Checkpoint(model, optimizer, step)` for one worker.

  Args:
    checkpoint: the `tf.train.Checkpoint` to save.
    model_dir: the run's directory.
    is_chief: whether this worker's files are the ones kept.
    worker_dir: non-chief workers: a private scratch directory, deleted after each save.
    max_to_keep: checkpoints the chief keeps.
  """

  def __init__(self, checkpoint: tf.train.Checkpoint, model_dir: str, is_chief: bool = True,
               worker_dir: Optional[str] = None, max_to_keep: int = 3):
    self.is_chief = is_chief
    self._checkpoint = checkpoint
    self._model_dir = model_dir
    self.directory = checkpoint_dir(model_dir) if is_chief else worker_dir
    if self.directory is None:
      raise ValueError("a non-chief worker needs a worker_dir to write its checkpoint copy to")
    self.manager = tf.train.CheckpointManager(checkpoint, self.directory,
                                              max_to_keep=max_to_keep)

  @property
  def latest(self) -> Optional[str]:
    return self.manager.latest_checkpoint

  def restore_latest(self) -> Optional[str]:
    """Restores the newest checkpoint, if any (every worker reads the chief's)."""
    path = latest_checkpoint(self._model_dir)
    if path is not None:
      self._checkpoint.restore(path).assert_existing_objects_matched()
    return path

  def save(self, step: int) -> str:
    """Writes the checkpoint of `step`; returns its path (the chief's)."""
    try:
      path = self.manager.save(checkpoint_number=step)
    except (OSError, tf.errors.OpError) as error:
      self._remove_partial(step)
      last = self.latest or "none"
      reason = getattr(error, "message", None) or str(error)
      raise CheckpointWriteError(
          f"could not write checkpoint of step {step} to {self.directory}: "
          f"{reason.splitlines()[0] if reason else type(error).__name__}; "
          f"last good checkpoint: {last}") from error
    finally:
      if not self.is_chief:
        remove(self.directory)
    return path

  def _remove_partial(self, step: int):
    prefix = os.path.join(self.directory, f"ckpt-{step}")
    if prefix in (self.manager.checkpoints or []):
      return
    for name in tf.io.gfile.glob(prefix + ".*") + tf.io.gfile.glob(prefix + "_temp*"):
      if tf.io.gfile.isdir(name):
        tf.io.gfile.rmtree(name)
      else:
        tf.io.gfile.remove(name)

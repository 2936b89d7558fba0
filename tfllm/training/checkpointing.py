"""Checkpoints of model, optimizer and step: the chief writes, other workers write and clean up.

Every worker calls `save` (variables may live on several workers); only the chief's copy goes
to `model_dir/checkpoints`. TF writes a checkpoint's files under a temporary name and records
it in the `checkpoint` state file last (atomically), so a save that fails half-way leaves the
previous checkpoints and the state file as they were; `save` removes the partial files and
raises `CheckpointWriteError` naming the last good checkpoint.

With early stopping the best evaluation's checkpoint is also written, to
`model_dir/best_checkpoint/` (outside the manager's `max_to_keep` rotation), and
`best_checkpoint.json` says which it is. The record is replaced atomically after the new
checkpoint's files are complete, and older best checkpoints are deleted only then: a crash at
any point leaves a record that names a complete checkpoint. Export, generation and
`--mode=eval` read the best one when the record exists
(`tfllm.artifacts.checkpoints.checkpoint_to_use`); resuming reads the newest.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import tensorflow as tf

from tfllm.artifacts.checkpoints import latest_checkpoint
from tfllm.model_dir import (BEST_CHECKPOINT_SUBDIR, best_checkpoint_dir, best_checkpoint_path,
                             checkpoint_dir, remove, write_atomically)


class CheckpointWriteError(RuntimeError):
  """A checkpoint could not be written; the earlier ones are intact."""


class Checkpointer:
  """Saves and restores `tf.train.Checkpoint(model, optimizer, step)` for one worker.

  Args:
    checkpoint: the `tf.train.Checkpoint` to save.
    model_dir: the run's directory.
    is_chief: whether this worker's files are the ones kept.
    worker_dir: non-chief workers: a private scratch directory, deleted after each save.
    max_to_keep: checkpoints the chief keeps.
    required: the part of `checkpoint` every checkpoint restored must hold (default all of
      it); the rest is restored where present (state added by a setting such as early
      stopping, which a resumed run may turn on).
    sync: None, or an object whose `before_save()` runs before every write and
      `after_restore()` after every restore (a tensor-parallel run copies its shards into the
      unsharded model the checkpoint holds, and back: `tfllm.training.tensor_parallel`).
  """

  def __init__(self, checkpoint: tf.train.Checkpoint, model_dir: str, is_chief: bool = True,
               worker_dir: Optional[str] = None, max_to_keep: int = 3,
               required: Optional[tf.train.Checkpoint] = None, sync=None):
    self.is_chief = is_chief
    self._sync = sync
    self._checkpoint = checkpoint
    self._required = required
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
      self.restore(path)
    return path

  def restore(self, path: str) -> str:
    """Restores the checkpoint at prefix `path` (every part `required` names must be there)."""
    if self._required is None:
      self._checkpoint.restore(path).assert_existing_objects_matched()
    else:
      # The required part is checked; the values it leaves to the rest are expected.
      self._required.restore(path).assert_existing_objects_matched().expect_partial()
      self._checkpoint.restore(path).expect_partial()
    if self._sync is not None:
      self._sync.after_restore()
    return path

  def save_best(self, step: int, metric: str, mode: str, value: float) -> Optional[str]:
    """Writes the checkpoint of `step` as the best by `metric`; returns its path (the chief's).

    The checkpoint's files first, then the record (atomically), then older best checkpoints
    are removed; every worker must call it (MWMS saves are collective).
    """
    directory = (best_checkpoint_dir(self._model_dir) if self.is_chief
                 else os.path.join(self.directory, "best"))
    prefix = os.path.join(directory, f"ckpt-{step}")
    if self._sync is not None:
      self._sync.before_save()
    try:
      path = self._checkpoint.write(prefix)
    except (OSError, tf.errors.OpError) as error:
      reason = getattr(error, "message", None) or str(error)
      raise CheckpointWriteError(
          f"could not write the best checkpoint of step {step} to {directory}: "
          f"{reason.splitlines()[0] if reason else type(error).__name__}; the best one before "
          "it is kept") from error
    finally:
      if not self.is_chief:
        remove(self.directory)
    if not self.is_chief:
      return None
    record = dict(step=step, metric=metric, mode=mode, value=float(value),
                  checkpoint=f"{BEST_CHECKPOINT_SUBDIR}/{os.path.basename(path)}")
    write_atomically(best_checkpoint_path(self._model_dir),
                     json.dumps(record, indent=2, sort_keys=True))
    for name in tf.io.gfile.listdir(directory):
      old = os.path.join(directory, name.rstrip("/"))
      if name.startswith("ckpt-") and not name.startswith(f"ckpt-{step}."):
        remove(old)
    return path

  def save(self, step: int) -> str:
    """Writes the checkpoint of `step`; returns its path (the chief's)."""
    if self._sync is not None:
      self._sync.before_save()
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
      remove(name)

"""Magnitude pruning: masks, the gradual schedule, N:M structure, thresholds, reports, folding.

tensorflow-model-optimization's pruning needs `tf_keras` (Keras 2; docs/stack.md), so tfllm
prunes by itself:

* every pruned kernel gets a mask, a non-trainable `tf.Variable` of the kernel's shape kept in
  a `Pruning` module (saved in the trainer's checkpoint under `pruning/`; the model's own
  variables, and so the export, stay as they are);
* after every optimizer update, in its training loop's graph (a compiled function of its own,
  in replica context), the trainer calls `Pruning.after_update(step)`: on a step the schedule marks, the mask is recomputed from
  `|kernel * old mask|` (pruned weights stay pruned); then `kernel <- kernel * mask`. Both are
  written through `strategy.extended.update` in a merge call, as Keras's optimizer writes its
  variables, and every replica computes them from the same mirrored weights with a
  deterministic rule (ties go to the lower flat index), so the copies stay identical;
* the sparsity follows Zhu & Gupta (2017):
  `s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0))^3` for `t0 <= t <= t1`, the mask
  recomputed every `frequency` steps from `t0` and at `t1`; nothing is pruned before `t0`
  and the masks stay fixed after `t1`;
* `scope="per_layer"` prunes `round(s * n)` of each kernel's `n` weights; `"global"` prunes
  `round(s * N)` of all `N` pruned weights together (one threshold over every kernel);
* `structure="N:M"` (e.g. "2:4") keeps the `N` largest of every `M` consecutive weights along
  the kernel's input axis (axis 0), sparsity `1 - N/M`, from `begin_step` on.

At export the masks are folded into the kernels (`fold_masks`); the SavedModel holds dense
kernels with zeros (which compress, but do not run faster).
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

from tfllm.config import ConfigError
from tfllm.finetune.config import PRUNING_STRUCTURES_HELP as STRUCTURES_HELP
from tfllm.finetune.config import check_pruning as check_config
from tfllm.finetune.config import n_m
from tfllm.finetune.config import pruning_enabled as is_enabled

# The trainer's checkpoint holds the masks under this name.
CHECKPOINT_KEY = "pruning"


def end_step(pruning, total_steps: int) -> int:
  """`pruning.end_step`, with 0 meaning `total_steps` (the run's `train.steps`)."""
  return pruning.end_step or total_steps


def sparsity_at(step: int, pruning, total_steps: int) -> float:
  """The schedule's sparsity after `step` optimizer updates (NumPy float64; the compiled hook
  computes the same values in float64)."""
  structure = n_m(pruning.structure)
  final = 1.0 - structure[0] / structure[1] if structure else pruning.target_sparsity
  initial = final if structure else pruning.initial_sparsity
  begin, end = pruning.begin_step, end_step(pruning, total_steps)
  if step < begin:
    return 0.0
  fraction = 1.0 if end == begin else min(1.0, (step - begin) / (end - begin))
  return float(final + (initial - final) * (1.0 - fraction) ** 3)


def mask_due(step: int, pruning, total_steps: int) -> bool:
  """Whether the masks are recomputed after `step` updates."""
  begin, end = pruning.begin_step, end_step(pruning, total_steps)
  return begin <= step <= end and ((step - begin) % pruning.frequency == 0 or step == end)


def relative_path(model: keras.Model, variable) -> str:
  """`variable.path` without the model's own name (which Keras may number: `model_1/...`)."""
  path = variable.path
  prefix = model.name + "/"
  return path[len(prefix):] if path.startswith(prefix) else path


def select_variables(model: keras.Model, pruning) -> List:
  """The model's variables `pruning.include` matches and `pruning.exclude` does not (regular
  expressions searched in the path without the model name), of rank >= 2, in model order.

  By default (`include=("backbone/.*/kernel$",)`) that is the backbone's dense kernels:
  embeddings, norms, biases and the task head stay dense.

  Raises:
    ConfigError: nothing matches, or an N:M structure does not divide a kernel's input axis.
  """
  chosen = []
  for variable in model.weights:
    path = relative_path(model, variable)
    if len(variable.shape) < 2:
      continue
    if any(re.search(p, path) for p in pruning.include) and not any(
        re.search(p, path) for p in pruning.exclude):
      chosen.append(variable)
  if not chosen:
    raise ConfigError(f"config.finetune.pruning.include={tuple(pruning.include)} (exclude="
                      f"{tuple(pruning.exclude)}) matches no variable of rank >= 2 of the model")
  structure = n_m(pruning.structure)
  if structure:
    for variable in chosen:
      if variable.shape[0] % structure[1]:
        raise ConfigError(
            f"config.finetune.pruning.structure={pruning.structure!r}: "
            f"{relative_path(model, variable)} has input axis {variable.shape[0]}, not a "
            f"multiple of {structure[1]}; exclude it (config.finetune.pruning.exclude)")
  return chosen


# ---------------------------------------------------------------- mask rules (TensorFlow)

def _keep_largest(magnitudes: tf.Tensor, num_pruned: tf.Tensor) -> tf.Tensor:
  """A 0/1 vector over the 1-D `magnitudes` keeping all but the `num_pruned` smallest; among
  equal values the lower index is kept first (`top_k`'s order). Static shapes only (XLA)."""
  size = magnitudes.shape[0]
  order = tf.math.top_k(magnitudes, k=size, sorted=True).indices
  keep = tf.cast(tf.range(size) < size - num_pruned, magnitudes.dtype)
  return tf.scatter_nd(order[:, None], keep, [size])


def _num_pruned(sparsity: tf.Tensor, size: int) -> tf.Tensor:
  return tf.cast(tf.round(sparsity * tf.constant(size, tf.float64)), tf.int32)


def unstructured_masks(magnitudes: Sequence[tf.Tensor], sparsity: tf.Tensor,
                       scope: str) -> List[tf.Tensor]:
  """Masks (float32, each of its magnitude's shape) pruning `round(sparsity * n)` weights of
  each tensor (`scope="per_layer"`) or of all together (`"global"`)."""
  if scope == "per_layer":
    return [tf.reshape(_keep_largest(tf.reshape(m, [-1]),
                                     _num_pruned(sparsity, int(np.prod(m.shape)))), m.shape)
            for m in magnitudes]
  flat = tf.concat([tf.reshape(m, [-1]) for m in magnitudes], axis=0)
  mask = _keep_largest(flat, _num_pruned(sparsity, flat.shape[0]))
  sizes = [int(np.prod(m.shape)) for m in magnitudes]
  return [tf.reshape(part, m.shape) for part, m in zip(tf.split(mask, sizes), magnitudes)]


def n_m_mask(magnitude: tf.Tensor, n: int, m: int) -> tf.Tensor:
  """Keeps the `n` largest of every `m` consecutive entries along axis 0 (the input axis of a
  Dense kernel `[in, out]`; further axes are flattened), lower index first among equals."""
  shape = magnitude.shape
  rows, rest = shape[0], int(np.prod(shape[1:]))
  grouped = tf.transpose(tf.reshape(magnitude, [rows // m, m, rest]), [0, 2, 1])
  top = tf.math.top_k(grouped, k=n, sorted=True).indices          # [rows/m, rest, n]
  mask = tf.reduce_sum(tf.one_hot(top, m, dtype=magnitude.dtype), axis=-2)
  return tf.reshape(tf.transpose(mask, [0, 2, 1]), shape)


def sparsity_tensor(step: tf.Tensor, pruning, total_steps: int) -> tf.Tensor:
  """`sparsity_at` in float64 inside the graph (`step`: int64 scalar)."""
  structure = n_m(pruning.structure)
  final = 1.0 - structure[0] / structure[1] if structure else pruning.target_sparsity
  initial = final if structure else pruning.initial_sparsity
  begin, end = pruning.begin_step, end_step(pruning, total_steps)
  if end == begin:
    return tf.constant(final, tf.float64)
  fraction = tf.clip_by_value(tf.cast(step - begin, tf.float64) / float(end - begin), 0.0, 1.0)
  return final + (initial - final) * (1.0 - fraction) ** 3


def due_tensor(step: tf.Tensor, pruning, total_steps: int) -> tf.Tensor:
  """`mask_due` inside the graph (a bool scalar)."""
  begin, end = pruning.begin_step, end_step(pruning, total_steps)
  step = tf.cast(step, tf.int64)
  return tf.logical_and(
      tf.logical_and(step >= begin, step <= end),
      tf.logical_or(tf.equal((step - begin) % pruning.frequency, 0), tf.equal(step, end)))


# ---------------------------------------------------------------- the trainer's hook

def _apply_masks(kernels, masks, values):
  """`mask <- value; kernel <- kernel * value` on every replica's copies, in one merge call
  from replica context (as Keras's optimizer writes its variables), or directly outside one.
  Each copy gets its own replica's value; those are equal (same weights, same rule)."""
  def merged(distribution, values):
    for kernel, mask, value in zip(kernels, masks, values):
      distribution.extended.update(mask, lambda m, x: m.assign(x), args=(value,), group=False)
      distribution.extended.update(kernel, lambda k, x: k.assign(k * tf.cast(x, k.dtype)),
                                   args=(value,), group=False)
  tf.__internal__.distribute.interim.maybe_merge_call(
      merged, tf.distribute.get_strategy(), values)


class Pruning:
  """The masks of one model's pruned kernels and the step hook that keeps them applied.

  Create it inside the strategy's scope, after the model is built (the masks are mirrored
  like the kernels). The trainer saves `checkpoint_items()` with its checkpoint, calls
  `after_update(step)` after every optimizer update (compiled, in replica context), and writes
  `summary_scalars()` with its train summaries.

  Args:
    model: the built model whose kernels are pruned (the student, in distillation).
    pruning: the `config.finetune.pruning` section (validated; see `is_enabled`).
    total_steps: `train.steps`, the end of the schedule when `pruning.end_step` is 0.

  Example:
    with strategy.scope():
      model = tfllm.models.build(config)
      pruning = Pruning(model, config.finetune.pruning, config.train.steps)
    # ... Trainer(..., step_hooks=[pruning]) ...
    pruning.sparsities()   # {"backbone/block_0/attention/qkv/kernel": 0.5, ..., "overall": 0.5}
  """

  def __init__(self, model: keras.Model, pruning, total_steps: int):
    self._config = pruning
    self._total_steps = int(total_steps)
    self._structure = n_m(pruning.structure)
    self._kernels = select_variables(model, pruning)
    self.paths = [relative_path(model, v) for v in self._kernels]
    # What the checkpoint holds (not the kernels, which the model's entry saves): one mask
    # per kernel, named after its path.
    self.state = tf.Module(name="pruning")
    self.state.masks = {_key(path): tf.Variable(tf.ones(v.shape, v.dtype), trainable=False,
                                          name=_key(path))
                  for path, v in zip(self.paths, self._kernels)}

  def describe(self) -> str:
    """One line: what is pruned, to what, when."""
    c = self._config
    target = (f"{c.structure} structure" if self._structure else
              f"sparsity {c.initial_sparsity:g} -> {c.target_sparsity:g} ({c.scope})")
    return (f"pruning {len(self.paths)} kernels ({sum(int(np.prod(k.shape)) for k in self._kernels):,}"
            f" weights) to {target} from step {c.begin_step} to "
            f"{end_step(c, self._total_steps)}, masks updated every {c.frequency} steps")

  def checkpoint_items(self) -> Dict[str, tf.Module]:
    return {CHECKPOINT_KEY: self.state}

  def _mask_list(self):
    return [self.state.masks[_key(path)] for path in self.paths]

  def new_masks(self, sparsity: tf.Tensor) -> List[tf.Tensor]:
    """The masks the rule gives from the current `|kernel * mask|` at `sparsity`."""
    magnitudes = [tf.abs(tf.convert_to_tensor(k) * tf.convert_to_tensor(m))
                  for k, m in zip(self._kernels, self._mask_list())]
    if self._structure:
      return [n_m_mask(mag, *self._structure) for mag in magnitudes]
    return unstructured_masks(magnitudes, sparsity, self._config.scope)

  def after_update(self, step: tf.Tensor) -> None:
    """Recomputes the masks when the schedule says so at `step` (the updates done, the one
    just applied included), then zeroes the pruned weights. Runs in replica context inside
    the trainer's compiled hook function (or eagerly, outside any strategy)."""
    masks = self._mask_list()
    sparsity = sparsity_tensor(step, self._config, self._total_steps)
    new = tf.cond(due_tensor(step, self._config, self._total_steps),
                  lambda: self.new_masks(sparsity),
                  lambda: [tf.convert_to_tensor(m) for m in masks])
    _apply_masks([k.value if isinstance(k, keras.Variable) else k for k in self._kernels],
                 masks, list(new))

  def sparsities(self) -> Dict[str, float]:
    """Host side: each pruned kernel's fraction of zeros in its mask, and "overall"."""
    result, zeros, total = {}, 0.0, 0
    for path, mask in zip(self.paths, self._mask_list()):
      values = mask.numpy()
      result[path] = float(np.mean(values == 0))
      zeros += float(np.sum(values == 0))
      total += values.size
    result["overall"] = zeros / total
    return result

  def summary_scalars(self) -> Dict[str, float]:
    return {f"sparsity/{name}": value for name, value in self.sparsities().items()}


def _key(path: str) -> str:
  return path.replace("/", "__")


def build_pruning(model: keras.Model, config) -> Optional[Pruning]:
  """`Pruning` of `model` for `config.finetune.pruning`, or None when pruning is off (call
  inside the strategy's scope)."""
  pruning = config.finetune.pruning
  if not is_enabled(pruning):
    return None
  return Pruning(model, pruning, config.train.steps)


def weight_sparsity(model: keras.Model, pruning) -> float:
  """The fraction of zeros over the kernels `pruning` selects, read from the weights
  themselves (what an evaluation or an export holds)."""
  zeros, total = 0, 0
  for variable in select_variables(model, pruning):
    values = keras.ops.convert_to_numpy(variable)
    zeros += int(np.sum(values == 0))
    total += values.size
  return zeros / total


def fold_masks(model: keras.Model, config, checkpoint_path: str) -> Pruning:
  """Multiplies `model`'s pruned kernels by the masks saved in `checkpoint_path` (a trainer
  checkpoint of a pruning run); the model keeps no mask variable. Returns the `Pruning` read.

  Raises:
    ValueError: the checkpoint holds no masks for these kernels.
  """
  pruning = Pruning(model, config.finetune.pruning, config.train.steps)
  status = tf.train.Checkpoint(**pruning.checkpoint_items()).read(checkpoint_path)
  try:
    status.expect_partial().assert_existing_objects_matched()
  except AssertionError as error:
    raise ValueError(f"checkpoint {checkpoint_path} holds no pruning masks for this model "
                     f"({str(error).splitlines()[0][:200]})") from error
  for kernel, mask in zip(pruning._kernels, pruning._mask_list()):  # pylint: disable=protected-access
    kernel.assign(kernel * tf.cast(mask, kernel.dtype))
  return pruning

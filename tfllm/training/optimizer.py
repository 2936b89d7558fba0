"""AdamW with decoupled weight decay and optional layer-wise learning-rate decay, and the
warmup-then-decay learning-rate schedule."""

from __future__ import annotations

import math
import re
from typing import List, Sequence

import keras
import ml_collections
import tensorflow as tf


@keras.saving.register_keras_serializable(package="tfllm")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
  """Linear warmup from 0 to `peak`, then cosine, linear or no decay to `peak * min_ratio`.

  Args:
    peak: learning rate at the end of warmup.
    warmup_steps: steps of linear warmup (step 0 gets `peak / warmup_steps`, not 0, so the
      first step learns).
    decay_steps: step at which the decay reaches its floor (counted from step 0).
    decay: "cosine", "linear" or "constant".
    min_ratio: floor of the decay as a fraction of `peak`.
    budget_progress: optional scalar float32 `tf.Variable`, the fraction of a wall-clock
      training budget spent (`time_budget_progress`, kept up to date by the `Trainer`). The
      decay then follows whichever is further along, steps or time, so that a budgeted run
      reaches the floor when the budget ends on any machine. Warmup stays in steps (it is
      about Adam's statistics, not time). Run-time state: not part of `get_config`.
  """

  def __init__(self, peak: float, warmup_steps: int, decay_steps: int, decay: str = "cosine",
               min_ratio: float = 0.1, budget_progress: tf.Variable | None = None):
    self.peak = float(peak)
    self.warmup_steps = int(warmup_steps)
    self.decay_steps = int(decay_steps)
    self.decay = decay
    self.min_ratio = float(min_ratio)
    self.budget_progress = budget_progress

  def __call__(self, step):
    step = tf.cast(step, tf.float32)
    peak = tf.constant(self.peak, tf.float32)
    warmup = float(max(self.warmup_steps, 1))
    warm = peak * tf.minimum(1.0, (step + 1.0) / warmup)
    if self.decay == "constant":
      return warm
    span = float(max(self.decay_steps - self.warmup_steps, 1))
    progress = tf.clip_by_value((step - float(self.warmup_steps)) / span, 0.0, 1.0)
    if self.budget_progress is not None:
      progress = tf.maximum(progress, tf.cast(self.budget_progress, tf.float32))
    if self.decay == "cosine":
      shape = 0.5 * (1.0 + tf.cos(math.pi * progress))
    else:
      shape = 1.0 - progress
    decayed = peak * (self.min_ratio + (1.0 - self.min_ratio) * shape)
    return tf.where(step < float(self.warmup_steps), warm, decayed)

  def get_config(self):
    return dict(peak=self.peak, warmup_steps=self.warmup_steps, decay_steps=self.decay_steps,
                decay=self.decay, min_ratio=self.min_ratio)


def time_budget_progress() -> tf.Variable:
  """The variable a budgeted run's schedule and `Trainer` share: the fraction of
  `config.train.time_budget_minutes` spent. Create it inside `strategy.scope()`."""
  return tf.Variable(0.0, trainable=False, dtype=tf.float32, name="time_budget_progress",
                     aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)


def learning_rate_schedule(train: ml_collections.ConfigDict, total_steps: int | None = None,
                           budget_progress: tf.Variable | None = None) -> WarmupDecay:
  """The schedule of `config.train`; `total_steps` overrides where the decay ends;
  `budget_progress` (`time_budget_progress()`) lays the decay over the time budget too."""
  opt = train.optimizer
  decay_steps = total_steps or opt.decay_steps or train.steps
  return WarmupDecay(opt.learning_rate, opt.warmup_steps, decay_steps, opt.decay,
                     opt.min_learning_rate_ratio, budget_progress=budget_progress)


def weight_decay_exclusions(variables, decay_norms_biases: bool = False,
                            decay_embeddings: bool = False) -> List[keras.Variable]:
  """The variables AdamW must not decay.

  Rank-0/1 variables are norm scales/offsets and biases; embedding tables are the variables
  Keras names `embeddings` (token, position and segment tables alike).
  """
  excluded = []
  for variable in variables:
    if not decay_norms_biases and len(variable.shape) < 2:
      excluded.append(variable)
    elif not decay_embeddings and variable.path.split("/")[-1] == "embeddings":
      excluded.append(variable)
  return excluded


_BLOCK = re.compile(r"(?:^|/)block_(\d+)/")


def layer_rate_scales(variables, layer_decay: float) -> List[float]:
  """Layer-wise learning-rate decay (Clark et al. 2020, ELECTRA): each variable's factor.

  With `L` Transformer blocks, a variable's depth is 0 for the embeddings (any variable
  outside the blocks whose path contains `embedding`), `i + 1` for block `i` (`block_<i>/`
  in its path: attention, feed-forward, norms, and the LoRA or adapter weights inside it),
  and `L + 1` for everything after the blocks (final norm, pooler, task heads). Its rate is
  `learning_rate * layer_decay ** (L + 1 - depth)`: the heads train at the full rate, each
  block below at `layer_decay` times the one above.

  Returns:
    One factor per variable, in order (all 1.0 when `layer_decay` is 1).
  """
  depths = []
  for variable in variables:
    block = _BLOCK.search(variable.path)
    if block:
      depths.append(int(block.group(1)) + 1)
    elif "embedding" in variable.path:
      depths.append(0)
    else:
      depths.append(None)   # after the blocks
  top = max([depth for depth in depths if depth is not None] + [0]) + 1   # L + 1
  return [float(layer_decay ** (top - (top if depth is None else depth))) for depth in depths]


CRF_VARIABLES = ("crf_transitions", "crf_start")   # a CRF tagging head's (models.heads)


def crf_rate_scales(variables, crf_rate_scale: float) -> List[float]:
  """`crf_rate_scale` for a CRF tagging head's transition and start scores, 1.0 for the
  rest: one factor per variable, in order."""
  return [float(crf_rate_scale) if v.path.rsplit("/", 1)[-1] in CRF_VARIABLES else 1.0
          for v in variables]


class _PreReducedAdamW(keras.optimizers.AdamW):
  """AdamW that takes gradients already summed over replicas, each variable's update at the
  schedule's rate times its `rate_scales` factor (layer-wise decay times the CRF's scale;
  None: all 1).

  The training step all-reduces gradients itself, so that clipping sees the global norm of the
  global gradient (Keras clips before its own all-reduce, i.e. per replica); a second sum here
  would multiply the gradients by the number of replicas.
  """

  rate_scales: Sequence[float] | None = None   # aligned with the variables it is built for

  def _all_reduce_sum_gradients(self, grads_and_vars):
    return grads_and_vars

  def update_step(self, gradient, variable, learning_rate):
    if self.rate_scales is not None:
      scale = self.rate_scales[self._get_variable_index(variable)]
      if scale != 1.0:
        learning_rate = learning_rate * tf.cast(scale, learning_rate.dtype)
    return super().update_step(gradient, variable, learning_rate)


class _PlacedAdamW(_PreReducedAdamW):
  """`_PreReducedAdamW` for plain variables that live on their own devices (a
  tensor-parallel model's shards, created outside any strategy's scope): each variable's
  update and weight decay run on its device, without a strategy's `update` or merge call,
  which refuse a variable they do not mirror when called from a replica (under
  `multi_worker_mirrored`)."""

  def _backend_update_step(self, grads, trainable_variables, learning_rate):
    for grad, variable in zip(grads, trainable_variables):
      with tf.device(variable.value.device):
        self.update_step(grad, variable, learning_rate)

  def _apply_weight_decay(self, variables):
    if self.weight_decay is None:
      return
    for variable in variables:
      if self._use_weight_decay(variable):
        with tf.device(variable.value.device):
          rate = tf.cast(self.learning_rate, variable.dtype)
          decay = tf.cast(self.weight_decay, variable.dtype)
          variable.assign_sub(variable * decay * rate)


def build_optimizer(train: ml_collections.ConfigDict, variables, total_steps: int | None = None,
                    budget_progress: tf.Variable | None = None,
                    placed_variables: bool = False) -> keras.optimizers.Optimizer:
  """AdamW for `variables`; create and then `build` it inside `strategy.scope()`.

  Args:
    train: the `config.train` section.
    variables: the model's trainable variables.
    total_steps: where the learning-rate decay ends; default `config.train.steps`.
    budget_progress: `time_budget_progress()` of a run with a time budget (give the same
      variable to the `Trainer`): the decay then also ends with the budget.
    placed_variables: `variables` are plain variables on their own devices, created outside
      the strategy's scope (a tensor-parallel model's: `_PlacedAdamW`).

  Returns:
    An AdamW, not yet built (a float16 loss-scale wrapper builds it), expecting all-reduced,
    clipped gradients (see `_PreReducedAdamW`).
  """
  opt = train.optimizer
  optimizer = (_PlacedAdamW if placed_variables else _PreReducedAdamW)(
      learning_rate=learning_rate_schedule(train, total_steps, budget_progress),
      weight_decay=opt.weight_decay,   # 0.0, not None: Keras's AdamW refuses None
      beta_1=opt.beta_1, beta_2=opt.beta_2, epsilon=opt.epsilon, name="adamw")
  excluded = weight_decay_exclusions(variables, opt.decay_norms_biases, opt.decay_embeddings)
  if excluded and opt.weight_decay:
    optimizer.exclude_from_weight_decay(var_list=excluded)
  scales = [layer * crf for layer, crf in zip(layer_rate_scales(variables, opt.layer_decay),
                                              crf_rate_scales(variables, opt.crf_rate_scale))]
  if any(scale != 1.0 for scale in scales):
    optimizer.rate_scales = scales
  return optimizer

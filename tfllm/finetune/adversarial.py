"""Adversarial training on the word embeddings: FGM, PGD and FreeLB (`finetune.adversarial`).

The perturbation `delta` `[batch, seq, hidden]` is added to the word (token) embeddings only
(`TransformerBackbone`'s `word_embeddings_delta`), is zero at padding positions, and its norm is
taken per sequence, in float32, over the sequence's real tokens.

  fgm     Miyato et al. 2017: r = epsilon * g / ||g|| with g the gradient of the loss with
          respect to the word embeddings (per sequence); the step trains on
          (clean loss + loss_weight * loss at r) / (1 + loss_weight).
  pgd     `steps` ascent steps from delta = 0: delta <- project(delta + step_size * g / ||g||)
          onto the epsilon-ball (per sequence); then trains on (clean + loss_weight * loss at
          the last delta) / (1 + loss_weight). The first ascent step reuses the clean pass.
  freelb  Zhu et al. 2020: `steps` passes at delta_0 = 0, delta_1, ..., each delta one ascent
          step (as pgd) from the one before; the parameter gradients of the passes are
          averaged ("free" adversarial training: no separate clean term, `loss_weight` unused).
          The paper starts from a random delta_0 in the ball; here delta_0 = 0, so a run is
          deterministic and one device equals several.

Under `mixed_float16` the gradients come from the loss-scaled loss; the embeddings' gradient
is unscaled before its norm is taken, so the perturbation does not depend on the loss scale
(a scale that overflows float16 gives delta = 0 for that step, which the optimizer skips).
Everything runs inside the trainer's compiled replica step (the ascent loop is unrolled:
`steps` is a Python int, shapes are static).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import ml_collections
import tensorflow as tf

from tfllm.config import ConfigError
from tfllm.finetune.config import ADVERSARIAL_METHODS as METHODS
from tfllm.finetune.config import ADVERSARIAL_TASKS as SUPPORTED_TASKS
from tfllm.finetune.config import adversarial_defaults

def check_config(config: ml_collections.ConfigDict) -> None:
  """Refuses adversarial training where it is not wired (one-line `ConfigError`s)."""
  method = _section(config).get("method", "")
  if not method:
    return
  if config.task.name not in SUPPORTED_TASKS:
    raise ConfigError(
        f"config.finetune.adversarial.method={method!r} is not supported for "
        f"config.task.name={config.task.name!r}; accepted tasks: {', '.join(SUPPORTED_TASKS)} "
        "(or set config.finetune.adversarial.method='')")
  if config.finetune.distill.teacher_model_dir:
    raise ConfigError(
        f"config.finetune.adversarial.method={method!r} cannot be combined with "
        f"config.finetune.distill.teacher_model_dir="
        f"{config.finetune.distill.teacher_model_dir!r}; accepted: one of the two")


def _real_token_mask(features, delta: tf.Tensor) -> tf.Tensor:
  """float32 `[batch, seq, 1]`: 1 at real tokens (all ones without a padding mask)."""
  mask = features.get("padding_mask") if isinstance(features, dict) else None
  if mask is None:
    return tf.ones_like(delta[:, :, :1])
  return tf.cast(mask, tf.float32)[:, :, None]


def _sequence_norms(x: tf.Tensor) -> tf.Tensor:
  """L2 norm of each sequence of float32 `x` `[batch, seq, hidden]`, shape `[batch, 1, 1]`."""
  return tf.sqrt(tf.reduce_sum(tf.square(x), axis=[1, 2], keepdims=True))


def normalized_step(grad: tf.Tensor, real_tokens: tf.Tensor, length) -> tf.Tensor:
  """`length * g / ||g||` per sequence over real tokens (zero at padding), in float32.

  Args:
    grad: gradient of the loss w.r.t. the word embeddings, `[batch, seq, hidden]`.
    real_tokens: float32 `[batch, seq, 1]`, 1 at real tokens.
    length: the L2 norm each sequence's step gets (a sequence with a zero gradient gets 0).
  """
  grad = tf.cast(grad, tf.float32) * real_tokens
  return length * tf.math.divide_no_nan(grad, _sequence_norms(grad))


def project(delta: tf.Tensor, epsilon) -> tf.Tensor:
  """`delta` `[batch, seq, hidden]` projected onto the L2 ball of radius `epsilon`, per
  sequence."""
  norms = _sequence_norms(delta)
  return delta * tf.minimum(1.0, tf.math.divide_no_nan(tf.cast(epsilon, tf.float32), norms))


class AdversarialGradients:
  """The trainer's gradient function for `finetune.adversarial` (see the module doc).

  Called inside the replica step as
  `fn(loss_fn, variables, scale_loss, loss_scale, features) -> (loss, gradients)`, where
  `loss_fn(word_embeddings_delta or None)` runs the model in training mode and returns this
  replica's share of the loss, `scale_loss` is the optimizer's loss scaling, `loss_scale` its
  current factor (1.0 without scaling) and the gradients are those of the scaled loss, as
  the plain step returns them.

  Args:
    section: `config.finetune.adversarial`.
    hidden_dim: width of the word embeddings.
  """

  def __init__(self, section: ml_collections.ConfigDict, hidden_dim: int):
    self.method = section.method
    self.epsilon = float(section.epsilon)
    self.steps = int(section.steps)
    self.step_size = float(section.step_size)
    self.loss_weight = float(section.loss_weight)
    self.hidden_dim = int(hidden_dim)

  def _pass(self, loss_fn, delta, variables, scale_loss, loss_scale, with_params=True):
    """One forward/backward at `delta`: (loss, parameter gradients or None, unscaled
    float32 gradient w.r.t. delta)."""
    with tf.GradientTape() as tape:
      tape.watch(delta)
      loss = loss_fn(delta)
      scaled = scale_loss(loss)
    targets = (list(variables) if with_params else []) + [delta]
    grads = tape.gradient(scaled, targets)
    delta_grad = tf.zeros_like(delta) if grads[-1] is None else grads[-1]
    # Unscaled before normalizing: the direction must not depend on the float16 loss scale.
    delta_grad = tf.cast(delta_grad, tf.float32) / loss_scale
    # A loss scale too large for float16 overflows the gradient; the optimizer then skips the
    # step (and lowers the scale), but a NaN perturbation would also make the reported loss
    # NaN, which stops training: perturb by nothing instead.
    delta_grad = tf.where(tf.reduce_all(tf.math.is_finite(delta_grad)), delta_grad,
                          tf.zeros_like(delta_grad))
    return loss, (grads[:-1] if with_params else None), delta_grad

  def first_perturbation(self, loss_fn, variables, scale_loss, loss_scale, features):
    """The clean pass and the perturbation it gives.

    Returns:
      `(clean loss, clean gradients, delta, real-token mask)`: delta float32
      `[batch, seq, hidden]` is fgm's r (norm epsilon per sequence), or pgd's / freelb's
      first ascent step projected onto the epsilon-ball; the mask is float32
      `[batch, seq, 1]`, 1 at real tokens.
    """
    delta = tf.zeros(tf.concat([tf.shape(features["token_ids"]), [self.hidden_dim]], 0),
                     tf.float32)
    real_tokens = _real_token_mask(features, delta)
    loss, grads, delta_grad = self._pass(loss_fn, delta, variables, scale_loss, loss_scale)
    if self.method == "fgm":
      return loss, grads, normalized_step(delta_grad, real_tokens, self.epsilon), real_tokens
    delta = project(normalized_step(delta_grad, real_tokens, self.step_size), self.epsilon)
    return loss, grads, delta, real_tokens

  def __call__(self, loss_fn: Callable, variables: Sequence[tf.Variable],
               scale_loss: Callable, loss_scale: tf.Tensor,
               features) -> Tuple[tf.Tensor, list]:
    variables = list(variables)
    loss, grads, delta, real_tokens = self.first_perturbation(loss_fn, variables, scale_loss,
                                                              loss_scale, features)
    grads = _dense(grads, variables)
    if self.method == "freelb":
      total_loss, total_grads = loss, grads
      for step in range(1, self.steps):
        step_loss, step_grads, delta_grad = self._pass(loss_fn, delta, variables, scale_loss,
                                                       loss_scale)
        total_loss += step_loss
        total_grads = [g + s for g, s in zip(total_grads, _dense(step_grads, variables))]
        if step + 1 < self.steps:
          delta = project(delta + normalized_step(delta_grad, real_tokens, self.step_size),
                          self.epsilon)
      return total_loss / self.steps, [g / self.steps for g in total_grads]
    if self.method == "pgd":
      for _ in range(1, self.steps):
        _, _, delta_grad = self._pass(loss_fn, delta, variables, scale_loss, loss_scale,
                                      with_params=False)
        delta = project(delta + normalized_step(delta_grad, real_tokens, self.step_size),
                        self.epsilon)
    with tf.GradientTape() as tape:
      adversarial_loss = loss_fn(tf.stop_gradient(delta))
      scaled = scale_loss(adversarial_loss)
    adversarial_grads = _dense(tape.gradient(scaled, variables), variables)
    weight, norm = self.loss_weight, 1.0 + self.loss_weight
    return ((loss + weight * adversarial_loss) / norm,
            [(g + weight * a) / norm for g, a in zip(grads, adversarial_grads)])


def _dense(grads, variables) -> list:
  """Gradients as dense tensors, zeros for variables the loss does not reach."""
  return [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
          for g, v in zip(grads, variables)]


def gradients_fn(config: ml_collections.ConfigDict,
                 hidden_dim: int) -> Optional[AdversarialGradients]:
  """The trainer's gradient function of `config.finetune.adversarial`; None when it is off."""
  check_config(config)
  section = _section(config)
  return AdversarialGradients(section, hidden_dim) if section.get("method") else None


def _section(config: ml_collections.ConfigDict):
  """`config.finetune.adversarial`, empty for configs written before it existed."""
  return config.get("finetune", {}).get("adversarial", {})


def describe(section: ml_collections.ConfigDict) -> str:
  """One line naming the method and its settings (for the job's log)."""
  if section.method == "fgm":
    return f"fgm (epsilon {section.epsilon:g}, loss_weight {section.loss_weight:g})"
  text = (f"{section.method} (epsilon {section.epsilon:g}, {section.steps} steps of "
          f"{section.step_size:g}")
  return text + (")" if section.method == "freelb" else f", loss_weight {section.loss_weight:g})")

"""Mixed precision: the Keras dtype policy by name, and loss scaling for float16.

Under a mixed policy, variables stay float32 and layers compute in bfloat16 or float16.
float16 has too few exponent bits for small gradients, so its loss is scaled up before
differentiation and the gradients scaled back down before they are applied; a custom loop
does both through the optimizer `wrap_optimizer` returns:

    with tf.GradientTape() as tape:
      loss = loss_fn(...)
      scaled_loss = optimizer.scale_loss(loss)   # loss itself unless float16
    grads = tape.gradient(scaled_loss, variables)
    optimizer.apply(grads, variables)            # unscales; skips steps with inf/NaN grads

`scale_loss` exists on every Keras 3 optimizer, so the loop is the same for all policies.
"""

from __future__ import annotations

from typing import Optional

import keras
import tensorflow as tf

from tfllm.config import ConfigError

POLICIES = ("float32", "mixed_bfloat16", "mixed_float16", "auto")


def resolve_policy(name: str, strategy: Optional[tf.distribute.Strategy] = None) -> str:
  """The Keras policy name `name` stands for; "auto" is chosen by the hardware.

  auto: mixed_bfloat16 on TPUs and on GPUs of compute capability 8.0 or more (they compute
  in bfloat16 natively), float32 elsewhere (on CPUs mixed precision is slower: docs/stack.md).

  Args:
    name: one of `POLICIES`.
    strategy: the strategy the model will run under (a `TPUStrategy` means TPU); None:
      judged by the local devices.

  Raises:
    ValueError: `name` is not one of `POLICIES`.
  """
  if name not in POLICIES:
    raise ConfigError(f"mixed precision policy {name!r} is not known; use one of: "
                      f"{', '.join(POLICIES)}")
  if name != "auto":
    return name
  if isinstance(strategy, tf.distribute.TPUStrategy) or (
      strategy is None and tf.config.list_logical_devices("TPU")):
    return "mixed_bfloat16"
  gpus = tf.config.list_physical_devices("GPU")
  capabilities = [tf.config.experimental.get_device_details(g).get("compute_capability", (0, 0))
                  for g in gpus]
  if capabilities and all(c >= (8, 0) for c in capabilities):
    return "mixed_bfloat16"
  return "float32"


def set_policy(name: str, strategy: Optional[tf.distribute.Strategy] = None) -> str:
  """Sets Keras' global dtype policy (before the model is built) and returns its name.

  Args:
    name: "float32", "mixed_bfloat16", "mixed_float16" or "auto" (see `resolve_policy`).
    strategy: the strategy the model will run under, for "auto".

  Returns:
    The policy set, never "auto": pass it to `wrap_optimizer`.
  """
  policy = resolve_policy(name, strategy)
  keras.mixed_precision.set_global_policy(policy)
  return policy


def wrap_optimizer(optimizer: keras.optimizers.Optimizer,
                   policy_name: str) -> keras.optimizers.Optimizer:
  """`optimizer` wrapped in a dynamic `LossScaleOptimizer` for float16, else unchanged.

  Call it inside `strategy.scope()`, where the optimizer is built.

  Args:
    optimizer: the Keras optimizer.
    policy_name: the policy `set_policy` returned.
  """
  policy_name = resolve_policy(policy_name)
  if policy_name == "mixed_float16" and not isinstance(
      optimizer, keras.optimizers.LossScaleOptimizer):
    return keras.optimizers.LossScaleOptimizer(optimizer)
  return optimizer

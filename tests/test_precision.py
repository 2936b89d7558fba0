"""Tests of tfllm.precision: policies by name and float16 loss scaling in a custom loop."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfllm import distribute, precision


def _tiny_model():
  inputs = keras.Input((8,))
  hidden = keras.layers.Dense(16, activation="relu")(inputs)
  outputs = keras.layers.Dense(4, dtype="float32")(hidden)  # Logits in float32.
  return keras.Model(inputs, outputs)


@pytest.mark.parametrize("name,compute", [("float32", "float32"),
                                          ("mixed_bfloat16", "bfloat16"),
                                          ("mixed_float16", "float16")])
def test_policy_sets_compute_dtype_and_keeps_variables_float32(name, compute):
  assert precision.set_policy(name) == name
  model = _tiny_model()
  dense = model.layers[1]
  assert dense.compute_dtype == compute
  assert all(v.dtype == "float32" for v in model.weights)
  assert model(np.ones((2, 8), "float32")).dtype == "float32"


def test_auto_is_float32_on_cpu():
  assert precision.set_policy("auto") == "float32"
  assert keras.mixed_precision.global_policy().name == "float32"


def test_unknown_policy_is_one_line_error_listing_the_valid_ones():
  with pytest.raises(ValueError, match="'float8'.*float32, mixed_bfloat16, mixed_float16, auto"):
    precision.set_policy("float8")


@pytest.mark.parametrize("name,wrapped", [("float32", False), ("mixed_bfloat16", False),
                                          ("mixed_float16", True)])
def test_wrap_optimizer_loss_scales_only_float16(name, wrapped):
  optimizer = keras.optimizers.SGD(0.1)
  result = precision.wrap_optimizer(optimizer, name)
  assert isinstance(result, keras.optimizers.LossScaleOptimizer) == wrapped
  if not wrapped:
    assert result is optimizer
  assert precision.wrap_optimizer(result, name) is result  # Never wrapped twice.


@pytest.mark.parametrize("strategy_name", ["one_device", "mirrored"])
def test_float16_custom_step_applies_the_unscaled_gradients(strategy_name):
  """SGD(lr=1): the change of each variable must be minus its true (unscaled) gradient."""
  strategy = distribute.get_strategy(strategy_name)
  policy = precision.set_policy("mixed_float16", strategy)
  keras.utils.set_random_seed(0)
  with strategy.scope():
    model = _tiny_model()
    optimizer = precision.wrap_optimizer(keras.optimizers.SGD(learning_rate=1.0), policy)
    optimizer.build(model.trainable_variables)
  x = np.random.RandomState(0).normal(size=(8, 8)).astype("float32")
  y = np.arange(8) % 4
  loss_fn = keras.losses.SparseCategoricalCrossentropy(
      from_logits=True, reduction="sum")

  def replica_step(x, y):
    with tf.GradientTape() as tape:
      loss = loss_fn(y, model(x, training=True)) / 8.0  # Averaged over the global batch.
      scaled = optimizer.scale_loss(loss)
    grads = tape.gradient(scaled, model.trainable_variables)
    optimizer.apply(grads, model.trainable_variables)
    return loss

  dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
  batch = next(iter(strategy.experimental_distribute_dataset(dataset)))
  before = [v.numpy() for v in model.trainable_variables]
  # The true gradient, computed in float32 from the same weights.
  keras.mixed_precision.set_global_policy("float32")
  reference = _tiny_model()
  reference.set_weights(before)
  with tf.GradientTape() as tape:
    reference_loss = loss_fn(y, reference(x)) / 8.0
  true_grads = tape.gradient(reference_loss, reference.trainable_variables)

  per_replica = strategy.run(tf.function(replica_step), args=batch)
  loss = float(strategy.reduce("SUM", per_replica, axis=None))
  assert np.isfinite(loss)
  assert loss == pytest.approx(float(reference_loss), rel=1e-2)
  assert optimizer.dynamic_scale.numpy() == 32768.0  # Finite gradients: the scale is kept.
  for b, v, g in zip(before, model.trainable_variables, true_grads):
    assert v.dtype == "float32"
    # Scaled gradients would move the weights 32768x further; fp16 compute allows ~1e-3.
    np.testing.assert_allclose(b - v.numpy(), g.numpy(), rtol=2e-2, atol=2e-3)


def test_float16_step_with_overflow_is_skipped_and_the_scale_lowered():
  policy = precision.set_policy("mixed_float16")
  model = _tiny_model()
  optimizer = precision.wrap_optimizer(keras.optimizers.SGD(learning_rate=1.0), policy)
  optimizer.build(model.trainable_variables)
  before = [v.numpy() for v in model.trainable_variables]
  grads = [tf.fill(v.shape, np.inf) for v in model.trainable_variables]
  optimizer.apply(grads, model.trainable_variables)
  for b, v in zip(before, model.trainable_variables):
    np.testing.assert_array_equal(b, v.numpy())
  assert optimizer.dynamic_scale.numpy() == 16384.0

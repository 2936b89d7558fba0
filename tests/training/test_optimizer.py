"""AdamW's weight-decay exclusions, layer-wise rate decay and the warmup/decay schedule."""

from __future__ import annotations

import math
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.training.helpers import trainer_config
from tfllm import models
from tfllm.training.optimizer import (WarmupDecay, build_optimizer, layer_rate_scales,
                                      weight_decay_exclusions)


@pytest.mark.parametrize("decay, expected_end", [("cosine", 0.1), ("linear", 0.1),
                                                  ("constant", 1.0)])
def test_schedule_warms_up_linearly_then_decays_to_the_floor(decay, expected_end):
  schedule = WarmupDecay(peak=2.0, warmup_steps=10, decay_steps=110, decay=decay,
                         min_ratio=0.1)
  lr = lambda step: float(schedule(step))  # noqa: E731
  assert lr(0) == pytest.approx(0.2)       # (step + 1) / warmup: the first step learns
  assert lr(4) == pytest.approx(1.0)
  assert lr(10) == pytest.approx(2.0)
  assert lr(110) == pytest.approx(2.0 * expected_end)
  assert lr(10_000) == pytest.approx(2.0 * expected_end)
  if decay == "cosine":  # halfway through the decay: floor + half the range
    assert lr(60) == pytest.approx(2.0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5))))
  if decay == "linear":
    assert lr(60) == pytest.approx(2.0 * (0.1 + 0.9 * 0.5))


def test_norms_biases_and_embeddings_are_not_decayed_unless_asked():
  config = trainer_config()
  model = models.build(config)
  excluded = {v.path for v in weight_decay_exclusions(model.trainable_variables)}
  kernels = [v for v in model.trainable_variables if len(v.shape) == 2
             and v.path.split("/")[-1] != "embeddings"]
  assert kernels and not excluded & {v.path for v in kernels}
  assert all(len(v.shape) < 2 or v.path.endswith("embeddings")
             for v in model.trainable_variables if v.path in excluded)
  assert any(v.path.endswith("embeddings") for v in model.trainable_variables
             if v.path in excluded)
  everything = weight_decay_exclusions(model.trainable_variables, decay_norms_biases=True,
                                       decay_embeddings=True)
  assert everything == []


def test_decoupled_weight_decay_shrinks_only_decayed_variables():
  # With zero gradients Adam's update is 0, so only the decay moves the weights:
  # w <- w - lr * wd * w on kernels; excluded variables do not move.
  config = trainer_config()
  config.train.optimizer.update(weight_decay=0.5, learning_rate=0.1, warmup_steps=0,
                                decay="constant")
  keras.utils.set_random_seed(0)
  model = models.build(config)
  variables = model.trainable_variables
  optimizer = build_optimizer(config.train, variables)
  optimizer.build(variables)
  before = [v.numpy() for v in variables]
  optimizer.apply([tf.zeros_like(v) for v in variables], variables)
  excluded = {v.path for v in weight_decay_exclusions(variables)}
  for variable, old in zip(variables, before):
    if variable.path in excluded:
      np.testing.assert_array_equal(variable.numpy(), old)
    else:
      np.testing.assert_allclose(variable.numpy(), old * (1 - 0.1 * 0.5), rtol=1e-6)


def test_layer_decay_scales_each_blocks_rate_from_the_head_down():
  config = trainer_config()
  model = models.build(config)
  variables = model.trainable_variables
  scales = dict(zip((v.path for v in variables), layer_rate_scales(variables, 0.5)))
  blocks = config.model.num_layers
  for path, scale in scales.items():
    block = re.search(r"/block_(\d+)/", path)
    if block:
      assert scale == 0.5 ** (blocks - int(block.group(1))), path
    elif "embedding" in path:
      assert scale == 0.5 ** (blocks + 1), path
    else:
      assert scale == 1.0, path
  assert set(layer_rate_scales(variables, 1.0)) == {1.0}


@pytest.mark.parametrize("strategy_name", ["one_device", "mirrored"])
def test_layer_decay_scales_adams_first_update(strategy_name):
  # Adam's first update is lr * m / (sqrt(v) + eps) = lr * sign(g) (bias-corrected), so each
  # weight with a gradient moves by its variable's rate exactly: lr * layer_decay ** depth.
  config = trainer_config()
  config.train.optimizer.update(weight_decay=0.0, learning_rate=0.01, warmup_steps=0,
                                decay="constant", layer_decay=0.5, epsilon=1e-12)
  strategy = (tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
              if strategy_name == "mirrored" else tf.distribute.get_strategy())
  keras.utils.set_random_seed(0)
  with strategy.scope():
    model = models.build(config)
    variables = model.trainable_variables
    optimizer = build_optimizer(config.train, variables)
    optimizer.build(variables)
  scales = layer_rate_scales(variables, 0.5)
  assert len(set(scales)) == config.model.num_layers + 2
  before = [v.numpy() for v in variables]
  gradients = [tf.ones_like(v) for v in variables]
  strategy.run(lambda: optimizer.apply(gradients, variables))
  for variable, old, scale in zip(variables, before, scales):
    np.testing.assert_allclose(old - variable.numpy(), 0.01 * scale, rtol=1e-4,
                               err_msg=variable.path)


def test_the_crf_scores_train_at_their_own_rate_times_the_layer_decay():
  # Adam's first update moves each weight by its rate (as above): the CRF's transition and
  # start scores by lr * crf_rate_scale, the rest as layer decay says.
  config = trainer_config("token_classification")
  config.task.update(labels=["O", "B-X", "I-X"], num_classes=0, decoding="crf")
  config.train.optimizer.update(weight_decay=0.0, learning_rate=0.01, warmup_steps=0,
                                decay="constant", layer_decay=0.5, epsilon=1e-12,
                                crf_rate_scale=10.0)
  keras.utils.set_random_seed(0)
  model = models.build(config)
  variables = model.trainable_variables
  optimizer = build_optimizer(config.train, variables)
  optimizer.build(variables)
  layer_scales = layer_rate_scales(variables, 0.5)
  before = [v.numpy() for v in variables]
  optimizer.apply([tf.ones_like(v) for v in variables], variables)
  crf = [v.path for v in variables if v.path.rsplit("/", 1)[-1] in ("crf_transitions",
                                                                   "crf_start")]
  assert len(crf) == 2
  for variable, old, layer_scale in zip(variables, before, layer_scales):
    scale = 10.0 if variable.path in crf else layer_scale
    np.testing.assert_allclose(old - variable.numpy(), 0.01 * scale, rtol=1e-4,
                               err_msg=variable.path)


def test_crf_rate_scale_must_be_positive():
  from tfllm import config as config_lib
  config = trainer_config()
  config.train.optimizer.crf_rate_scale = 0.0
  with pytest.raises(config_lib.ConfigError, match=r"crf_rate_scale=0.0 is not accepted; use "
                                                   r"a factor > 0"):
    config_lib.validate(config)


def test_layer_decay_must_be_a_positive_factor():
  from tfllm import config as config_lib
  config = trainer_config()
  config.train.optimizer.layer_decay = 0.0
  with pytest.raises(config_lib.ConfigError, match="layer_decay=0.0 is not accepted; use a "
                                                   r"factor in \(0, 1\]"):
    config_lib.validate(config)

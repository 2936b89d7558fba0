"""The trainer on a tensor-parallel causal LM (`config.train.model_parallel=2`, the test
session's 2 logical CPUs): the loss trajectory and evaluation of the unsharded run, and
checkpoints that do not depend on the degree."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.training.helpers import SEQ, VOCAB, synthetic_dataset_fn
from tests import testing
from tfllm import metrics as metrics_lib
from tfllm import models
from tfllm.config import ConfigError
from tfllm.layers import tensor_parallel as tp
from tfllm.layers.tensor_parallel import ShardedLogits
from tfllm.metrics import losses
from tfllm.models import tensor_parallel as tp_models
from tfllm.training import job
from tfllm.training import tensor_parallel
from tfllm.training.loop import Trainer
from tfllm.training.optimizer import build_optimizer

STEPS = 12


def _config(style, degree):
  return testing.tiny_config(
      style, "causal_lm", labels=None, task_options=dict(dropout=0.0),
      model=dict(vocab_size=VOCAB, num_heads=4, max_sequence_length=SEQ, dropout=0.0),
      data=dict(sequence_length=SEQ),
      train=dict(global_batch_size=8, steps=STEPS, steps_per_loop=4, eval_steps=2,
                 checkpoint_every_steps=0, sample_new_tokens=0, jit_compile="off",
                 model_parallel=degree),
      optimizer=dict(warmup_steps=2, learning_rate=1e-3), validate=True)


def _trainer(config, model_dir):
  """The job's models at the config's degree, over synthetic data, under the default
  strategy (one tensor-parallel group); unsharded: the plain causal LM and its AdamW."""
  keras.utils.set_random_seed(0)
  state = None
  if config.train.model_parallel > 1:
    model, optimizer, state = tensor_parallel.build_models(config, None, log=lambda _: None)
  else:
    model = models.build(config)
    optimizer = build_optimizer(config.train, model.trainable_variables)
    optimizer.build(model.trainable_variables)
  return Trainer(config, tf.distribute.get_strategy(), model, optimizer, str(model_dir),
                 synthetic_dataset_fn(config), synthetic_dataset_fn(config, 10**7),
                 metrics=metrics_lib.eval_metrics(config), jit_compile=False,
                 checkpoint_state=state, log=lambda line: None)


def _value(variable):
  return keras.ops.convert_to_numpy(variable)


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_two_devices_train_and_evaluate_as_one(tmp_path, style):
  """Same weights at step 0 (the N=1 checkpoint, resumed at N=2): the same losses,
  evaluation and weights, in float32 within 1e-5; the N=2 checkpoint resumes at N=1 with
  the sharded run's values exactly."""
  unsharded = _trainer(_config(style, 1), tmp_path / "one")
  start = unsharded.save()
  sharded = _trainer(_config(style, 2), tmp_path / "two")
  sharded.restore(start)
  assert isinstance(sharded.model.model, tp_models.TensorParallelCausalLM)

  one, two = unsharded.train(), sharded.train()
  assert len(two.losses) == STEPS
  np.testing.assert_allclose(two.losses, one.losses, rtol=0, atol=1e-5)
  assert one.eval_metrics.keys() == two.eval_metrics.keys() >= {"loss", "accuracy",
                                                                 "perplexity"}
  for key, value in one.eval_metrics.items():
    assert two.eval_metrics[key] == pytest.approx(value, abs=1e-5), key

  # Saved at N=2 (the unsharded model and AdamW), resumed at N=1: the same values.
  saved = sharded.save()
  resumed = _trainer(_config(style, 1), tmp_path / "resumed")
  resumed.restore(saved)
  assert int(resumed.step.numpy()) == STEPS
  state = sharded.checkpoint_state
  for expected, got in ((state.model.weights, resumed.model.weights),
                        (state.optimizer.variables, resumed.optimizer.variables)):
    assert len(expected) == len(got)   # the same model and AdamW, in the same order
    for want, have in zip(expected, got):
      np.testing.assert_array_equal(_value(have), _value(want), err_msg=have.path)
  gathered = tp_models.unsharded_values(
      tp_models.parameter_layout(resumed.model, sharded.model.model))
  for variable, value in gathered:
    np.testing.assert_array_equal(_value(variable), value)
  for want, have in zip(unsharded.model.weights, resumed.model.weights):
    np.testing.assert_allclose(_value(have), _value(want), rtol=0, atol=1e-4,
                               err_msg=have.path)
  assert resumed.evaluate() == pytest.approx(two.eval_metrics, abs=1e-6)


@pytest.mark.parametrize("change, strategy, message", [
    (dict(task="masked_lm"), "mirrored", "supports config.task.name='causal_lm' only"),
    ({}, "multi_worker_mirrored", "data x tensor parallelism"),
    (dict(degree=4), "mirrored", "needs 4 devices"),
    (dict(degree=3), "mirrored", "does not divide config.model.num_heads=4"),
])
def test_requests_it_cannot_run_are_one_line_config_errors(tmp_path, change, strategy,
                                                           message):
  config = _config("gpt2", change.get("degree", 2))
  if "task" in change:
    config = testing.tiny_config("bert", "masked_lm", labels=None,
                                 train=dict(model_parallel=2), validate=True)
  with pytest.raises(ConfigError, match=message) as error:
    job.run(config, str(tmp_path / "run"), strategy_name=strategy, log=lambda line: None)
  assert "\n" not in str(error.value)
  assert not (tmp_path / "run").exists()


def test_sharded_logits_give_the_joined_logits_loss_and_predictions():
  """`tfllm.metrics.losses` on `ShardedLogits` (2 devices) against NumPy on the joined
  logits, with a tie across shards (the lowest index wins, as `np.argmax`)."""
  rng = np.random.default_rng(0)
  joined = rng.normal(size=(2, 3, 8)).astype("float32")
  joined[0, 0, 1] = joined[0, 0, 6] = 9.0   # tied maxima in shard 0 and shard 1
  labels = rng.integers(0, 8, size=(2, 3))
  weights = rng.uniform(size=(2, 3)).astype("float32")
  sharded = ShardedLogits([joined[..., :4], joined[..., 4:]], tp.tensor_parallel_devices(2))
  log_z = np.log(np.exp(joined - joined.max(-1, keepdims=True)).sum(-1)) + joined.max(-1)
  ce = log_z - np.take_along_axis(joined, labels[..., None], -1)[..., 0]
  ce_sum, weight_sum = losses.cross_entropy_sums(sharded, labels, weights)
  np.testing.assert_allclose(ce_sum, (ce * weights).sum(), rtol=1e-6)
  np.testing.assert_allclose(weight_sum, weights.sum(), rtol=1e-6)
  np.testing.assert_array_equal(losses.predictions(sharded), joined.argmax(-1))
  assert int(losses.predictions(sharded)[0, 0]) == 1

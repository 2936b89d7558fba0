"""Tensor parallelism (`tfllm.layers.tensor_parallel`, `tfllm.models.tensor_parallel`).

The test session has 2 logical CPUs (tests/conftest.py): degree 2 runs in-process; degree 4
runs in a subprocess that splits the CPU into 4 (`tests/layers/tensor_parallel_checks.py`).
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.layers import tensor_parallel_checks as checks
from tfllm.config import ConfigError
from tfllm.layers import tensor_parallel as tp
from tfllm.models import tensor_parallel as tp_models
from tfllm.models.build import build
from tfllm.training import tensor_parallel as tp_training
from tfllm.training.optimizer import build_optimizer

TOLERANCE = 1e-5
DEVICES = ["/job:localhost/replica:0/task:0/device:CPU:0",
           "/job:localhost/replica:0/task:0/device:CPU:1"]


def _assert_close(result):
  for key in ("logits", "loss", "grads", "adamw"):
    assert result[key] <= TOLERANCE, (key, result)
  assert result["placement"] > 0


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_causal_lm_matches_unsharded_at_degree_2(style):
  """Logits, loss, every gradient and three AdamW steps equal the unsharded model's."""
  _assert_close(checks.compare_causal_lm(style, 2))


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_a_vocabulary_the_degree_does_not_divide_is_padded_and_changes_nothing(style):
  """31 ids over 2 shards of 16 rows (tied: GPT-2; untied projection: Llama): the padding
  row reaches no logit, and logits, loss, gradients, AdamW and greedy decoding are the
  unsharded model's."""
  _assert_close(checks.compare_causal_lm(style, 2, vocab_size=31))
  dense_tokens, sharded_tokens = checks.compare_greedy_generation(style, 2, vocab_size=31)
  np.testing.assert_array_equal(sharded_tokens, dense_tokens)


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_greedy_generation_with_sharded_kv_cache_gives_the_same_tokens(style):
  dense_tokens, sharded_tokens = checks.compare_greedy_generation(style, 2)
  np.testing.assert_array_equal(sharded_tokens, dense_tokens)


def test_encoder_backbone_matches_unsharded_at_degree_2():
  """BERT style: post-norm, token types, bidirectional attention."""
  assert checks.compare_backbone("bert", 2) <= TOLERANCE


@pytest.mark.slow
def test_degree_4_in_a_subprocess_with_4_logical_cpus():
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  run = subprocess.run([sys.executable, "-m", "tests.layers.tensor_parallel_checks", "4",
                        "gpt2", "llama", "llama:31", "bert"], cwd=root, env=env,
                       capture_output=True, text=True, timeout=600, check=False)
  assert run.returncode == 0, run.stderr[-3000:]
  results = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
  # llama:31 is a vocabulary of 31 in 4 shards of 8 rows, the last with 7 real ones.
  assert [r["style"] for r in results] == ["gpt2", "llama", "llama:31", "bert"], run.stdout
  for result in results[:3]:
    _assert_close(result)
    assert result["same_tokens"], result
  assert results[3]["hidden"] <= TOLERANCE


def test_each_device_holds_one_nth_of_the_sharded_weights():
  """Measured on the variables' actual devices: every split weight puts 1/N of its bytes on
  each device; the rest (norms, positions, the row-parallel biases) lives once, on device 0."""
  config = checks.sharded_config("gpt2", 2)
  dense = build(config)
  model = tp_models.build_tensor_parallel(config)
  layout = tp_models.parameter_layout(dense, model)
  split = [param for param in layout if param.axis is not None]
  whole = [param for param in layout if param.axis is None]
  unsharded_bytes = sum(tp.variable_bytes_by_device([p.unsharded for p in split]).values())
  split_by_device = tp.variable_bytes_by_device([v for p in split for v in p.shards])
  assert split_by_device == {device: unsharded_bytes // 2 for device in DEVICES}
  assert {p.shards[0].value.device for p in whole} == {DEVICES[0]}
  total_by_device = tp.variable_bytes_by_device(model.weights)
  assert total_by_device[DEVICES[1]] == unsharded_bytes // 2
  assert sum(total_by_device.values()) == sum(
      tp.variable_bytes_by_device(dense.weights).values())
  # AdamW's slots (momentum, velocity) sit beside their variables: 2x on every device.
  parameters, optimizer = tp_training.device_bytes(config, model)
  assert parameters == total_by_device
  assert optimizer[DEVICES[1]] == 2 * parameters[DEVICES[1]]
  # Row-parallel biases are added once: only shard 0 has one.
  block = model.backbone.blocks[0]
  assert block.attention.shards[0].output_projection.bias is not None
  assert block.attention.shards[1].output_projection.bias is None
  assert block.feed_forward.shards[1].down.bias is None


def test_shard_and_unshard_are_inverse_with_sections():
  value = np.arange(4 * 12).reshape(4, 12)
  shards = tp.shard_value(value, 2, axis=1, sections=(4, 4, 4))
  np.testing.assert_array_equal(shards[0][:, :2], value[:, :2])   # Q heads of shard 0
  np.testing.assert_array_equal(shards[0][:, 2:4], value[:, 4:6])  # its K heads
  np.testing.assert_array_equal(shards[1][:, 4:], value[:, 10:])   # V heads of shard 1
  np.testing.assert_array_equal(tp.unshard_values(shards, 1, (4, 4, 4)), value)


def test_shard_pads_an_axis_the_degree_does_not_divide_and_unshard_drops_it():
  value = np.arange(10 * 3).reshape(10, 3) + 1
  shards = tp.shard_value(value, 4, axis=0)
  assert [s.shape for s in shards] == [(3, 3)] * 4 and tp.real_sizes(10, 4) == [3, 3, 3, 1]
  np.testing.assert_array_equal(shards[3], [[28, 29, 30], [0, 0, 0], [0, 0, 0]])
  np.testing.assert_array_equal(tp.unshard_values(shards, 0, size=10), value)
  assert tp.padded_size(10, 4) == 12 and tp.padded_size(12, 4) == 12
  assert not tp.vocabulary_fills_shards(5, 4)   # 2 rows a shard: the last holds none


def test_vocab_parallel_cross_entropy_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 3, 8)).astype("float32") * 5
  labels = rng.integers(0, 8, (2, 3))
  shifted = logits - logits.max(-1, keepdims=True)
  log_softmax = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  expected = -np.take_along_axis(log_softmax, labels[..., None], -1)[..., 0]
  for split in (4, 5):   # even shards, and a padded vocabulary's narrower last shard
    shards = [logits[..., :split], logits[..., split:]]
    ce = tp.vocab_parallel_cross_entropy(shards, labels, DEVICES)
    np.testing.assert_allclose(ce.numpy(), expected, atol=1e-5)
    np.testing.assert_array_equal(tp.vocab_parallel_argmax(shards, DEVICES).numpy(),
                                  logits.argmax(-1))


def test_layers_round_trip_their_config():
  layers = [tp.TensorParallelAttention(4, 8, DEVICES, num_kv_heads=2, use_bias=False,
                                       rotary_max_wavelength=10000.0),
            tp.TensorParallelFeedForward(64, DEVICES, activation="swiglu"),
            tp.VocabParallelEmbedding(10, 4, DEVICES),
            tp.VocabParallelProjection(10, DEVICES),
            tp.TensorParallelTransformerBlock(4, 64, DEVICES, num_kv_heads=2, causal=True)]
  for layer in layers:
    config = layer.get_config()
    assert type(layer).from_config(config).get_config() == config


def test_attention_masks_padded_keys_and_shards_the_cache():
  layer = tp.TensorParallelAttention(4, 8, DEVICES, num_kv_heads=2)
  x = np.random.default_rng(1).normal(size=(2, 5, 32)).astype("float32")
  padding = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool)
  out = layer(x, padding_mask=padding).numpy()
  changed = x.copy()
  changed[1, 3:] = 100.0  # padded keys: other positions' outputs must not move
  np.testing.assert_allclose(layer(changed, padding_mask=padding).numpy()[1, :3], out[1, :3],
                             atol=1e-6)
  caches = [tuple(np.zeros((2, 1, 5, 8), "float32") for _ in range(2)) for _ in DEVICES]
  _, updated = layer(x, cache=caches, cache_update_index=0, use_causal_mask=True)
  assert [tuple(t.shape) for keys_values in updated for t in keys_values] == [(2, 1, 5, 8)] * 4


@pytest.mark.parametrize("key,value,message", [
    ("num_heads", 6, "does not divide config.model.num_heads=6"),
    ("intermediate_dim", 30, "does not divide config.model.intermediate_dim=30"),
    ("vocab_size", 5, "splits config.model.vocab_size=5 into shards of 2 rows and leaves "
                      "the last without a real one; use one of: 1, 2, 3, 5"),
])
def test_a_degree_that_does_not_divide_is_a_one_line_error(key, value, message):
  config = checks.sharded_config("llama", 4)
  config.model[key] = value
  if key == "num_heads":
    config.model.update(num_kv_heads=6, head_dim=4)
  with pytest.raises(ConfigError, match=message) as error:
    tp_models.check_config(config)
  assert "\n" not in str(error.value)
  assert "model_parallel=4" in str(error.value)


def test_kv_heads_not_divisible_and_too_many_devices_are_errors():
  config = checks.sharded_config("llama", 4)
  config.model.num_kv_heads = 2
  with pytest.raises(ConfigError, match="does not divide config.model.num_kv_heads=2"):
    tp_models.check_config(config)
  config.model.num_kv_heads = 4
  with pytest.raises(ConfigError, match="needs 4 devices but this machine has 2"):
    tp_models.check_config(config)  # the test session has 2 logical CPUs
  config.train.model_parallel = 0
  with pytest.raises(ConfigError, match="model_parallel"):
    tp_models.check_config(config)


def test_mixed_precision_keeps_float32_variables_logits_and_loss():
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  model = tp_models.build_tensor_parallel(checks.sharded_config("llama", 2))
  features, labels, weights = checks.batch(0)
  shard_logits = model(features)
  total, count = model.cross_entropy_sums(shard_logits, labels, weights)
  assert all(v.dtype == "float32" for v in model.weights)
  assert model.backbone.blocks[0].attention.shards[1].compute_dtype == "bfloat16"
  assert [t.dtype for t in shard_logits] == [tf.float32] * 2
  assert total.dtype == tf.float32 and np.isfinite(total.numpy()) and count.numpy() > 0


def test_block_keras_file_save_load_gives_identical_outputs(tmp_path):
  inputs = np.random.default_rng(0).normal(size=(2, 5, 32)).astype("float32")
  model = keras.Sequential([keras.Input((5, 32)), tp.TensorParallelTransformerBlock(
      4, 64, DEVICES, num_kv_heads=2, activation="swiglu", causal=True)])
  expected = model(inputs)
  path = str(tmp_path / "block.keras")
  model.save(path)
  restored = keras.saving.load_model(path)
  np.testing.assert_array_equal(restored(inputs), expected)
  variable = restored.layers[0].feed_forward.shards[1].up.kernel
  assert variable.value.device == DEVICES[1]


def _built_optimizer(config, model):
  optimizer = build_optimizer(config.train, model.trainable_variables)
  optimizer.build(model.trainable_variables)
  return optimizer


def test_a_run_saved_at_degree_2_resumes_at_degree_1_with_identical_state(tmp_path):
  """Model and AdamW state go through an ordinary checkpoint of the unsharded model."""
  config = checks.sharded_config("llama", 2)  # untied projection, grouped KV heads
  host = build(config)
  host_optimizer = _built_optimizer(config, host)
  sharded = tp_models.build_tensor_parallel(config)
  optimizer = _built_optimizer(config, sharded)
  step = checks.train_step(sharded, optimizer, sharded.cross_entropy_sums)
  for i in range(2):
    step(*checks.batch(i))
  tp_training.to_unsharded(sharded, optimizer, host, host_optimizer)
  path = tf.train.Checkpoint(model=host, optimizer=host_optimizer).write(str(tmp_path / "c"))

  config.train.model_parallel = 1
  restored_host = build(config)
  restored_host_optimizer = _built_optimizer(config, restored_host)
  tf.train.Checkpoint(model=restored_host, optimizer=restored_host_optimizer).read(
      path).assert_consumed()
  resumed = tp_models.build_tensor_parallel(config)
  resumed_optimizer = _built_optimizer(config, resumed)
  tp_training.from_unsharded(resumed, resumed_optimizer, restored_host,
                             restored_host_optimizer)
  assert int(resumed_optimizer.iterations) == 2

  def state(model):
    return [value for _, value in tp_models.unsharded_values(
        tp_models.parameter_layout(restored_host, model))]
  for a, b in zip(state(sharded), state(resumed)):
    np.testing.assert_array_equal(a, b)
  # One more step at each degree: the AdamW state came along too.
  step(*checks.batch(2))
  checks.train_step(resumed, resumed_optimizer, resumed.cross_entropy_sums)(*checks.batch(2))
  for a, b in zip(state(sharded), state(resumed)):
    np.testing.assert_allclose(a, b, atol=1e-5)

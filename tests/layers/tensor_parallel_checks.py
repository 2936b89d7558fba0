"""Tensor-parallel models against the unsharded ones with copied weights (float32).

Used in-process by `test_tensor_parallel.py` (the test session's 2 logical CPUs) and as a
program in a subprocess that splits the CPU into 4 devices first:

  python -m tests.layers.tensor_parallel_checks 4 gpt2 llama llama:31

prints one JSON line per style with the largest differences found (and for causal LMs
whether greedy KV-cache decoding gave the unsharded model's tokens).
"""

from __future__ import annotations

import json
import sys

import numpy as np

TINY = dict(vocab_size=32, num_layers=2, hidden_dim=32, num_heads=8, intermediate_dim=32,
            max_sequence_length=8, dropout=0.0, attention_dropout=0.0)
BATCH, SEQ, ADAM_STEPS = 2, 8, 3


def sharded_config(style: str, degree: int, vocab_size: int = TINY["vocab_size"]):
  """`tests.testing.tiny_config` at the `TINY` sizes for degree `degree`: a causal LM (GPT-2,
  Llama with 4 KV heads, grouped: 2 query heads a KV head, also at N = 4) or an encoder
  (BERT, masked LM); `vocab_size` that `degree` does not divide gives a padded vocabulary."""
  # Imported here, as TensorFlow is everywhere in this module: run as a program, `main`
  # splits the CPU into devices before anything touches the runtime.
  from tests import testing  # pylint: disable=import-outside-toplevel
  # Adam divides by sqrt(v): a gradient element near 0 turns float32 rounding (1e-7) into
  # an update difference up to the learning rate; 1e-3 keeps three steps within 1e-5.
  return testing.tiny_config(style, "masked_lm" if style == "bert" else "causal_lm",
                             model=dict(TINY, vocab_size=vocab_size),
                             train=dict(model_parallel=degree),
                             optimizer=dict(learning_rate=1e-3, warmup_steps=0),
                             **(dict(num_kv_heads=4) if style == "llama" else {}))


def batch(seed: int = 0, vocab_size: int = TINY["vocab_size"]):
  """Token ids, labels and a padding mask with one padded tail (weight 0); the labels hold
  the vocabulary's last id (a padded vocabulary's last real row)."""
  rng = np.random.default_rng(seed)
  token_ids = rng.integers(0, vocab_size, (BATCH, SEQ)).astype("int32")
  labels = rng.integers(0, vocab_size, (BATCH, SEQ)).astype("int32")
  token_ids[0, 0] = labels[0, 0] = vocab_size - 1
  padding = np.ones((BATCH, SEQ), bool)
  padding[1, -3:] = False
  return {"token_ids": token_ids, "padding_mask": padding}, labels, padding.astype("float32")


def _max_diff(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, "float64") - np.asarray(b, "float64"))))


def compare_causal_lm(style: str, degree: int, vocab_size: int = TINY["vocab_size"]) -> dict:
  """Logits, loss, every gradient and `ADAM_STEPS` AdamW steps, unsharded vs sharded.

  Returns:
    The largest absolute differences by quantity, and the names of the sharded variables'
    devices checked against the layout.
  """
  import keras
  import tensorflow as tf

  from tfllm.models.build import build, build_backbone
  from tfllm.models import tensor_parallel as tp_models
  from tfllm.metrics import losses
  from tfllm.training.optimizer import build_optimizer

  config = sharded_config(style, degree, vocab_size)
  keras.utils.set_random_seed(1)
  dense = build(config)
  sharded = tp_models.build_tensor_parallel(config)
  layout = tp_models.parameter_layout(dense, sharded)
  tp_models.load_unsharded(layout)
  assert len(layout) == len(dense.trainable_variables), "the layout misses variables"

  dense_opt = build_optimizer(config.train, dense.trainable_variables)
  dense_opt.build(dense.trainable_variables)
  tp_opt = build_optimizer(config.train, sharded.trainable_variables)
  tp_opt.build(sharded.trainable_variables)

  dense_step = train_step(dense, dense_opt, losses.cross_entropy_sums)
  tp_step = train_step(sharded, tp_opt, sharded.cross_entropy_sums)

  result = dict(style=style, degree=degree, logits=0.0, loss=0.0, grads=0.0, adamw=0.0)
  tp_index = {id(v): i for i, v in enumerate(sharded.trainable_variables)}
  dense_index = {id(v): i for i, v in enumerate(dense.trainable_variables)}
  for step in range(ADAM_STEPS):
    features, labels, weights = batch(step, vocab_size)
    logits, loss, grads = dense_step(features, labels, weights)
    shard_logits, tp_loss, tp_grads = tp_step(features, labels, weights)
    if step == 0:  # the forward pass and gradients at the copied weights
      result["logits"] = _max_diff(np.concatenate([t.numpy() for t in shard_logits], -1),
                                   logits.numpy())
      result["loss"] = _max_diff(tp_loss.numpy(), loss.numpy())
      for param in layout:
        gathered = tp_models.gather(
            param, [tf.convert_to_tensor(tp_grads[tp_index[id(v)]]) for v in param.shards])
        expected = tf.convert_to_tensor(grads[dense_index[id(param.unsharded)]])
        result["grads"] = max(result["grads"], _max_diff(gathered, expected.numpy()))
  for variable, value in tp_models.unsharded_values(layout):
    result["adamw"] = max(result["adamw"], _max_diff(value, variable.numpy()))
  result["placement"] = check_placement(layout, sharded, tp_opt)
  return result


def train_step(model, optimizer, cross_entropy_sums):
  """A compiled step: (logits, mean loss over weights, gradients), then one AdamW update."""
  import tensorflow as tf

  @tf.function
  def step(features, labels, weights):
    with tf.GradientTape() as tape:
      logits = model(features)
      total, count = cross_entropy_sums(logits, labels, weights)
      loss = total / count
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply(grads, model.trainable_variables)
    return logits, loss, grads
  return step


def check_placement(layout, sharded, optimizer) -> int:
  """Asserts that shard `i` of every split variable, and its AdamW slots, live on device
  `i` with `1/N` of the unsharded shape; returns how many variables were checked."""
  import tensorflow as tf
  devices = [tf.DeviceSpec.from_string(d) for d in sharded.devices]
  slots = {slot.name: slot for slot in optimizer.variables}
  checked = 0
  for param in layout:
    if param.axis is None:
      continue
    for i, shard in enumerate(param.shards):
      expected = list(param.unsharded.shape)
      expected[param.axis] = -(-expected[param.axis] // len(param.shards))   # padded
      assert list(shard.shape) == expected, (shard.path, shard.shape, expected)
      # Keras names a slot after its variable's path (`add_variable_from_reference`).
      prefix = shard.path.replace("/", "_")
      for variable in [shard, slots[f"{prefix}_momentum"], slots[f"{prefix}_velocity"]]:
        device = tf.DeviceSpec.from_string(variable.value.device)
        assert (device.device_type, device.device_index) == (
            devices[i].device_type, devices[i].device_index), (variable.path, device)
        checked += 1
  return checked


def compare_greedy_generation(style: str, degree: int, vocab_size: int = TINY["vocab_size"]):
  """(unsharded tokens, sharded tokens) of greedy KV-cache decoding from the same weights."""
  import keras
  import tensorflow as tf

  from tfllm.models import generation
  from tfllm.models import tensor_parallel as tp_models
  from tfllm.models.build import build

  config = sharded_config(style, degree, vocab_size)
  keras.utils.set_random_seed(3)
  dense = build(config)
  sharded = tp_models.build_tensor_parallel(config)
  tp_models.load_unsharded(tp_models.parameter_layout(dense, sharded))
  features, _, _ = batch(7, vocab_size)
  lengths = np.array([3, 5], "int32")
  zeros = np.zeros(BATCH, "float32")

  def decode(model):
    run = tf.function(lambda ids: generation.generate_tokens(
        model, ids, lengths, np.full(BATCH, SEQ, "int32"), zeros, np.zeros(BATCH, "int32"),
        np.ones(BATCH, "float32"), np.zeros(BATCH, "int32")))
    token_ids, _ = run(tf.constant(features["token_ids"]))
    return token_ids.numpy()
  return decode(dense), decode(sharded)


def compare_backbone(style: str, degree: int) -> float:
  """Largest difference of the final hidden states of an unsharded and a sharded backbone
  (encoders, e.g. BERT: post-norm, token types, bidirectional)."""
  import keras

  from tfllm.models.build import build, build_backbone
  from tfllm.models import tensor_parallel as tp_models

  config = sharded_config(style, degree)
  keras.utils.set_random_seed(2)
  dense = build_backbone(config.model)
  sharded = tp_models.build_backbone(config.model, degree)
  dense.build()
  sharded.build()
  tp_models.load_unsharded(tp_models.backbone_layout(dense, sharded))
  features, _, _ = batch(5)
  features["token_type_ids"] = (np.arange(SEQ)[None, :] >= SEQ // 2).astype("int32") + \
      np.zeros((BATCH, 1), "int32")
  return _max_diff(sharded(features).numpy(), dense(features).numpy())


def main(argv):
  degree = int(argv[1])
  import tensorflow as tf
  cpu = tf.config.list_physical_devices("CPU")[0]
  tf.config.set_logical_device_configuration(
      cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(degree)])
  for name in argv[2:]:
    # "llama:31": the style at vocabulary size 31 (padded at N = 2 and 4).
    style, _, vocab = name.partition(":")
    vocab_size = int(vocab or TINY["vocab_size"])
    if style == "bert":
      print(json.dumps(dict(style=style, degree=degree, hidden=compare_backbone(style, degree))))
    else:
      result = compare_causal_lm(style, degree, vocab_size)
      result["style"] = name
      dense_tokens, sharded_tokens = compare_greedy_generation(style, degree, vocab_size)
      result["same_tokens"] = bool(np.array_equal(dense_tokens, sharded_tokens))
      print(json.dumps(result))
  sys.stdout.flush()


if __name__ == "__main__":
  main(sys.argv)

"""Tiny models and synthetic batches for the trainer's tests (seconds each on a 2-core CPU)."""

from __future__ import annotations

import keras
import tensorflow as tf

from tests import testing
from tfllm import models
from tfllm.finetune.pruning import build_pruning
from tfllm.finetune.strategies import apply_strategy
from tfllm import metrics as metrics_lib
from tfllm.training import optimizer as optimizer_lib
from tfllm.training.loop import Trainer

VOCAB = 64
SEQ = 16


def trainer_config(task: str = "causal_lm", **train):
  """2 layers, width 32, sequence 16, vocabulary 64; `train` overrides `config.train`.

  `tests.testing.tiny_config` (no style preset) with the trainer's settings: no dropout,
  3 classes, a 2-head multi-task model, 20 steps in loops of 5; validated.
  """
  task_options = dict(dropout=0.0)
  if task in ("sequence_classification", "token_classification"):
    task_options["num_classes"] = 3
  if task == "multi_task":
    task_options["heads"] = {
        "sentiment": dict(task="sequence_classification", num_classes=2, dropout=0.0,
                          loss_weight=1.0),
        "tags": dict(task="token_classification", num_classes=3, dropout=0.0,
                     loss_weight=0.5)}
  return testing.tiny_config(
      None, task, labels=None, task_options=task_options,
      model=dict(vocab_size=VOCAB, num_heads=2, max_sequence_length=SEQ, dropout=0.0),
      data=dict(sequence_length=SEQ),
      train=dict(dict(global_batch_size=8, steps=20, steps_per_loop=5, eval_steps=2,
                      checkpoint_every_steps=10, sample_new_tokens=0, jit_compile="off"),
                 **train),
      optimizer=dict(warmup_steps=2, learning_rate=3e-3), validate=True)


def _example(task: str, index):
  """One synthetic example (features, labels, sample_weight): a deterministic function of
  `index`, with a learnable pattern (next token = token + step mod VOCAB)."""
  index = tf.cast(index, tf.int32)
  step = 1 + index % 3
  tokens = (index * 7 + step * tf.range(SEQ + 1)) % VOCAB
  features = {"token_ids": tokens[:SEQ], "padding_mask": tf.ones([SEQ], tf.bool)}
  if task == "causal_lm":
    # Weight 0 on a varying tail: the loss must be a weighted mean over the global batch.
    weights = tf.cast(tf.range(SEQ) < SEQ - index % 4, tf.float32)
    return features, tokens[1:], weights
  if task == "masked_lm":
    features["mask_positions"] = tf.stack([index % SEQ, (index + 5) % SEQ])
    return features, tf.gather(tokens, features["mask_positions"]), tf.ones([2])
  if task == "sequence_classification":
    return features, step - 1, tf.constant(1.0)
  if task == "token_classification":
    return features, tokens[:SEQ] % 3, tf.ones([SEQ])
  labels = {"sentiment": index % 2, "tags": tokens[:SEQ] % 3}
  return features, labels, {"sentiment": tf.constant(1.0), "tags": tf.ones([SEQ])}


def synthetic_dataset_fn(config, offset: int = 0):
  """`input_context -> Dataset` of per-replica batches; example i goes to pipeline
  i % num_pipelines, so the union of the pipelines' k-th batches is the same examples for
  any number of workers (as a sharded file source does)."""
  task = config.task.name
  global_batch = config.train.global_batch_size

  def dataset_fn(context: tf.distribute.InputContext):
    per_replica = context.get_per_replica_batch_size(global_batch)
    dataset = tf.data.Dataset.range(offset, offset + 1_000_000)
    dataset = dataset.shard(context.num_input_pipelines, context.input_pipeline_id)
    dataset = dataset.map(lambda i: _example(task, i))
    return dataset.batch(per_replica, drop_remainder=True)

  return dataset_fn


def finite_dataset_fn(config, shard_sizes, per_replica_batch=None):
  """`input_context -> Dataset` of a finite split: pipeline i reads the next `shard_sizes[i]`
  examples (contiguous, as TFDS even splits are), in per-replica batches; sizes that are not
  multiples of the per-replica batch leave replicas (and workers) with unequal batch counts.
  `per_replica_batch` overrides the one of `train.global_batch_size`."""
  global_batch = config.train.global_batch_size

  def dataset_fn(context: tf.distribute.InputContext):
    assert len(shard_sizes) == context.num_input_pipelines
    start = 10**7 + sum(shard_sizes[:context.input_pipeline_id])
    dataset = tf.data.Dataset.range(start, start + shard_sizes[context.input_pipeline_id])
    return dataset.map(lambda i: _example(config.task.name, i)).batch(
        per_replica_batch or context.get_per_replica_batch_size(global_batch),
        drop_remainder=True)

  return dataset_fn


def make_trainer(config, model_dir, strategy=None, seed=0, train_fn=None, eval_fn=None,
                 **kwargs):
  """A Trainer over the tiny model and synthetic data, everything built in the scope."""
  strategy = strategy or tf.distribute.OneDeviceStrategy("/cpu:0")
  keras.utils.set_random_seed(seed)
  policy = keras.mixed_precision.global_policy().name
  with strategy.scope():
    model = models.build(config)
    apply_strategy(model, config.finetune)  # frozen layers or LoRA, as the job does
    if config.train.time_budget_minutes:  # as the job does: the decay follows the budget too
      kwargs.setdefault("budget_progress", optimizer_lib.time_budget_progress())
    optimizer = optimizer_lib.build_optimizer(config.train, model.trainable_variables,
                                              budget_progress=kwargs.get("budget_progress"))
    if policy == "mixed_float16":
      optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    optimizer.build(model.trainable_variables)
    pruning = build_pruning(model, config)  # as the job does: masks beside the model
  if pruning:
    kwargs.setdefault("step_hooks", [pruning])
  kwargs.setdefault("jit_compile", {"on": True, "off": False}.get(config.train.jit_compile))
  kwargs.setdefault("log", lambda line: None)
  return Trainer(config, strategy, model, optimizer, str(model_dir),
                 train_fn or synthetic_dataset_fn(config),
                 eval_fn or synthetic_dataset_fn(config, 10**7),
                 metrics=metrics_lib.eval_metrics(config), **kwargs)


def two_cpu_mirrored():
  # get_strategy gives each MirroredStrategy its own collective keys: two built directly in
  # one process collide ("Shape mismatch in the collective instance").
  from tfllm import distribute  # pylint: disable=g-import-not-at-top
  return distribute.get_strategy("mirrored")

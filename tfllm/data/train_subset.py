"""A fixed random subset of the training split (`data.train_examples`), for low-resource runs.

`data.train_examples = N` trains on N examples of `data.train_split`, drawn without
replacement by `data.train_examples_seed` (NumPy's `default_rng`) from the split's positions
in source order: the same N for every run, strategy and `train.seed`. `tfllm-train` writes
the chosen positions to `<model_dir>/train_examples.json`.
"""

from __future__ import annotations

import json
from typing import Optional

import numpy as np
import tensorflow as tf

from tfllm.config import ConfigError
from tfllm.data import sources

INDICES_FILE = "train_examples.json"


def selected_indices(num_examples: int, count: int, seed: int) -> np.ndarray:
  """The sorted positions (in source order) of the `count` examples a run trains on."""
  if count > num_examples:
    raise ConfigError(f"config.data.train_examples={count} is more than the {num_examples} "
                      f"examples of the training split; accepted: 0 (all) to {num_examples}")
  return np.sort(np.random.default_rng(seed).choice(num_examples, count, replace=False))


def _count(examples: tf.data.Dataset, num_examples: Optional[int]) -> int:
  """`num_examples`, or the examples counted when the source does not know it."""
  if num_examples is not None:
    return int(num_examples)
  return int(examples.reduce(0, lambda count, _: count + 1))


def select(examples: tf.data.Dataset, num_examples: Optional[int], data_config,
           input_context=None) -> tf.data.Dataset:
  """The chosen examples of the whole split `examples` (in source order), sharded over the
  input pipelines of `input_context`."""
  num_examples = _count(examples, num_examples)
  chosen = np.zeros(num_examples, bool)
  chosen[selected_indices(num_examples, data_config.train_examples,
                          data_config.get("train_examples_seed", 0))] = True
  chosen = tf.constant(chosen)
  examples = examples.enumerate().filter(lambda i, _: chosen[i]).map(lambda _, example: example)
  if input_context is not None and input_context.num_input_pipelines > 1:
    examples = examples.shard(input_context.num_input_pipelines,
                              input_context.input_pipeline_id)
  return examples


def describe(data_config) -> str:
  """The JSON of `INDICES_FILE`: the split, its size, the seed and the chosen positions."""
  source = sources.load_source(data_config, data_config.train_split)
  num_examples = _count(source.examples, source.num_examples)
  seed = data_config.get("train_examples_seed", 0)
  indices = selected_indices(num_examples, data_config.train_examples, seed)
  return json.dumps(dict(dataset=data_config.dataset, split=data_config.train_split,
                         split_examples=num_examples, seed=seed,
                         indices=[int(i) for i in indices]))

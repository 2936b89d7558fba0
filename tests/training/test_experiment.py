"""`tfllm.training.experiment.build_experiment`: which seed draws the model's build."""

import random

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.training.helpers import trainer_config
from tfllm import config as config_lib
from tfllm import runtime
from tfllm.training import experiment


def _built_state(tmp_path, seed: int, init_seed: int):
  """Every weight and every dropout seed generator's state right after the build."""
  vocabulary = tmp_path / "vocab.txt"   # a given vocabulary: no tokenizer training
  vocabulary.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] +
                                  [f"w{i}" for i in range(59)]))
  config = trainer_config("sequence_classification", seed=seed, init_seed=init_seed)
  config.tokenizer.vocabulary = str(vocabulary)
  config.model.dropout = 0.1
  built = experiment.build_experiment(config, tf.distribute.get_strategy(),
                                      str(tmp_path / f"run_{seed}_{init_seed}"), "float32",
                                      runtime.plan_threads(config.runtime),
                                      log=lambda line: None)
  generators = [g.state.numpy() for layer in built.model._flatten_layers()  # pylint: disable=protected-access
                for g in getattr(layer, "_seed_generators", ())]
  return [w.numpy() for w in built.model.weights], generators


def _next_draws():
  """The next draws of Python's, NumPy's and TensorFlow's global generators (the data order
  is drawn from TensorFlow's global seed)."""
  return random.random(), np.random.random(), float(tf.random.uniform([], seed=3))


def _same(a, b) -> bool:
  return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_init_seed_alone_draws_the_build(tmp_path):
  plain = _built_state(tmp_path, seed=0, init_seed=-1)
  assert plain[1], "the model has dropout seed generators to compare"
  # Another train.seed, the same init_seed: the same initial weights and dropout generators.
  shared = _built_state(tmp_path, seed=1, init_seed=0)
  assert _same(plain[0], shared[0]) and _same(plain[1], shared[1])
  # ... after which train.seed draws the rest, as right after seeding with it.
  after_build = _next_draws()
  keras.utils.set_random_seed(1)
  assert after_build == _next_draws()
  # Without init_seed, train.seed draws the build: another head.
  other = _built_state(tmp_path, seed=1, init_seed=-1)
  assert not _same(plain[0], other[0])
  # init_seed equal to train.seed is the plain run.
  explicit = _built_state(tmp_path, seed=0, init_seed=0)
  assert _same(plain[0], explicit[0]) and _same(plain[1], explicit[1])


def test_a_negative_init_seed_other_than_minus_one_is_refused():
  with pytest.raises(config_lib.ConfigError, match="init_seed=-2"):
    trainer_config("sequence_classification", init_seed=-2)

"""Every shipped config's fresh model starts with distinct weights, fixed by the global seed.

One unseeded Keras initializer instance returns the same values on every call; shared by all
blocks, it made every block start identical (and SwiGLU's gate equal to its up projection).
"""

import importlib.util
import itertools
import pathlib

import keras
import numpy as np
import pytest

from tfllm import models

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[2] / "configs"
CONFIGS = sorted(path.stem for path in CONFIG_DIR.glob("*.py") if path.stem != "__init__")
# Fewer, narrower layers and a small vocabulary keep each build to a fraction of a second;
# each config keeps its style (positions, norms, activation, KV heads, tying, head).
SMALL = dict(vocab_size=300, num_layers=3, hidden_dim=64, intermediate_dim=128,
             max_sequence_length=64, head_dim=0)


def _small_config(name):
  spec = importlib.util.spec_from_file_location(name, CONFIG_DIR / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  heads = config.model.num_heads
  kv_groups = heads // (config.model.num_kv_heads or heads)
  small_heads = 4 if kv_groups == 1 else 8   # grouped KV heads stay grouped (8 = 4 x 2)
  config.model.update(SMALL, num_heads=small_heads,
                      num_kv_heads=small_heads // kv_groups if config.model.num_kv_heads else 0)
  config.tokenizer.vocab_size = SMALL["vocab_size"]
  return config


def _weights(name, seed):
  keras.utils.set_random_seed(seed)
  model = models.build(_small_config(name))
  # Paths without the model's own name (Keras numbers it: causal_lm, causal_lm_1, ...).
  return {weight.path.split("/", 1)[1]: np.asarray(weight) for weight in model.weights}


def _random_weights(weights):
  """The weights whose initializer is random: constant tensors (zero biases, unit norm
  scales) are equal across layers by design."""
  return {path: value for path, value in weights.items() if np.unique(value).size > 1}


@pytest.mark.parametrize("name", CONFIGS)
def test_no_two_weights_of_a_fresh_model_start_equal(name):
  weights = _random_weights(_weights(name, seed=0))
  assert len(weights) >= 3 * 4  # every block's kernels at least
  equal = [(a, b) for (a, x), (b, y) in itertools.combinations(sorted(weights.items()), 2)
           if x.shape == y.shape and np.array_equal(x, y)]
  assert not equal, f"{len(equal)} pairs start equal, e.g. {equal[:3]}"


@pytest.mark.parametrize("name", ["gpt_tiny", "llama_tiny", "bert_tiny"])
def test_the_global_seed_fixes_the_initial_weights(name):
  first, again, other = _weights(name, 0), _weights(name, 0), _weights(name, 1)
  assert first.keys() == again.keys() == other.keys()
  for path in first:
    np.testing.assert_array_equal(first[path], again[path], err_msg=path)
  for path in _random_weights(first):
    assert not np.array_equal(first[path], other[path]), path

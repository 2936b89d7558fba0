"""`data.train_examples`: a fixed random subset of the training split."""

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from tfllm import config as config_lib
from tfllm.data import train_subset


def data_section(count, seed=0):
  return ml_collections.ConfigDict(dict(train_examples=count, train_examples_seed=seed))


def test_the_subset_is_fixed_by_its_seed_and_distinct_positions():
  first = train_subset.selected_indices(1000, 50, seed=3)
  np.testing.assert_array_equal(first, train_subset.selected_indices(1000, 50, seed=3))
  assert len(np.unique(first)) == 50 and np.all(np.diff(first) > 0)
  assert 0 <= first.min() and first.max() < 1000
  assert not np.array_equal(first, train_subset.selected_indices(1000, 50, seed=4))


def test_select_keeps_the_chosen_examples_over_any_number_of_pipelines():
  examples = tf.data.Dataset.range(100).map(lambda i: {"id": i})
  expected = train_subset.selected_indices(100, 12, seed=1)
  one = [int(x["id"]) for x in train_subset.select(examples, 100, data_section(12, 1))]
  assert one == list(expected)
  shards = [[int(x["id"]) for x in train_subset.select(
      examples, None, data_section(12, 1),
      tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=i))]
            for i in range(2)]
  assert sorted(shards[0] + shards[1]) == list(expected) and len(shards[0]) == 6


def test_more_examples_than_the_split_has_is_a_config_error():
  with pytest.raises(config_lib.ConfigError,
                     match=r"^config.data.train_examples=11 is more than the 10 examples"):
    train_subset.selected_indices(10, 11, seed=0)
  config = config_lib.default_config()
  config.data.train_examples = -1
  with pytest.raises(config_lib.ConfigError, match="config.data.train_examples=-1"):
    config_lib.validate(config)

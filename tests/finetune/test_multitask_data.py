"""Multi-task input: per-head batches widened to the multi-task layout, mixed or in turn."""

import numpy as np
import pytest

from tests.finetune.test_recipes import load_recipe
from tfllm import config as config_lib
from tfllm import models
from tfllm.config import ConfigError
from tfllm.finetune.multitask_data import multitask_dataset
from tfllm.metrics import losses


@pytest.fixture
def multitask_config(finetune_section, tfds_dir):
  config = load_recipe("minilm_multitask")
  config.data.update(data_dir=tfds_dir, sequence_length=24, bucket_lengths=())
  config.train.global_batch_size = 4
  config.finetune.head_data.ner.update(train_split="train[:40]", eval_split="validation[:8]")
  config.finetune.head_data.sentiment.update(train_split="train[:40]",
                                             eval_split="validation[:12]")
  return config_lib.validate(config)


def _tokenizer(config):
  from tfllm.data import tokenizers  # pylint: disable=import-outside-toplevel
  return tokenizers.get_tokenizer(config)


@pytest.mark.slow
@pytest.mark.parametrize("buckets", [(), (12,)])
def test_training_batches_mix_heads_with_zero_weights_elsewhere(multitask_config, buckets):
  config = multitask_config
  config.data.bucket_lengths = buckets
  batches = list(multitask_dataset(config, "train", _tokenizer(config)).take(12))
  active = []
  for features, labels, weights in batches:
    assert set(features) == {"token_ids", "padding_mask", "word_ids"}
    length = features["token_ids"].shape[1]
    assert length in (24,) + buckets and features["word_ids"].shape == (4, length)
    assert labels["ner"].shape == weights["ner"].shape == (4, length)
    assert labels["sentiment"].shape == (4,)
    totals = {name: float(np.sum(w)) for name, w in weights.items()}
    assert sum(t > 0 for t in totals.values()) == 1, totals   # one head per batch
    active.append(max(totals, key=totals.get))
  assert set(active) == {"ner", "sentiment"}
  # The multi-task model and the trainer's per-head loss take these batches as they are.
  model = models.build(config)
  features, labels, weights = batches[0]
  logits = model(features)
  for name in ("ner", "sentiment"):
    ce_sum, w_sum = losses.cross_entropy_sums(logits[name], labels[name], weights[name])
    assert np.isfinite(ce_sum) and (float(w_sum) > 0) == (name == active[0])


@pytest.mark.slow
def test_eval_reads_each_head_split_once(multitask_config):
  config = multitask_config
  batches = list(multitask_dataset(config, "eval", _tokenizer(config), training=False))
  heads = [next(n for n, w in weights.items() if np.sum(w) > 0) for _, _, weights in batches]
  assert heads == ["ner", "ner", "sentiment", "sentiment", "sentiment"]


def test_missing_head_data(finetune_section):
  config = load_recipe("minilm_multitask")
  del config.finetune.head_data["sentiment"]
  with pytest.raises(ConfigError, match="no entry for head 'sentiment'"):
    multitask_dataset(config, "train", tokenizer=None)

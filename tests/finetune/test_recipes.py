"""The MiniLM recipes: configs validate, `prepare_model` loads the checkpoint and applies the
strategy, and a short fine-tuning on real data beats the untrained head (slow)."""

import importlib.util
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.models.test_convert import minilm_dir
from tfllm import config as config_lib
from tfllm import finetune, models
from tfllm import metrics as metrics_lib
from tfllm.config import ConfigError
from tfllm.finetune.multitask_data import multitask_dataset
from tfllm.models.convert import load_hf_bert
from tfllm.training import optimizer as optimizer_lib
from tfllm.training.loop import Trainer

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "configs")
RECIPES = ("minilm_conll2003_ner", "minilm_movie_sentiment", "minilm_multitask",
           "distill_bert_tiny", "distill_bert_tiny:ner")


def load_recipe(name):
  """`get_config()` of configs/NAME.py; `NAME:ARG` passes ARG as --config=FILE:ARG does."""
  minilm_dir()
  name, *args = name.split(":")
  spec = importlib.util.spec_from_file_location(name, os.path.join(CONFIGS, f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*args)


@pytest.mark.parametrize("name", RECIPES)
def test_recipes_validate(name, finetune_section):
  config = config_lib.validate(load_recipe(name))
  assert config.tokenizer.vocabulary.endswith("vocab.txt")
  if name.startswith("minilm"):
    assert config.finetune.init_checkpoint == minilm_dir()
    assert (config.model.num_layers, config.model.hidden_dim) == (6, 384)
  else:
    assert (config.model.num_layers, config.model.hidden_dim) == (2, 128)
    assert config.task.name == ("token_classification" if name.endswith(":ner")
                                else "sequence_classification")


def test_bad_finetune_values(finetune_section):
  with pytest.raises(ValueError, match="distill_bert_tiny.py:pos is not known; accepted tasks: "
                                       "sentiment, ner"):
    load_recipe("distill_bert_tiny:pos")
  config = load_recipe("minilm_movie_sentiment")
  config.finetune.update(strategy="lora", lora_rank=0)
  with pytest.raises(ConfigError, match="config.finetune.lora_rank=0 must be >= 1"):
    config_lib.validate(config)
  config.finetune.update(strategy="prefix", lora_rank=8)
  with pytest.raises(ConfigError, match="config.finetune.strategy='prefix' is not accepted; "
                                        "use one of: 'full', 'top_layers', 'lora', 'adapters'"):
    config_lib.validate(config)


def test_prepare_model_loads_checkpoint_and_applies_strategy(finetune_section):
  config = load_recipe("minilm_conll2003_ner")
  config.finetune.update(strategy="lora", lora_rank=4)
  model = models.build(config)
  info = finetune.prepare_model(model, config)
  assert info["ignored_tensors"] == ["embeddings.position_ids", "pooler.dense.bias",
                                     "pooler.dense.weight"]
  reference, _ = load_hf_bert(minilm_dir())
  np.testing.assert_array_equal(model.backbone.blocks[5].feed_forward.down.kernel.numpy(),
                                reference.blocks[5].feed_forward.down.kernel.numpy())
  assert finetune.strategies.lora_enabled(model)
  assert info["trainable_parameters"] == finetune.trainable_parameter_count(model) < 500_000


# ------------------------------------------------------------------ short real fine-tuning


def short_run(config, tmp_path, steps, jit_compile=False):
  """Trains `steps` steps with the tfllm Trainer; returns (metrics before, metrics after)."""
  from tfllm.data import pipelines, tokenizers  # pylint: disable=import-outside-toplevel
  config.train.update(steps=steps, steps_per_loop=steps, eval_steps=10,
                      checkpoint_every_steps=0, global_batch_size=16)
  config.train.optimizer.update(learning_rate=1e-4, warmup_steps=2)
  config = config_lib.validate(config)
  tokenizer = tokenizers.get_tokenizer(config)
  keras.utils.set_random_seed(0)
  strategy = tf.distribute.get_strategy()
  model = models.build(config)
  finetune.prepare_model(model, config)
  optimizer = optimizer_lib.build_optimizer(config.train, model.trainable_variables)
  optimizer.build(model.trainable_variables)

  def data(split_kind, training):
    if config.task.name == "multi_task":
      return lambda context: multitask_dataset(config, split_kind, tokenizer, context, training)
    split = config.data[f"{split_kind}_split"]
    return lambda context: pipelines.make_dataset(config, split, tokenizer, context, training)

  trainer = Trainer(config, strategy, model, optimizer, str(tmp_path),
                    data("train", True), data("eval", False),
                    metrics=metrics_lib.eval_metrics(config, tokenizer), jit_compile=jit_compile,
                    log=lambda line: None)
  before = trainer.evaluate()
  after = trainer.train().eval_metrics
  return before, after


@pytest.mark.slow
def test_short_sentiment_fine_tuning_beats_untrained_head(finetune_section, tfds_dir, tmp_path):
  config = load_recipe("minilm_movie_sentiment")
  config.data.update(data_dir=tfds_dir, sequence_length=32, bucket_lengths=(16,),
                     train_split="train[:640]", eval_split="validation[:160]")
  before, after = short_run(config, tmp_path, steps=40)
  assert after["accuracy"] > before["accuracy"] + 0.1, (before, after)
  assert after["class/macro/f1"] > before["class/macro/f1"]


@pytest.mark.slow
def test_short_ner_fine_tuning_beats_untrained_head(finetune_section, tfds_dir, tmp_path):
  config = load_recipe("minilm_conll2003_ner")
  # Batches of 16 and 32 pieces, each with its own XLA-compiled step (as on a GPU).
  config.data.update(data_dir=tfds_dir, sequence_length=32, bucket_lengths=(16,),
                     train_split="train[:640]", eval_split="validation[:160]")
  before, after = short_run(config, tmp_path, steps=40, jit_compile=True)
  assert after["entity/micro/f1"] > before["entity/micro/f1"] + 0.1, (before, after)


@pytest.mark.slow
def test_short_multitask_fine_tuning_improves_both_heads(finetune_section, tfds_dir, tmp_path):
  config = load_recipe("minilm_multitask")
  config.data.update(data_dir=tfds_dir, sequence_length=32, bucket_lengths=(16,))
  for head in ("ner", "sentiment"):
    # 5 + 5 eval batches of 16: short_run evaluates 10 batches, the heads one after the other.
    config.finetune.head_data[head].update(train_split="train[:640]",
                                           eval_split="validation[:80]")
  before, after = short_run(config, tmp_path, steps=80)
  assert after["ner/entity/micro/f1"] > before["ner/entity/micro/f1"] + 0.1, (before, after)
  assert after["sentiment/accuracy"] > before["sentiment/accuracy"] + 0.05, (before, after)


@pytest.mark.slow
def test_label_outside_config_labels_is_refused(finetune_section, tfds_dir):
  from tfllm.data import pipelines, tokenizers  # pylint: disable=import-outside-toplevel
  config = load_recipe("minilm_conll2003_ner")
  config.data.update(data_dir=tfds_dir, sequence_length=32, bucket_lengths=(16,))
  config.task.labels = [tag for tag in config.task.labels if not tag.endswith("MISC")]
  tokenizer = tokenizers.get_tokenizer(config)
  with pytest.raises(ValueError, match=r"labels \['B-MISC', 'I-MISC'\] of 'tfllm_conll2003'"):
    pipelines.make_dataset(config, "validation[:16]", tokenizer, training=False)

"""Tiny trained-looking model directories for the export tests (2 layers, width 32)."""

from __future__ import annotations

import os

import keras
import keras_hub
import pytest
import tensorflow as tf

from tfllm import config as config_lib
from tfllm.data import tokenizers
from tfllm.models import build
from tfllm.models.config import model_preset
from tfllm.training import checkpointing

WORDS = ("the a film is was good bad great awful movie john mary lives in paris london "
         "hello world to be or not that question . , ! ?").split()
VOCABULARY = list(tokenizers.WORD_PIECE_RESERVED) + WORDS + ["##s", "##ing", "##ed"]
NER_TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def tiny_tokenizer():
  return keras_hub.tokenizers.WordPieceTokenizer(vocabulary=VOCABULARY, lowercase=True,
                                                 oov_token="[UNK]")


def tiny_config(task: str):
  """A full config of a 2-layer, width-32 model for `task` over the tiny vocabulary."""
  config = config_lib.default_config()
  style = "gpt2" if task == "causal_lm" else "bert"
  config.model.update(model_preset(style))
  config.model.update(vocab_size=len(VOCABULARY), num_layers=2, hidden_dim=32, num_heads=2,
                      intermediate_dim=64, max_sequence_length=32, dropout=0.0,
                      attention_dropout=0.0)
  config.task.name = task
  config.task.dropout = 0.0
  config.data.sequence_length = 16
  if task == "sequence_classification":
    config.task.labels = ["negative", "positive"]
  elif task == "token_classification":
    config.task.labels = NER_TAGS
  config.export.max_new_tokens = 8
  config.export.temperature = 0.0
  return config


def make_model_dir(path: str, task: str, seed: int = 0):
  """Writes what a training run leaves: config.json, tokenizer/, checkpoints/ckpt-1."""
  config = tiny_config(task)
  keras.utils.set_random_seed(seed)
  model = build(config)
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
    f.write(config_lib.to_json(config))
  tokenizers.save_tokenizer(tiny_tokenizer(), os.path.join(path, "tokenizer"))
  manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model),
                                       checkpointing.checkpoint_dir(path), max_to_keep=1)
  manager.save(checkpoint_number=1)
  return model, config


class _ModelDirs(dict):
  """task -> a model directory, written on first use."""

  def __init__(self, root):
    super().__init__()
    self.root = root

  def __missing__(self, task):
    make_model_dir(str(self.root / task), task, seed=len(self))
    self[task] = str(self.root / task)
    return self[task]


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
  """task -> a model directory (each built once per test session, when first used)."""
  return _ModelDirs(tmp_path_factory.mktemp("model_dirs"))

"""Per-character validation loss: hand-computed values, packed blocks, and the job's reports."""

from __future__ import annotations

import glob
import json
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.data.conftest import pydoc_topics
from tests.training.helpers import synthetic_dataset_fn, trainer_config
from tfllm import models
from tfllm.model_dir import EVAL_FILE
from tfllm.data import char_counts, pipelines, sources, tokenizers
from tfllm import metrics as metrics_lib
from tfllm.metrics import char_loss
from tfllm.training import optimizer as optimizer_lib
from tfllm.training.loop import Trainer

# Documents with 2- and 3-byte UTF-8 characters, so that block boundaries fall inside
# characters, and with newlines and runs of spaces that only a lossless tokenizer keeps.
DOCUMENTS = [
    "Où est la café?  Déjà vu —\nnaïve " * 9,
    "To be, or not to be: that is the question.\n" * 7,
    "日本語のテキスト、そして English words.  \n" * 5,
]


def _totals(metric, logits, labels, weights):
  sums = metric.sums({}, tf.constant(logits, tf.float32), tf.constant(labels),
                     tf.constant(weights, tf.float32))
  return {k: float(v) for k, v in sums.items()}


def test_hand_computed_example():
  # Vocabulary of 4; token i stands for i characters.
  metric = char_loss.CharacterLoss(np.array([0, 1, 2, 3]))
  # Row 1: uniform logits, NLL ln 4 for each target. Row 2: p(token 0) = 3/6 = 1/2, NLL ln 2.
  logits = [[[0.0] * 4] * 3, [[math.log(3.0), 0.0, 0.0, 0.0]] * 3]
  labels = [[1, 2, 3], [0, 3, 3]]
  weights = [[1, 1, 1], [1, 1, 0]]  # the last target is masked out: neither loss nor chars
  totals = _totals(metric, logits, labels, weights)
  p3 = 1.0 / 6.0  # p(token 3) under the second row's logits
  nats = 3 * math.log(4.0) + math.log(2.0) - math.log(p3)
  characters = 1 + 2 + 3 + 0 + 3
  assert totals == pytest.approx({"char_loss/nats": nats, "char_loss/characters": characters})
  result = metric.result(totals)
  assert result["nats_per_char"] == pytest.approx(nats / characters)
  assert result["bits_per_char"] == pytest.approx(nats / characters / math.log(2.0))
  assert result["characters"] == characters
  # Row 1 alone: 3 ln 4 nats over 6 characters = exactly one bit per character.
  row = metric.result(_totals(metric, logits[:1], labels[:1], weights[:1]))
  assert row["bits_per_char"] == pytest.approx(1.0)


def test_zero_characters_is_an_error_not_a_division_by_zero():
  metric = char_loss.CharacterLoss(np.array([0, 0]))
  totals = _totals(metric, [[[0.0, 0.0]]], [[1]], [[1.0]])
  with pytest.raises(ValueError, match="0 characters"):
    metric.result(totals)


def test_without_a_tokenizer_nothing_is_reported():
  config = trainer_config()
  metric = char_loss.character_loss(config, None)
  assert metric.sums({}, None, None, None) == {} and metric.result({}) == {}


def test_registered_for_causal_lm_only():
  tokenizer = tokenizers.ByteLevelTokenizer()
  causal = metrics_lib.eval_metrics(trainer_config("causal_lm"), tokenizer)
  masked = metrics_lib.eval_metrics(trainer_config("masked_lm"), tokenizer)
  assert sum(isinstance(m, char_loss.CharacterLoss) for m in causal) == 1
  assert not any(isinstance(m, char_loss.CharacterLoss) for m in masked)


def test_single_character_tokens_give_per_character_loss_equal_to_per_token_loss(tmp_path):
  # The trainer's synthetic data uses ids < 64: ASCII bytes, one character each under the
  # byte-level tokenizer; its sample weights mask a varying tail of every example.
  config = trainer_config(steps=5, eval_steps=3)
  keras.utils.set_random_seed(0)
  strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
  with strategy.scope():
    model = models.build(config)
    optimizer = optimizer_lib.build_optimizer(config.train, model.trainable_variables)
    optimizer.build(model.trainable_variables)
  trainer = Trainer(config, strategy, model, optimizer, str(tmp_path),
                    synthetic_dataset_fn(config), synthetic_dataset_fn(config, 10**7),
                    metrics=metrics_lib.eval_metrics(config, tokenizers.ByteLevelTokenizer()),
                    jit_compile=False, log=lambda line: None)
  result = trainer.train().eval_metrics
  assert result["nats_per_char"] == pytest.approx(result["loss"], rel=1e-6)
  assert result["bits_per_char"] == pytest.approx(result["loss"] / math.log(2.0), rel=1e-6)
  # 3 batches of 8 examples of 16 targets, example i masking its last i % 4.
  weighted = sum(16 - i % 4 for i in range(10**7, 10**7 + 24))
  assert result["characters"] == weighted


def _text_files(directory, texts, split="validation"):
  folder = os.path.join(directory, split)
  os.makedirs(folder, exist_ok=True)
  for index, text in enumerate(texts):
    with open(os.path.join(folder, f"doc{index}.txt"), "w", encoding="utf-8") as f:
      f.write(text)
  return os.path.join(str(directory), "{split}", "*.txt")


def _eval_config(files):
  config = trainer_config(global_batch_size=2)
  config.data.update(dataset="text_files", files=files, deterministic=True)
  return config


def _eval_targets_and_characters(config, tokenizer, metric):
  """Target ids of every eval block (in order) and the metric's characters over them."""
  dataset = pipelines.make_dataset(config, "validation", tokenizer, training=False)
  targets, characters = [], 0.0
  for features, labels, weights in dataset:
    logits = tf.zeros(list(labels.shape) + [tokenizer.vocabulary_size()])
    characters += float(metric.sums(features, logits, labels, weights)[
        "char_loss/characters"])
    targets.append(labels.numpy().reshape(-1))
  return np.concatenate(targets), characters


def test_packed_blocks_drop_and_double_count_no_character(tmp_path):
  """Byte-level: characters of the targets + those of the blocks' first (input-only) tokens +
  those of the dropped tail = every character of the split."""
  config = _eval_config(_text_files(tmp_path, DOCUMENTS))
  tokenizer = tokenizers.ByteLevelTokenizer()
  table = char_counts.characters_per_token(tokenizer)
  metric = char_loss.character_loss(config, tokenizer)
  targets, characters = _eval_targets_and_characters(config, tokenizer, metric)
  # The stream the pipeline packs: each document's bytes and an end-of-document token.
  eos = tokenizers.special_token_ids(tokenizer)["eos"]
  documents = [t.numpy().decode("utf-8") for t in sources.text_documents(config.data,
                                                                          "validation")]
  stream = np.concatenate([np.append(np.frombuffer(d.encode("utf-8"), np.uint8), eos)
                           for d in documents]).astype(np.int64)
  block = config.data.sequence_length + 1
  used = len(targets) // (block - 1) * block
  np.testing.assert_array_equal(targets, np.delete(stream[:used], np.s_[::block]))
  block_starts = table[stream[:used:block]].sum()
  tail = table[stream[used:]].sum()
  assert characters == table[targets].sum()
  assert characters + block_starts + tail == sources.count_characters(config.data, "validation")
  # Blocks do start inside multi-byte characters: a character is counted once, on its lead
  # byte, whether the lead byte is a target or a block's first (input-only) token.
  assert any(stream[i] >= 0x80 for i in range(0, used, block))


def test_packed_blocks_sentence_piece_targets_decode_to_the_counted_characters(tmp_path):
  config = _eval_config(_text_files(tmp_path, DOCUMENTS * 2))
  # The tokenizer is trained on prose: the validation text has pieces it has never seen.
  _text_files(tmp_path, pydoc_topics(20), split="train")
  config.tokenizer.update(type="sentence_piece", vocab_size=300)
  tokenizer = tokenizers.get_tokenizer(config)
  metric = char_loss.character_loss(config, tokenizer)
  targets, characters = _eval_targets_and_characters(config, tokenizer, metric)
  specials = {i for role, i in tokenizers.special_token_ids(tokenizer).items() if role != "unk"}
  kept = [int(t) for t in targets if int(t) not in specials]
  decoded = tokenizer.detokenize(tf.constant([kept], tf.int32))[0]
  decoded = decoded.numpy().decode("utf-8") if hasattr(decoded, "numpy") else decoded
  leading_space = int(tokenizer.get_vocabulary()[kept[0]].startswith("▁"))
  assert characters == len(decoded) + leading_space


def test_the_job_reports_per_character_loss_on_stdout_tensorboard_and_json(tmp_path):
  from tfllm.training import job  # pylint: disable=g-import-not-at-top
  config = _eval_config(_text_files(tmp_path / "data", DOCUMENTS))
  _text_files(tmp_path / "data", DOCUMENTS, split="train")
  config.tokenizer.type = "byte"
  config.model.vocab_size = 260
  config.train.update(steps=4, steps_per_loop=2, eval_steps=2, checkpoint_every_steps=0)
  lines = []
  job.run(config, model_dir=str(tmp_path / "run"), strategy_name="one_device",
          log=lines.append)
  final = [line for line in lines if line.startswith("validation at step 4")]
  assert final and "nats_per_char" in final[0] and "bits_per_char" in final[0]
  with open(tmp_path / "run" / EVAL_FILE) as f:
    saved = json.load(f)
  assert saved["split"] == config.data.eval_split
  assert saved["bits_per_char"] == pytest.approx(saved["nats_per_char"] / math.log(2.0))
  # Byte-level and mostly 1-byte characters: a little above the per-token loss.
  assert saved["loss"] < saved["nats_per_char"] < 1.5 * saved["loss"]
  tags = set()
  for path in glob.glob(str(tmp_path / "run" / "eval" / "events.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags.update(value.tag for value in event.summary.value)
  assert {"nats_per_char", "bits_per_char", "loss", "perplexity"} <= tags

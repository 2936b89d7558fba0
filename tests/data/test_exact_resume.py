"""Exact resume: a fresh pipeline that skips the batches of k steps yields what an
uninterrupted one yields from step k, for every task, without `data.deterministic`.

This is how `Trainer` resumes (its distributed iterator is not checkpointable: it rebuilds the
pipeline and skips the consumed batches), so any order that depends on thread timing, or masks
drawn from a stateful generator, sends a resumed run onto other batches.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tests.data.conftest import make_config, pydoc_topics, write_text_files, write_tfrecord
from tfllm.data import pipelines, tokenizers
from tfllm.finetune.config import with_finetune_section
from tfllm.finetune.multitask_data import multitask_dataset

BYTE = tokenizers.ByteLevelTokenizer()
# Steps before the interruption and after it: together more than an epoch of each small
# corpus below, so the resumed part crosses a reshuffle.
SKIPPED, COMPARED = 5, 6


def _numpy(dataset):
  return [tf.nest.map_structure(lambda t: t.numpy(), batch) for batch in dataset]


def _assert_resume_is_exact(make_dataset):
  uninterrupted = make_dataset()
  assert uninterrupted.options().deterministic   # the order is the data's, not the threads'
  straight = _numpy(uninterrupted.take(SKIPPED + COMPARED))[SKIPPED:]
  resumed = _numpy(make_dataset().skip(SKIPPED).take(COMPARED))
  assert len(straight) == len(resumed) == COMPARED
  for step, (a, b) in enumerate(zip(straight, resumed), start=SKIPPED):
    tf.nest.assert_same_structure(a, b)
    for x, y in zip(tf.nest.flatten(a), tf.nest.flatten(b)):
      np.testing.assert_array_equal(x, y, err_msg=f"batch of step {step}")


@pytest.fixture(scope="module")
def text_glob(tmp_path_factory):
  return write_text_files(tmp_path_factory.mktemp("resume_lm"), pydoc_topics(3))


def _lm_config(text_glob, task):
  config = make_config(dataset="text_files", files=text_glob, sequence_length=64,
                       shuffle_buffer=64)
  config.task.name = task
  assert not config.data.deterministic   # the default
  return config


@pytest.mark.parametrize("task", ["causal_lm", "masked_lm"])
def test_language_model_pipelines_resume_exactly(text_glob, task):
  config = _lm_config(text_glob, task)
  _assert_resume_is_exact(lambda: pipelines.make_dataset(config, "train", BYTE))


def test_masks_are_a_function_of_the_seed_alone():
  token_ids = tf.random.stateless_uniform([8, 64], [0, 0], minval=4, maxval=256, dtype=tf.int32)
  mask = lambda batch_index: pipelines.mask_tokens(  # noqa: E731
      token_ids, tf.random.experimental.stateless_fold_in(tf.constant([0, 0], tf.int64),
                                                          batch_index),
      vocabulary_size=260, mask_id=259, selection_rate=0.15, max_predictions=12)
  first, again, next_batch = mask(3), mask(3), mask(4)
  for name in first:
    np.testing.assert_array_equal(first[name], again[name], err_msg=name)
  # A block met again at another batch index (next epoch) is masked anew.
  assert not np.array_equal(first["mask_positions"], next_batch["mask_positions"])


def _reviews(directory, count=22):
  examples = [{"sentence": f"review {i} " + ("good " if i % 2 else "bad ") * (i % 9),
               "label": "pos" if i % 2 else "neg"} for i in range(count)]
  write_tfrecord(directory / "reviews.tfrecord", examples)


def _tagged(directory, count=22):
  rng = np.random.default_rng(0)
  words = " ".join(pydoc_topics(3)).split()
  examples = []
  for index in range(count):
    start = int(rng.integers(0, len(words) - 12))
    sentence = words[start:start + int(rng.integers(1, 12))]
    examples.append({"tokens": sentence, "ner": [len(w) % 3 for w in sentence],
                     "document": index // 4})
  write_tfrecord(directory / "tagged.tfrecord", examples)


@pytest.fixture(scope="module")
def labelled_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("resume_labelled")
  _reviews(directory)
  _tagged(directory)
  return directory


def _classification_config(labelled_dir, task, **data):
  config = make_config(dataset="tfrecord", files=str(labelled_dir / "{split}.tfrecord"),
                       sequence_length=48, shuffle_buffer=16, **data)
  if task == "sequence_classification":
    config.data.update(text_feature="sentence", train_split="reviews")
    config.task.update(dict(name=task, labels=["neg", "pos"]))
  else:
    config.data.update(text_feature="tokens", label_feature="ner", train_split="tagged")
    config.task.update(dict(name=task, labels=["A", "B", "C"]))
  return config


@pytest.mark.parametrize("task,data", [
    ("sequence_classification", {}),
    ("sequence_classification", {"bucket_lengths": (16, 32)}),
    ("token_classification", {}),
    ("token_classification", {"bucket_lengths": (16, 32), "context_tokens": 16}),
])
def test_classification_pipelines_resume_exactly(labelled_dir, task, data):
  config = _classification_config(labelled_dir, task, **data)
  _assert_resume_is_exact(
      lambda: pipelines.make_dataset(config, config.data.train_split, BYTE))


def test_multi_task_pipeline_resumes_exactly(labelled_dir):
  config = with_finetune_section(_classification_config(labelled_dir, "token_classification",
                                                        bucket_lengths=(16, 32)))
  config.task.name = "multi_task"
  config.task.heads = {
      "tags": dict(task="token_classification", labels=["A", "B", "C"]),
      "sentiment": dict(task="sequence_classification", labels=["neg", "pos"]),
  }
  config.finetune.head_data = {
      "tags": dict(dataset="tfrecord", text_feature="tokens", label_feature="ner",
                   train_split="tagged", weight=0.5),
      "sentiment": dict(dataset="tfrecord", text_feature="sentence", label_feature="label",
                        train_split="reviews", weight=0.5),
  }
  _assert_resume_is_exact(lambda: multitask_dataset(config, "train", BYTE))


@pytest.mark.parametrize("task,augment", [
    ("sequence_classification", dict(methods=("eda",), copies=2, rate=0.3,
                                     eda_operations=("random_swap", "random_deletion"))),
    ("token_classification", dict(methods=("mention_replacement",
                                           "label_wise_token_replacement"), copies=2, rate=0.5)),
])
def test_augmented_pipelines_resume_exactly(labelled_dir, tmp_path, task, augment):
  # The augmented copies are cached once; the pipeline over them keeps one order.
  config = _classification_config(labelled_dir, task,
                                  context_tokens=16 if task == "token_classification" else 0)
  if task == "token_classification":
    config.task.labels = ["O", "B-X", "I-X"]   # the tags 0, 1, 2 read as IOB2
  config.data.augment.update(dict(augment, cache_dir=str(tmp_path)))
  _assert_resume_is_exact(
      lambda: pipelines.make_dataset(config, config.data.train_split, BYTE))
  assert len(tf.io.gfile.glob(str(tmp_path / "*.tfrecord"))) == 1

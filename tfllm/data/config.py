"""Schema of the `data` and `tokenizer` config sections (see `tfllm.config`)."""

from __future__ import annotations

import re

from tfllm.config import ConfigError, SectionSchema
from tfllm.data import augment


def _data_defaults():
  return dict(
      # A TFDS name: tfllm's builders (`tfllm_shakespeare`, `tfllm_conll2003`,
      # `tfllm_movie_sentiment`) or any TFDS dataset already prepared in `data_dir`; or
      # `text_files` / `tfrecord` with `files`.
      dataset="tfllm_shakespeare",
      # Glob for `text_files` / `tfrecord`; a `{split}` in it is replaced by the split name
      # (`corpus/{split}/*.txt`). Without one, every split reads the same files.
      files="",
      data_dir="",               # TFDS data dir; "" = TFDS's default (~/tensorflow_datasets)
      text_feature="text",       # string feature (or sequence of words for token tasks)
      label_feature="label",     # class label (sequence classification) or word tags (token)
      train_split="train",
      eval_split="validation",
      test_split="test",
      sequence_length=128,
      # Classification tasks: lengths of the buckets that examples are batched by, so that
      # a batch pads only to its bucket (e.g. (16, 32, 64)); () = every batch padded to
      # sequence_length. Each bucket length compiles its own step: keep them few.
      bucket_lengths=(),
      # Token classification: each sentence is read with up to this many word pieces of the
      # sentences around it in its document (half before, half after, more on one side when
      # the other runs out; never past sequence_length); only the sentence's own words are
      # tagged and scored. 0 = the sentence alone. Needs sentences in document order and an
      # int `document_feature`.
      context_tokens=0,
      document_feature="document",   # int feature naming a sentence's document
      # > 0: train on this many examples of train_split, a fixed random subset chosen by
      # train_examples_seed (tfllm.data.train_subset; written to the model dir); 0 = all.
      train_examples=0,
      train_examples_seed=0,
      shuffle_buffer=10000,
      seed=0,
      # Accepted for old config files, no longer read: every pipeline keeps one element
      # order (exact resume for every config; docs/data.md).
      deterministic=False,
      mlm_probability=0.15,
      max_predictions=20,
      # Augmented copies of the training split (docs/finetuning.md, "Data augmentation").
      augment=augment.augment_defaults(),
      # "grpc://HOST:PORT": the training pipeline runs on this tf.data service dispatcher's
      # workers (launch/data_service.py; docs/distributed.md); "" = on the trainer's host.
      service_address="",
      # The service job the run's consumers share; "" = named after the model dir.
      service_job_name="",
  )


def _tokenizer_defaults():
  return dict(
      type="word_piece",         # word_piece | sentence_piece | byte
      vocabulary="",             # existing vocab.txt / SentencePiece .model; "" = train one
      vocab_size=8000,
      lowercase=False,
      sentence_piece_model="unigram",   # SentencePiece algorithm when training one
      max_training_lines=200000,        # lines of the train split read to train; 0 = all
  )


def _check_data(section):
  if section.sequence_length < 2:
    raise ConfigError(f"config.data.sequence_length={section.sequence_length} is too short; "
                      "accepted: >= 2")
  if section.dataset in ("text_files", "tfrecord") and not section.files:
    raise ConfigError(f"config.data.dataset={section.dataset!r} needs config.data.files "
                      "(a glob, optionally with {split})")
  augment.check_augment(section.augment)
  check_service_address(section.service_address)


SERVICE_ADDRESS = re.compile(r"grpc://[^\s/:]+:[0-9]{1,5}")


def check_service_address(address: str) -> None:
  """Raises ConfigError unless `address` is "" or `grpc://HOST:PORT`."""
  if address and not SERVICE_ADDRESS.fullmatch(address):
    raise ConfigError(f"config.data.service_address={address!r} is not accepted; use "
                      "grpc://HOST:PORT (a tf.data service dispatcher) or \"\" (no service)")


def check_service_task(config) -> None:
  """Cross-section rule (`data` and `task`): raises ConfigError for the settings whose
  pipelines the tf.data service cannot shard (docs/stack.md)."""
  if config.data.service_address and config.data.context_tokens:
    raise ConfigError(f"config.data.context_tokens={config.data.context_tokens} cannot run on "
                      "the tf.data service: its sentence windows zip shifted copies of the "
                      "source, which dynamic sharding splits apart (sentences are lost); set "
                      "config.data.context_tokens=0 or config.data.service_address=''")


# Tasks whose examples are padded (not packed): length buckets apply to them.
CLASSIFICATION_TASKS = ("sequence_classification", "token_classification")


def check_bucket_lengths(config) -> None:
  """Cross-section rule (`data` and `task`): raises ConfigError unless
  `config.data.bucket_lengths` suits the task and the sequence length."""
  buckets = tuple(config.data.bucket_lengths)
  if not buckets:
    return
  task = config.task.name
  # multi_task: every head is a classification task (`multitask_data` checks them).
  if task not in CLASSIFICATION_TASKS + ("multi_task",):
    raise ConfigError(f"config.data.bucket_lengths={buckets} applies to "
                      f"{' and '.join(CLASSIFICATION_TASKS)}; task {task} packs full-length "
                      "blocks (set it to ())")
  if (list(buckets) != sorted(set(buckets)) or buckets[0] < 1
      or buckets[-1] >= config.data.sequence_length):
    raise ConfigError(f"config.data.bucket_lengths={buckets} is not accepted; give increasing "
                      f"lengths from 1 to below config.data.sequence_length="
                      f"{config.data.sequence_length}")


def check_context_tokens(config) -> None:
  """Cross-section rule (`data` and `task`): raises ConfigError unless
  `config.data.context_tokens` suits the task."""
  if config.data.context_tokens and config.task.name != "token_classification":
    raise ConfigError(f"config.data.context_tokens={config.data.context_tokens} applies to "
                      f"token_classification, not task {config.task.name} (set it to 0)")


def check_augment_task(config) -> None:
  """Cross-section rule (`data` and `task`): raises ConfigError unless the augmentation
  methods suit `config.task.name`."""
  section = config.data.get("augment")
  if not (section and section.methods):
    return
  fitting = {"sequence_classification": augment.TEXT_METHODS,
             "token_classification": augment.TAGGING_METHODS}.get(config.task.name, ())
  for method in tuple(section.methods):
    if method not in fitting:
      raise ConfigError(f"config.data.augment.methods holds {method!r}, which does not apply "
                        f"to task {config.task.name}; accepted: {', '.join(fitting) or 'none'}")


def check_with_task(config) -> None:
  """The `data` section's rules that read `task` too (run by `tfllm.config.validate` once
  every section is checked on its own)."""
  if "task" not in config:
    return
  check_bucket_lengths(config)
  check_context_tokens(config)
  check_augment_task(config)
  check_service_task(config)


SCHEMAS = {
    "data": SectionSchema(
        _data_defaults,
        choices=dict(augment.AUGMENT_CHOICES),
        ranges={"sequence_length": (2, None), "context_tokens": (0, None), "shuffle_buffer": (1, None),
                "train_examples": (0, None), "train_examples_seed": (0, None),
                "mlm_probability": (0.0, 1.0), "max_predictions": (1, None),
                **augment.AUGMENT_RANGES},
        check=_check_data, config_check=check_with_task),
    "tokenizer": SectionSchema(
        _tokenizer_defaults,
        choices={"type": ("word_piece", "sentence_piece", "byte"),
                 "sentence_piece_model": ("unigram", "bpe", "word", "char")},
        ranges={"vocab_size": (1, None), "max_training_lines": (0, None)}),
}

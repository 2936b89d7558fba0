"""Where raw examples come from: a TFDS dataset, plain text files, or TFRecord files.

`load_source` turns the `data` config section and a split name into a `Source`: a
`tf.data.Dataset` of raw feature dicts (one element per document, sentence or row), sharded
for one input pipeline when an `InputContext` is given, plus what the pipelines need to know
about its features (label names). Everything downstream (tokenization, packing, masking)
lives in `tfllm.data.pipelines`.

Sharding is by example (TFDS even splits, TFRecord record index) or by file (text files), so
the input pipelines of a job see disjoint data that covers the split.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import glob
import logging
import os
import re
from typing import Optional, Sequence, Tuple

import tensorflow as tf
import tensorflow_datasets as tfds

# Imported for its side effect: tfllm's TFDS builders register themselves with TFDS.
from tfllm.data import datasets  # noqa: F401  pylint: disable=unused-import

# tfllm's own builders: prepared on first use (they fetch their source with pip).
TFLLM_BUILDERS = ("tfllm_shakespeare", "tfllm_conll2003", "tfllm_movie_sentiment")

_SPLIT_PATTERN = re.compile(r"^[A-Za-z0-9_]+$")


@dataclasses.dataclass(frozen=True)
class Source:
  """Raw examples of one split.

  Attributes:
    examples: dataset of dicts: feature name -> tensor. The text feature is a `tf.string`
      scalar (one document or sentence) or a 1-D `tf.string` vector of words; the label
      feature, when present, is an integer or string scalar (or 1-D, one per word).
    text_feature: name of the text feature in `examples`.
    label_feature: name of the label feature, or None when the examples have none.
    label_names: class names when the source declares them (TFDS `ClassLabel`), else None.
    num_examples: examples in the whole split (all shards), or None when unknown.
  """
  examples: tf.data.Dataset
  text_feature: str
  label_feature: Optional[str]
  label_names: Optional[Tuple[str, ...]]
  num_examples: Optional[int]


def _shard_position(input_context):
  if input_context is None:
    return 0, 1
  return input_context.input_pipeline_id, input_context.num_input_pipelines


def check_feature(name: str, available: Sequence[str], what: str, where: str):
  """Raises ValueError naming `config.data.<what>` unless feature `name` is `available`."""
  if name not in available:
    raise ValueError(f"config.data.{what}={name!r} is not a feature of {where}; "
                     f"available features: {', '.join(sorted(available))}")


@contextlib.contextmanager
def preparation_lock(dataset_dir: str):
  """Holds an exclusive lock on `<dataset_dir>.lock` while a builder prepares `dataset_dir`.

  The workers of a job on one machine (or test processes) may start on the same empty
  data_dir together; without the lock each would fetch and write the dataset, and the last
  to rename its copy into place fails. Object-store paths (`gs://...`) have no file locks:
  prepare those once beforehand (`tfds build`), as for any multi-machine job.
  """
  path = os.fspath(dataset_dir)
  if "://" in path:
    yield
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".lock", "a", encoding="utf-8") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def _tfds_builder(data_config):
  """The TFDS builder named by `data_config.dataset`, prepared when it is one of tfllm's."""
  data_dir = data_config.data_dir or None
  try:
    builder = tfds.builder(data_config.dataset, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as error:
    raise ValueError(
        f"config.data.dataset={data_config.dataset!r} is not a TFDS dataset; use one of "
        f"{', '.join(TFLLM_BUILDERS)}, 'text_files', 'tfrecord', or a registered TFDS name"
    ) from error
  if data_config.dataset in TFLLM_BUILDERS and not builder.is_prepared():
    with preparation_lock(builder.data_dir):
      # Another process may have prepared it while this one waited: a new builder sees it.
      builder = tfds.builder(data_config.dataset, data_dir=data_dir)
      builder.download_and_prepare()
  elif not builder.is_prepared():
    # Preparing a catalog dataset would go to the internet, which fails here only after
    # minutes of retries (docs/stack.md): ask for it to be prepared beforehand instead.
    raise ValueError(
        f"TFDS dataset {data_config.dataset!r} is not prepared in {builder.data_dir}; prepare "
        f"it first (`tfds build {data_config.dataset} --data_dir=...`) and set "
        "config.data.data_dir")
  return builder


def _num_examples(builder, split: str) -> Optional[int]:
  try:
    return int(builder.info.splits[split].num_examples)
  except (KeyError, ValueError, TypeError, AttributeError):
    return None


def _class_names(feature) -> Optional[Tuple[str, ...]]:
  while isinstance(feature, tfds.features.Sequence):
    feature = feature.feature
  if isinstance(feature, tfds.features.ClassLabel):
    return tuple(feature.names)
  return None


def _load_tfds(data_config, split, input_context, shuffle, seed) -> Source:
  builder = _tfds_builder(data_config)
  features = builder.info.features
  check_feature(data_config.text_feature, list(features.keys()), "text_feature",
                 f"TFDS dataset {data_config.dataset!r}")
  # TFDS split arithmetic: "train+validation", "train[:10%]+validation[:50]".
  unknown = [base for base in (part.split("[")[0].strip() for part in split.split("+"))
             if base not in builder.info.splits]
  if unknown:
    raise ValueError(f"split {split!r}: {unknown[0]!r} is not a split of "
                     f"TFDS dataset {data_config.dataset!r}; "
                     f"available splits: {', '.join(sorted(builder.info.splits.keys()))}")
  num_examples = _num_examples(builder, split)
  if num_examples == 0:
    raise ValueError(f"split {split!r} of TFDS dataset {data_config.dataset!r} is empty")
  index, count = _shard_position(input_context)
  if num_examples is not None and num_examples < count:
    raise ValueError(f"split {split!r} of TFDS dataset {data_config.dataset!r} has "
                     f"{num_examples} examples, fewer than the {count} input pipelines")
  shard = tfds.even_splits(split, count)[index] if count > 1 else split
  # An ordered dataset (tfllm's builders keep source order) refuses file shuffling; the
  # pipelines' example shuffle buffer mixes it instead.
  examples = builder.as_dataset(
      split=shard, shuffle_files=shuffle and not builder.info.disable_shuffling,
      read_config=tfds.ReadConfig(shuffle_seed=seed, try_autocache=False))
  label_feature = data_config.label_feature if data_config.label_feature in features else None
  label_names = _class_names(features[label_feature]) if label_feature else None
  return Source(examples, data_config.text_feature, label_feature, label_names, num_examples)


def _split_files(data_config, split: str) -> list:
  if not _SPLIT_PATTERN.match(split):
    raise ValueError(f"split {split!r}: {data_config.dataset} data takes a plain split name "
                     "(slicing such as 'train[:10%]' works only with TFDS datasets)")
  pattern = data_config.files.replace("{split}", split)
  paths = sorted(glob.glob(pattern, recursive=True)) or sorted(tf.io.gfile.glob(pattern))
  if not paths:
    raise ValueError(f"config.data.files={data_config.files!r} matches no file for split "
                     f"{split!r} (pattern {pattern!r})")
  return paths


def scan_text_files(paths: Sequence[str]) -> Tuple[int, int]:
  """Reads every file once; returns (files not valid UTF-8, empty files).

  Raises:
    ValueError: a file cannot be read, or every file is empty.
  """
  not_utf8 = empty = 0
  for path in paths:
    try:
      with tf.io.gfile.GFile(path, "rb") as f:
        data = f.read()
    except (OSError, tf.errors.OpError) as error:
      raise ValueError(f"cannot read text file {path!r}: {error}") from error
    if not data.strip():
      empty += 1
      continue
    try:
      data.decode("utf-8")
    except UnicodeDecodeError:
      not_utf8 += 1
  if empty == len(paths):
    raise ValueError(f"empty corpus: all {len(paths)} text file(s) are empty "
                     f"(first: {paths[0]!r})")
  if not_utf8:
    logging.warning("%d of %d text files are not valid UTF-8; their bad bytes are decoded "
                    "as U+FFFD", not_utf8, len(paths))
  return not_utf8, empty


def decode_utf8(text: tf.Tensor) -> tf.Tensor:
  """Valid UTF-8 of `text` (any shape): undecodable bytes become U+FFFD."""
  return tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace",
                                      replacement_char=0xFFFD)


def _load_text_files(data_config, split, input_context, shuffle, seed) -> Source:
  paths = _split_files(data_config, split)
  scan_text_files(paths)
  index, count = _shard_position(input_context)
  shard = paths[index::count]
  if not shard:
    raise ValueError(f"{len(paths)} text file(s) for split {split!r} cannot feed {count} input "
                     "pipelines (one file is one document; give at least one file per pipeline)")
  files = tf.data.Dataset.from_tensor_slices(shard)
  if shuffle:
    files = files.shuffle(len(shard), seed=seed, reshuffle_each_iteration=True)
  name = data_config.text_feature
  examples = files.map(lambda path: {name: decode_utf8(tf.io.read_file(path))})
  return Source(examples, name, None, None, len(paths))


def _record_spec(paths: Sequence[str], data_config):
  """Feature spec inferred from the first record: name -> RaggedFeature of its kind."""
  for path in paths:
    for record in tf.data.TFRecordDataset(path).take(1):
      example = tf.train.Example.FromString(record.numpy())
      spec = {}
      for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        dtype = {"bytes_list": tf.string, "int64_list": tf.int64, "float_list": tf.float32}[kind]
        spec[name] = tf.io.RaggedFeature(dtype)
      return spec
  raise ValueError(f"empty corpus: the {len(paths)} TFRecord file(s) of "
                   f"config.data.files={data_config.files!r} hold no record")


def _load_tfrecord(data_config, split, input_context, shuffle, seed) -> Source:
  paths = _split_files(data_config, split)
  spec = _record_spec(paths, data_config)
  where = f"the tf.Example records of {data_config.files!r}"
  check_feature(data_config.text_feature, list(spec), "text_feature", where)
  if spec[data_config.text_feature].dtype != tf.string:
    raise ValueError(f"config.data.text_feature={data_config.text_feature!r} holds "
                     f"{spec[data_config.text_feature].dtype.name} values in {where}; "
                     "expected bytes (text)")
  label_feature = data_config.label_feature if data_config.label_feature in spec else None
  records = tf.data.TFRecordDataset(paths)
  index, count = _shard_position(input_context)
  if count > 1:
    records = records.shard(count, index)
  if shuffle:
    records = records.shuffle(data_config.shuffle_buffer, seed=seed,
                              reshuffle_each_iteration=True)
  text_feature = data_config.text_feature

  def parse(record):
    example = tf.io.parse_single_example(record, spec)
    example[text_feature] = decode_utf8(example[text_feature])
    return example

  return Source(records.map(parse), text_feature, label_feature, None, None)


def load_source(data_config, split: str, input_context=None, shuffle: bool = False,
                seed: int = 0) -> Source:
  """Raw examples of `split` for one input pipeline.

  Args:
    data_config: the `data` config section.
    split: split name: a TFDS split string (`"train"`, `"train[:10%]"`) or, for
      `text_files`/`tfrecord`, the name substituted for `{split}` in `data_config.files`.
    input_context: `tf.distribute.InputContext`; when given, only the shard of pipeline
      `input_pipeline_id` out of `num_input_pipelines` is read.
    shuffle: shuffle files / records (seeded by `seed`, reshuffled each epoch).
    seed: shuffle seed.

  Returns:
    A `Source`.

  Raises:
    ValueError: unknown dataset or split, missing text feature, no files, empty corpus.
  """
  kind = data_config.dataset
  if kind == "text_files":
    return _load_text_files(data_config, split, input_context, shuffle, seed)
  if kind == "tfrecord":
    return _load_tfrecord(data_config, split, input_context, shuffle, seed)
  return _load_tfds(data_config, split, input_context, shuffle, seed)


def as_text(text: tf.Tensor) -> tf.Tensor:
  """A text feature as one string: a vector of words is joined with spaces."""
  if text.shape.rank == 0:
    return text
  return tf.strings.reduce_join(text, separator=" ")


def as_words(text: tf.Tensor) -> tf.Tensor:
  """A text feature as a 1-D vector of words: a string is split on whitespace."""
  if text.shape.rank == 0:
    return tf.strings.split(text)
  return text


def text_documents(data_config, split: str, input_context=None, shuffle: bool = False,
                   seed: int = 0) -> tf.data.Dataset:
  """Dataset of `tf.string` scalars: the text of each example of `split`, as stored.

  This is the raw text the pipelines tokenize (sequences of words joined by spaces); e.g.
  `count_characters` uses it for per-character loss figures.
  """
  source = load_source(data_config, split, input_context, shuffle, seed)
  name = source.text_feature
  return source.examples.map(lambda example: as_text(example[name]),
                             num_parallel_calls=tf.data.AUTOTUNE)


def count_characters(data_config, split: str) -> int:
  """Unicode characters in the text of `split` (for bits- or loss-per-character figures)."""
  lengths = text_documents(data_config, split).map(
      lambda text: tf.strings.length(text, unit="UTF8_CHAR"))
  return int(lengths.reduce(tf.constant(0, tf.int64),
                            lambda total, n: total + tf.cast(n, tf.int64)).numpy())

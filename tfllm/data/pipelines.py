"""tf.data input pipelines, one per task, with static shapes (unless bucketed by length).

`make_dataset(config, split, tokenizer, input_context, training)` yields batches
`(features, labels, sample_weight)` of `B` examples (the per-replica batch when an
`InputContext` is given, else `config.train.global_batch_size`) and `L =
config.data.sequence_length` tokens:

  causal_lm                 features token_ids int32 [B, L], padding_mask bool [B, L];
                            labels int32 [B, L] (token_ids shifted by one); weight [B, L].
                            Documents are tokenized, each followed by an end-of-document
                            token, concatenated and cut into blocks of L + 1 (packing: no
                            padding, no token lost or repeated; the tail of a finite split
                            shorter than a block is dropped).
  masked_lm                 features token_ids [B, L] (masked), padding_mask [B, L],
                            mask_positions int32 [B, P]; labels int32 [B, P] (original ids);
                            weight [B, P] (0 for unused slots). Packed like causal LM into
                            `[CLS] block [SEP]`; masks drawn anew for every batch by
                            `mask_tokens`, a stateless function of `data.seed` and the
                            batch's index (rate `data.mlm_probability`, 80% mask / 10%
                            random / 10% kept), P = `data.max_predictions`.
  sequence_classification   features token_ids, padding_mask [B, L] (`[CLS] text [SEP]`,
                            truncated or padded); labels int32 [B]; weight [B].
  token_classification      features token_ids, padding_mask, word_ids int32 [B, L] (index of
                            the word a piece belongs to, -1 for special and pad tokens);
                            labels int32 [B, L] (the word's tag on its first piece);
                            weight [B, L] (1 on first pieces, 0 elsewhere). With
                            `data.context_tokens`, pieces of the sentences around it in its
                            document surround a sentence (word id -1, weight 0).

Training pipelines shuffle (seeded by `data.seed`, reshuffled each epoch) and repeat;
evaluation ones read the split once in order. Every pipeline yields one order, however its
parallel maps are scheduled: rebuilt and skipped by k batches, it yields what it yielded from
batch k (how a resumed run finds its place). Tokenization runs as TF ops inside the pipeline.

Classification evaluation covers the whole split: the last partial batch is filled up to B
with examples of weight 0. With `data.bucket_lengths` (classification only) examples are
batched by length and each batch pads only to its bucket, so L varies between batches (one
compiled step per bucket): CoNLL-2003 sentences are 16 word pieces at the median, and a batch
padded to 128 spends most of its compute on padding.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Tuple

import keras_hub
import tensorflow as tf

from tfllm.config import ConfigError
from tfllm.data import augmented_source, sources, train_subset
from tfllm.data.tokenizers import special_token_ids

TASKS = ("causal_lm", "masked_lm", "sequence_classification", "token_classification")
AUTOTUNE = tf.data.AUTOTUNE
# Documents (or rows) tokenized together in one op: amortizes per-call overhead.
_TOKENIZE_BATCH = 64


def _batch_size(config, input_context) -> int:
  global_batch = config.train.global_batch_size
  if input_context is None:
    return global_batch
  return input_context.get_per_replica_batch_size(global_batch)


def _special(tokenizer, *roles: str) -> Tuple[int, ...]:
  ids = special_token_ids(tokenizer)
  missing = [role for role in roles if role not in ids]
  if missing:
    raise ValueError(f"tokenizer {type(tokenizer).__name__} has no {', '.join(missing)} token; "
                     f"this task needs {', '.join(roles)} (it has: {', '.join(sorted(ids))})")
  return tuple(ids[role] for role in roles)


def _task_name(config) -> str:
  name = config.task.name
  if name not in TASKS:
    raise ValueError(f"config.task.name={name!r} has no single input pipeline; accepted: "
                     f"{', '.join(TASKS)} (a multi_task job builds one dataset per head)")
  return name


def _options() -> tf.data.Options:
  # Every pipeline yields its elements in one order, a function of the data and `data.seed`
  # alone: a resumed run that skips the batches it consumed then reads the batches an
  # uninterrupted run reads (exact resume). Parallel maps stay parallel; only their outputs
  # wait for their turn (docs/data.md has the throughput before and after).
  options = tf.data.Options()
  options.deterministic = True
  # Sharding is explicit (by example or file): keep tf.distribute from sharding again.
  options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
  return options


def _examples(config, split, input_context, training, in_order=None) -> sources.Source:
  """The split's examples for one input pipeline, shuffled and repeated when training.

  `in_order(source) -> tf.data.Dataset` transforms the examples while they are still in
  source order (before shuffling): document context needs a sentence's neighbours.
  """
  # Document context reads neighbouring examples: the source keeps its order.
  keep_order = bool(config.data.context_tokens)
  if (keep_order and config.data.dataset == "tfrecord" and input_context
      and input_context.num_input_pipelines > 1):
    raise ValueError(f"config.data.context_tokens={config.data.context_tokens} needs whole "
                     "documents in each input pipeline, but TFRecord records are sharded "
                     f"round-robin over {input_context.num_input_pipelines} pipelines; use a "
                     "TFDS dataset (contiguous shards) or context_tokens=0")
  # A low-resource subset is chosen from the whole split in source order, then sharded (an
  # augmented source chooses it before augmenting).
  augmented = bool(training and augmented_source.enabled(config.data))
  subset = bool(training and not augmented and config.data.get("train_examples", 0)
                and split == config.data.train_split)
  if augmented:
    source = augmented_source.augmented_source(config, split, input_context)
  else:
    source = sources.load_source(config.data, split, None if subset else input_context,
                                 shuffle=training and not keep_order and not subset,
                                 seed=config.data.seed)
  examples = in_order(source) if in_order else source.examples
  if subset:
    examples = train_subset.select(examples, source.num_examples, config.data, input_context)
  if training:
    examples = examples.shuffle(config.data.shuffle_buffer, seed=config.data.seed,
                                reshuffle_each_iteration=True).repeat()
  return dataclasses.replace(source, examples=examples)


def token_stream(documents: tf.data.Dataset, tokenizer, separator_id: int) -> tf.data.Dataset:
  """Token ids of `documents` (string scalars), each followed by `separator_id`.

  Returns:
    dataset of 1-D int32 tensors (several documents each); concatenated in order they are
    the documents' tokens with a separator after each document.
  """
  def tokenize(texts):
    ids = tf.cast(tokenizer.tokenize(texts), tf.int32)
    separators = tf.fill([tf.shape(texts)[0], 1], tf.constant(separator_id, tf.int32))
    return tf.concat([ids, tf.RaggedTensor.from_tensor(separators)], axis=1).flat_values

  return documents.batch(_TOKENIZE_BATCH).map(tokenize, num_parallel_calls=AUTOTUNE)


def pack_blocks(stream: tf.data.Dataset, block_length: int) -> tf.data.Dataset:
  """Cuts a stream of 1-D token chunks into consecutive blocks of `block_length` tokens.

  The tokens left after the last full block of a chunk carry over to the next chunk, so
  every token lands in exactly one block, in order; only the final remainder (shorter than a
  block) of a finite stream is dropped.

  Returns:
    dataset of int32 [block_length] tensors.
  """
  def cut(carry, chunk):
    tokens = tf.concat([carry, chunk], axis=0)
    full = (tf.shape(tokens)[0] // block_length) * block_length
    blocks = tf.reshape(tokens[:full], [-1, block_length])
    return tokens[full:], blocks

  return stream.scan(tf.zeros([0], tf.int32), cut).unbatch()


def _documents(source: sources.Source) -> tf.data.Dataset:
  name = source.text_feature
  return source.examples.map(lambda example: sources.as_text(example[name]),
                             num_parallel_calls=AUTOTUNE)


def _packed_blocks(config, source, tokenizer, separator_id, block_length, training):
  stream = token_stream(_documents(source), tokenizer, separator_id)
  blocks = pack_blocks(stream, block_length)
  if training:
    blocks = blocks.shuffle(config.data.shuffle_buffer, seed=config.data.seed,
                            reshuffle_each_iteration=True)
  return blocks


def causal_lm_dataset(config, source, tokenizer, batch_size, training):
  """Packed next-token prediction batches (see module docstring)."""
  (eos,) = _special(tokenizer, "eos")
  length = config.data.sequence_length
  blocks = _packed_blocks(config, source, tokenizer, eos, length + 1, training)

  def to_example(block):
    inputs = block[:, :-1]
    features = {"token_ids": inputs, "padding_mask": tf.ones_like(inputs, dtype=tf.bool)}
    return features, block[:, 1:], tf.ones(tf.shape(inputs), tf.float32)

  return blocks.batch(batch_size, drop_remainder=True).map(
      to_example, num_parallel_calls=AUTOTUNE)


# BERT's split of the selected tokens: 80% become [MASK], 10% a random token, 10% stay.
_MASK_TOKEN_RATE, _RANDOM_TOKEN_RATE = 0.8, 0.1


def mask_tokens(token_ids, seed, vocabulary_size: int, mask_id: int, selection_rate: float,
                max_predictions: int, unselectable_ids=()):
  """BERT's dynamic masking as a stateless function of `seed`: same seed, same masks.

  Each row gets `min(ceil(selection_rate * selectable), max_predictions)` positions, drawn
  uniformly among its selectable tokens (those not in `unselectable_ids`), the rule of
  keras-hub's `MaskedLMMaskGenerator`; of these, 80% become `mask_id`, 10% a token drawn
  uniformly from the vocabulary and 10% keep their id. Stateless random ops make the masks
  independent of which parallel call computes them and in what order (a stateful generator
  is read in whatever order the calls run), so a pipeline repeats itself exactly.

  Args:
    token_ids: int32 `[rows, length]`.
    seed: int `[2]` tensor, e.g. `tf.random.experimental.stateless_fold_in(base, batch)`.
    vocabulary_size: random replacements are drawn from `[0, vocabulary_size)`.
    mask_id: the `[MASK]` token.
    selection_rate: share of the selectable tokens to predict.
    max_predictions: `P`, predictions a row at most (the width of the outputs).
    unselectable_ids: token ids never selected (special tokens).

  Returns:
    dict: `token_ids` int32 `[rows, length]` (masked), `mask_positions` int32 `[rows, P]`
    (increasing, then 0 in unused slots), `mask_ids` int32 `[rows, P]` (the original ids,
    0 in unused slots), `mask_weights` float32 `[rows, P]` (1 on used slots).

  Example:

  >>> ids = tf.constant([[1, 5, 6, 7, 8, 2]])
  >>> out = mask_tokens(ids, tf.constant([0, 7]), 10, 3, 0.5, 4, unselectable_ids=(1, 2))
  >>> int(out["mask_weights"].numpy().sum())  # ceil(0.5 x 4 selectable)
  2
  """
  token_ids = tf.convert_to_tensor(token_ids, tf.int32)
  rows = tf.shape(token_ids)[0]
  # A static length keeps the outputs' widths static (compiled steps need static shapes).
  length = token_ids.shape[1] if token_ids.shape[1] is not None else tf.shape(token_ids)[1]
  order_seed, kind_seed, token_seed = tf.unstack(
      tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 3))
  selectable = tf.ones_like(token_ids, tf.bool)
  for unselectable in unselectable_ids:
    selectable &= tf.not_equal(token_ids, unselectable)
  # A random priority per token, unselectable ones last; the first `count` by priority win.
  priority = tf.random.stateless_uniform([rows, length], order_seed)
  priority = tf.where(selectable, priority, 2.0)
  width = (min(max_predictions, length) if isinstance(length, int)
           else tf.minimum(max_predictions, length))
  _, candidates = tf.math.top_k(-priority, k=width)
  selectable_count = tf.reduce_sum(tf.cast(selectable, tf.float32), axis=1)
  count = tf.cast(tf.minimum(tf.math.ceil(selection_rate * selectable_count),
                             tf.cast(width, tf.float32)), tf.int32)
  used = tf.range(width)[None, :] < count[:, None]
  # Increasing positions, unused slots last (sorted after every real position).
  positions = tf.sort(tf.where(used, candidates, length), axis=1)
  used = positions < length
  positions = tf.where(used, positions, 0)
  original = tf.gather(token_ids, positions, batch_dims=1)
  kind = tf.random.stateless_uniform([rows, width], kind_seed)
  random_ids = tf.random.stateless_uniform([rows, width], token_seed, minval=0,
                                           maxval=vocabulary_size, dtype=tf.int32)
  replacement = tf.where(kind < _MASK_TOKEN_RATE, mask_id,
                         tf.where(kind < _MASK_TOKEN_RATE + _RANDOM_TOKEN_RATE, random_ids,
                                  original))
  row_index = tf.broadcast_to(tf.range(rows)[:, None], [rows, width])
  updates = tf.boolean_mask(tf.stack([row_index, positions], axis=-1), used)
  masked = tf.tensor_scatter_nd_update(token_ids, updates, tf.boolean_mask(replacement, used))

  def to_predictions(values):
    padded = tf.pad(values, [[0, 0], [0, max_predictions - width]])
    return tf.ensure_shape(padded, [token_ids.shape[0], max_predictions])

  return {"token_ids": masked,
          "mask_positions": to_predictions(positions),
          "mask_ids": to_predictions(tf.where(used, original, 0)),
          "mask_weights": to_predictions(tf.cast(used, tf.float32))}


def masked_lm_dataset(config, source, tokenizer, batch_size, training, mask_seed=(0, 0)):
  """Packed `[CLS] block [SEP]` sequences with dynamic masking (see module docstring).

  `mask_seed` (two ints) and a batch's index in the pipeline seed its masks (`mask_tokens`):
  a repeated block is masked anew, and a pipeline yields the same masks each time it runs.
  """
  cls, sep, mask = _special(tokenizer, "cls", "sep", "mask")
  ids = special_token_ids(tokenizer)
  length = config.data.sequence_length
  if length < 3:
    raise ValueError(f"config.data.sequence_length={length} leaves no room for text between "
                     "[CLS] and [SEP]; masked_lm needs >= 3")
  blocks = _packed_blocks(config, source, tokenizer, sep, length - 2, training)
  unselectable = sorted({ids[role] for role in ("pad", "cls", "sep", "bos", "eos")
                         if role in ids})
  vocabulary_size = int(tokenizer.vocabulary_size())
  base_seed = tf.constant(mask_seed, tf.int64)

  def to_example(index, block):
    rows = tf.shape(block)[0]
    token_ids = tf.concat([tf.fill([rows, 1], cls), block, tf.fill([rows, 1], sep)], axis=1)
    masked = mask_tokens(token_ids, tf.random.experimental.stateless_fold_in(base_seed, index),
                         vocabulary_size, mask, config.data.mlm_probability,
                         config.data.max_predictions, unselectable)
    features = {"token_ids": masked["token_ids"],
                "padding_mask": tf.ones_like(token_ids, dtype=tf.bool),
                "mask_positions": masked["mask_positions"]}
    return features, masked["mask_ids"], masked["mask_weights"]

  return blocks.batch(batch_size, drop_remainder=True).enumerate().map(
      to_example, num_parallel_calls=AUTOTUNE)


def _configured_labels(config) -> Tuple[str, ...]:
  labels = getattr(config.task, "labels", None) or ()
  return tuple(str(label) for label in labels)


def resolve_labels(config, source: sources.Source) -> Optional[Tuple[str, ...]]:
  """Label names of a classification task: `config.task.labels`, else the source's.

  Returns None for integer labels without names (then `config.task.num_classes` bounds them).
  """
  configured = _configured_labels(config)
  if configured:
    if source.label_names:
      unknown = [name for name in source.label_names if name not in configured]
      if unknown:
        raise ValueError(f"labels {unknown} of {config.data.dataset!r} feature "
                         f"{source.label_feature!r} are outside config.task.labels="
                         f"{list(configured)}; add them or leave config.task.labels empty")
    return configured
  return source.label_names


def label_names(config, split: Optional[str] = None) -> Optional[Tuple[str, ...]]:
  """The task's label names for `config` (what `num_classes` must equal), or None."""
  source = sources.load_source(config.data, split or config.data.train_split)
  if source.label_feature is None:
    return _configured_labels(config) or None
  return resolve_labels(config, source)


def _label_mapper(config, source: sources.Source):
  """A function: raw label tensor (any shape) -> int32 class ids, checked against the set."""
  if source.label_feature is None:
    raise ValueError(f"config.data.label_feature={config.data.label_feature!r} is not a "
                     f"feature of {config.data.dataset!r}; {config.task.name} needs labels")
  names = resolve_labels(config, source)
  what = f"config.data.label_feature={config.data.label_feature!r}"
  if source.label_names:
    # Source class ids -> positions in `names` (the same unless config.task.labels reorders).
    table = tf.constant([names.index(name) for name in source.label_names], tf.int32)
    return lambda label: tf.gather(table, tf.cast(label, tf.int32))
  spec = source.examples.element_spec[source.label_feature]
  if spec.dtype == tf.string:
    if not names:
      raise ValueError(f"{what} holds strings; name the classes in config.task.labels")
    lookup = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(names), tf.range(len(names))), -1)

    def map_string(label):
      ids = lookup.lookup(label)
      check = tf.debugging.assert_non_negative(
          ids, message=f"a label of {what} is outside the label set {list(names)}")
      with tf.control_dependencies([check]):
        return tf.identity(ids)
    return map_string
  num_classes = len(names) if names else int(getattr(config.task, "num_classes", 0) or 0)
  if num_classes <= 0:
    raise ValueError(f"{what} holds integer ids without names; set config.task.labels or "
                     "config.task.num_classes")

  def map_int(label):
    ids = tf.cast(label, tf.int32)
    checks = [tf.debugging.assert_non_negative(
                  ids, message=f"a label of {what} is below 0"),
              tf.debugging.assert_less(
                  ids, num_classes,
                  message=f"a label of {what} is outside the label set [0, {num_classes})")]
    with tf.control_dependencies(checks):
      return tf.identity(ids)
  return map_int


def _scalar(value):
  """A per-example label: a length-1 vector (TFRecord features parse as vectors) -> scalar."""
  return value if value.shape.rank == 0 else value[0]


def sequence_classification_dataset(config, source, tokenizer, batch_size, training):
  """`[CLS] text [SEP]` padded to L, one label an example (see module docstring)."""
  cls, sep, pad = _special(tokenizer, "cls", "sep", "pad")
  map_label = _label_mapper(config, source)
  text_name, label_name = source.text_feature, source.label_feature
  examples = source.examples.map(
      lambda example: (sources.as_text(example[text_name]),
                       map_label(_scalar(example[label_name]))),
      num_parallel_calls=AUTOTUNE)
  packer = keras_hub.layers.StartEndPacker(
      config.data.sequence_length, start_value=cls, end_value=sep, pad_value=pad,
      return_padding_mask=True)

  def to_example(texts, labels):
    token_ids, padding_mask = packer(tf.cast(tokenizer.tokenize(texts), tf.int32))
    features = {"token_ids": token_ids, "padding_mask": padding_mask}
    return features, labels, tf.ones(tf.shape(labels), tf.float32)

  # Evaluation keeps the last partial batch (`make_dataset` pads it): every example counts.
  return examples.batch(batch_size, drop_remainder=training).map(
      to_example, num_parallel_calls=AUTOTUNE)


def word_pieces(tokenizer, words: tf.RaggedTensor, unk_id: int) -> tf.RaggedTensor:
  """Pieces of each word: int32 [batch, (words), (pieces)]; a word with no piece gets unk."""
  pieces = tf.cast(tokenizer.tokenize(words.flat_values), tf.int32)
  if not isinstance(pieces, tf.RaggedTensor):
    pieces = tf.RaggedTensor.from_tensor(pieces)
  # A word the tokenizer maps to nothing would lose its tag; it becomes one unk piece.
  unk = tf.RaggedTensor.from_tensor(tf.fill([tf.shape(words.flat_values)[0], 1], unk_id))
  with_unk = tf.concat([pieces, unk], axis=1)
  keep = tf.maximum(pieces.row_lengths(), 1)
  pieces = tf.ragged.boolean_mask(with_unk, _first_n(with_unk, keep))
  return tf.RaggedTensor.from_row_splits(pieces, words.row_splits)


def _first_n(ragged: tf.RaggedTensor, counts: tf.Tensor) -> tf.RaggedTensor:
  """Boolean ragged mask selecting the first `counts[i]` items of row i."""
  positions = tf.ragged.range(ragged.row_lengths())
  return tf.ragged.map_flat_values(
      tf.less, positions, tf.gather(counts, positions.value_rowids()))


def align_word_tags(pieces: tf.RaggedTensor, tags: tf.RaggedTensor):
  """Spreads word tags over word pieces.

  Args:
    pieces: int32 [batch, (words), (pieces)].
    tags: int32 [batch, (words)].

  Returns:
    (piece_ids, word_ids, piece_tags, first_piece), each [batch, (pieces of the sentence)]:
    the sentence's pieces, the index of each piece's word, the word's tag on every piece, and
    1 on the first piece of each word (0 on the others).
  """
  counts = pieces.row_lengths(axis=2)                       # [batch, (words)]
  word_index = tf.ragged.range(counts.row_lengths())        # [batch, (words)]
  piece_ids = pieces.merge_dims(1, 2)                       # [batch, (pieces)]
  repeat = lambda values: tf.RaggedTensor.from_row_splits(  # noqa: E731
      tf.repeat(values, counts.flat_values), piece_ids.row_splits)
  word_ids = repeat(tf.cast(word_index.flat_values, tf.int32))
  piece_tags = repeat(tf.cast(tags.flat_values, tf.int32))
  position_in_word = tf.ragged.range(counts.flat_values).flat_values
  first_piece = tf.RaggedTensor.from_row_splits(
      tf.cast(tf.equal(position_in_word, 0), tf.int32), piece_ids.row_splits)
  return piece_ids, word_ids, piece_tags, first_piece


# Sentences looked at on each side for document context; the token budget
# (`data.context_tokens`) usually runs out first.
_CONTEXT_SENTENCES = 8


def with_document_context(sentences: tf.data.Dataset, context_tokens: int,
                          max_tokens: int) -> tf.data.Dataset:
  """Adds to each sentence the word pieces of the sentences around it in its document.

  Args:
    sentences: elements `(piece_ids, word_ids, piece_tags, first_piece, document)` in
      document order: four int32 `[n]` vectors (as from `align_word_tags`) and the
      sentence's document id (scalar).
    context_tokens: pieces of context to add: the nearest ones before and after the
      sentence, half on each side (more on one side when the other runs out), from its own
      document only, within `_CONTEXT_SENTENCES` sentences.
    max_tokens: a sentence and its context never exceed this many pieces (the sentence's own
      pieces come first: a long sentence gets less context, or none).

  Returns:
    Elements `(piece_ids, word_ids, piece_tags, first_piece)`, one a sentence in the same
    order: context pieces carry word id -1, tag 0 and first_piece 0, so they are read but
    neither trained on nor scored.
  """
  window = _CONTEXT_SENTENCES
  size = 2 * window + 1
  spec = sentences.element_spec
  # Empty sentences before the first and after the last let every sentence sit mid-window.
  blank = tf.data.Dataset.from_tensors(tuple(
      tf.zeros([0], s.dtype) if s.shape.rank else tf.constant(-1, s.dtype)
      for s in spec)).repeat(window)
  windows = blank.concatenate(sentences).concatenate(blank).window(
      size, shift=1, drop_remainder=True).flat_map(
          lambda *parts: tf.data.Dataset.zip(parts).ragged_batch(size))

  def assemble(piece_ids, word_ids, piece_tags, first_piece, documents):
    same = tf.equal(documents, documents[window])
    before = tf.ragged.boolean_mask(piece_ids[:window], same[:window]).flat_values
    after = tf.ragged.boolean_mask(piece_ids[window + 1:], same[window + 1:]).flat_values
    own = piece_ids[window]
    budget = tf.clip_by_value(max_tokens - tf.size(own), 0, context_tokens)
    n_before, n_after = tf.size(before), tf.size(after)
    take_before = tf.minimum(n_before, tf.maximum(budget // 2, budget - n_after))
    take_after = tf.minimum(n_after, budget - take_before)

    def around(middle, fill):
      return tf.concat([tf.fill([take_before], fill), middle, tf.fill([take_after], fill)], 0)

    return (tf.concat([before[n_before - take_before:], own, after[:take_after]], 0),
            around(word_ids[window], -1), around(piece_tags[window], 0),
            around(first_piece[window], 0))

  return windows.map(assemble, num_parallel_calls=AUTOTUNE)


def tagged_pieces(config, tokenizer, source: sources.Source) -> tf.data.Dataset:
  """A token-classification split in source order, one element a sentence.

  Returns:
    Elements `(piece_ids, word_ids, piece_tags, first_piece)`, int32 `[n]` each (see
    `align_word_tags`), with document context when `config.data.context_tokens` > 0.
  """
  pad, = _special(tokenizer, "pad")
  # Byte-level vocabularies have no unk (every word has bytes); pad stands in, never used.
  unk = special_token_ids(tokenizer).get("unk", pad)
  map_label = _label_mapper(config, source)
  text_name, label_name = source.text_feature, source.label_feature
  context, document_name = config.data.context_tokens, config.data.document_feature
  if context:
    sources.check_feature(document_name, list(source.examples.element_spec),
                          "document_feature", repr(config.data.dataset))

  def parts(example):
    document = (tf.cast(_scalar(example[document_name]), tf.int64) if context
                else tf.constant(0, tf.int64))
    return sources.as_words(example[text_name]), map_label(example[label_name]), document

  def tokenize(words, tags, documents):
    pieces = word_pieces(tokenizer, words, unk)
    return align_word_tags(pieces, tags) + (documents,)

  # Order matters here (neighbours are context): deterministic maps. The last map also
  # turns the unbatched rows (ragged specs of ragged rank 0) into plain tensors.
  sentences = source.examples.map(parts).ragged_batch(_TOKENIZE_BATCH).map(
      tokenize, num_parallel_calls=AUTOTUNE, deterministic=True).unbatch().map(
          lambda *parts: parts if context else parts[:4])
  if not context:
    return sentences
  # [CLS] and [SEP] take two of the sequence's tokens.
  return with_document_context(sentences, context, config.data.sequence_length - 2)


def token_classification_dataset(config, source, tokenizer, batch_size, training):
  """`[CLS] pieces [SEP]` with word tags on first pieces (see module docstring).

  `source.examples` are `tagged_pieces` elements (`make_dataset` reads them in order).
  """
  cls, sep, pad = _special(tokenizer, "cls", "sep", "pad")
  length = config.data.sequence_length

  def packer(start, end, pad_value):
    return keras_hub.layers.StartEndPacker(length, start_value=start, end_value=end,
                                           pad_value=pad_value)

  pack_ids = keras_hub.layers.StartEndPacker(length, start_value=cls, end_value=sep,
                                             pad_value=pad, return_padding_mask=True)
  pack_word_ids, pack_tags = packer(-1, -1, -1), packer(0, 0, 0)

  def to_example(piece_ids, word_ids, piece_tags, first_piece):
    token_ids, padding_mask = pack_ids(piece_ids)
    features = {"token_ids": token_ids, "padding_mask": padding_mask,
                "word_ids": pack_word_ids(word_ids)}
    return features, pack_tags(piece_tags), tf.cast(pack_tags(first_piece), tf.float32)

  return source.examples.ragged_batch(batch_size, drop_remainder=training).map(
      to_example, num_parallel_calls=AUTOTUNE)


def fill_values(element_spec, pad_id: int):
  """What pads each component of a classification example: the pad token for `token_ids`,
  -1 for `word_ids`, zeros (False, weight 0) for the rest."""
  features, labels, weight = element_spec

  def fill(name, spec):
    value = {"token_ids": pad_id, "word_ids": -1}.get(name, 0)
    return tf.cast(tf.constant(value), spec.dtype)

  return ({name: fill(name, spec) for name, spec in features.items()},
          tf.nest.map_structure(lambda spec: fill("", spec), labels),
          tf.nest.map_structure(lambda spec: fill("", spec), weight))


def bucket_by_length(batches: tf.data.Dataset, bucket_lengths, sequence_length: int,
                     batch_size: int, pad_id: int, drop_remainder: bool) -> tf.data.Dataset:
  """Re-batches classification examples so that each batch pads only to its length bucket.

  Args:
    batches: `(features, labels, weight)` batches padded to `sequence_length`.
    bucket_lengths: increasing lengths below `sequence_length`; an example of n tokens
      (padding excluded) goes to the first bucket of length >= n, or to `sequence_length`.
    batch_size, pad_id: examples a batch; the token that pads `token_ids`.
    drop_remainder: drop each bucket's last partial batch (training) or keep it (evaluation).

  Returns:
    Batches of `batch_size` examples whose sequence axis is one of the bucket lengths.
  """
  def trim(features, labels, weight):
    n = tf.reduce_sum(tf.cast(features["padding_mask"], tf.int32))
    cut = lambda t: t[:n] if t.shape.rank == 1 and t.shape[0] == sequence_length else t
    return tf.nest.map_structure(cut, (features, labels, weight))

  examples = batches.unbatch()
  fill = fill_values(examples.element_spec, pad_id)
  # Boundaries are exclusive upper bounds; padding goes to a bucket's boundary minus one.
  boundaries = [length + 1 for length in bucket_lengths] + [sequence_length + 1]
  return examples.map(trim, num_parallel_calls=AUTOTUNE).bucket_by_sequence_length(
      lambda features, labels, weight: tf.shape(features["token_ids"])[0],
      bucket_boundaries=boundaries, bucket_batch_sizes=[batch_size] * (len(boundaries) + 1),
      padding_values=fill, pad_to_bucket_boundary=True, drop_remainder=drop_remainder)


def pad_partial_batches(batches: tf.data.Dataset, batch_size: int,
                        pad_id: int) -> tf.data.Dataset:
  """Pads a batch of fewer than `batch_size` examples with examples of weight 0.

  Evaluation then covers the whole split with the static batch size the compiled step has.
  """
  fill = fill_values(batches.element_spec, pad_id)

  def pad(*batch):
    missing = batch_size - tf.shape(batch[0]["token_ids"])[0]

    def pad_one(tensor, value):
      paddings = [[0, missing]] + [[0, 0]] * (tensor.shape.rank - 1)
      padded = tf.pad(tensor, paddings, constant_values=value)
      return tf.ensure_shape(padded, [batch_size] + tensor.shape[1:])
    return tf.nest.map_structure(pad_one, batch, fill)

  return batches.map(pad, num_parallel_calls=AUTOTUNE)


_CLASSIFICATION_TASKS = ("sequence_classification", "token_classification")
_BUILDERS = {
    "causal_lm": causal_lm_dataset,
    "masked_lm": masked_lm_dataset,
    "sequence_classification": sequence_classification_dataset,
    "token_classification": token_classification_dataset,
}


def check_bucket_lengths(config) -> None:
  """Raises ValueError unless `config.data.bucket_lengths` suits the task and length."""
  buckets = tuple(config.data.bucket_lengths)
  if not buckets:
    return
  task = config.task.name
  # multi_task: every head is a classification task (`multitask_data` checks them).
  if task not in _CLASSIFICATION_TASKS + ("multi_task",):
    raise ConfigError(f"config.data.bucket_lengths={buckets} applies to "
                      f"{' and '.join(_CLASSIFICATION_TASKS)}; task {task} packs full-length "
                      "blocks (set it to ())")
  if (list(buckets) != sorted(set(buckets)) or buckets[0] < 1
      or buckets[-1] >= config.data.sequence_length):
    raise ConfigError(f"config.data.bucket_lengths={buckets} is not accepted; give increasing "
                      f"lengths from 1 to below config.data.sequence_length="
                      f"{config.data.sequence_length}")


def check_context_tokens(config) -> None:
  """Raises ValueError unless `config.data.context_tokens` suits the task."""
  if config.data.context_tokens and config.task.name != "token_classification":
    raise ConfigError(f"config.data.context_tokens={config.data.context_tokens} applies to "
                      f"token_classification, not task {config.task.name} (set it to 0)")


def make_dataset(config, split: str, tokenizer, input_context=None,
                 training: bool = True) -> tf.data.Dataset:
  """The input pipeline of `config.task.name` over `split`.

  Args:
    config: the full config (`data`, `task`, `train.global_batch_size` are read).
    split: split name, e.g. `config.data.train_split` (TFDS slicing such as
      `"train[:10%]"` works for TFDS datasets).
    tokenizer: from `tfllm.data.tokenizers.get_tokenizer`.
    input_context: `tf.distribute.InputContext` (from
      `strategy.distribute_datasets_from_function`): the dataset reads shard
      `input_pipeline_id` of `num_input_pipelines` and batches per replica.
    training: shuffle and repeat forever (True), or read the split once in order (False).

  Returns:
    `tf.data.Dataset` of `(features, labels, sample_weight)` with static shapes.

  Raises:
    ValueError: unknown task or dataset, missing feature, labels outside the label set,
      a tokenizer without the special tokens the task needs.
  """
  task = _task_name(config)
  if config.data.sequence_length < 2:
    raise ConfigError(f"config.data.sequence_length={config.data.sequence_length} is too "
                      "short; accepted: >= 2")
  check_bucket_lengths(config)
  check_context_tokens(config)
  buckets = tuple(config.data.bucket_lengths)
  batch_size = _batch_size(config, input_context)
  in_order = (functools.partial(tagged_pieces, config, tokenizer)
              if task == "token_classification" else None)
  source = _examples(config, split, input_context, training, in_order)
  build = _BUILDERS[task]
  if task == "masked_lm":
    # Each input pipeline masks with its own seeds (its batches are other blocks anyway).
    pipeline_id = input_context.input_pipeline_id if input_context else 0
    build = functools.partial(build, mask_seed=(config.data.seed, pipeline_id))
  dataset = build(config, source, tokenizer, batch_size, training)
  if task in _CLASSIFICATION_TASKS:
    pad_id, = _special(tokenizer, "pad")
    if buckets:
      dataset = bucket_by_length(dataset, buckets, config.data.sequence_length, batch_size,
                                 pad_id, drop_remainder=training)
    if not training:
      dataset = pad_partial_batches(dataset, batch_size, pad_id)
  return dataset.prefetch(AUTOTUNE).with_options(_options())

"""One preprocessor per task: tokenize and pack, the same code for training and for serving.

The input pipelines (`tfllm.data.pipelines`) map their batches through these objects and the
served signatures (`tfllm.export`) call the same objects on request text, so what a model
reads when served is what it read when trained (KerasHub's task preprocessors follow the same
pattern: one object serves `fit` and export). Each is built from the tokenizer and the
sequence length and runs as TF ops on a batch:

  CausalLMPreprocessor           documents -> one token stream, each document followed by eos
  MaskedLMPreprocessor           `[CLS] block [SEP]` with BERT's dynamic masking; served text
                                 with literal `[MASK]` markers -> mask positions
  SequenceClassifierPreprocessor text -> `[CLS] pieces [SEP]`, truncated or padded
  TokenClassifierPreprocessor    words -> word pieces (first piece carries the word's tag) ->
                                 `[CLS] pieces [SEP]`

A multi-task model reads each head's batches through its head's preprocessor (sequence or
token classification); there is no separate multi-task preprocessor.
"""

from __future__ import annotations

import keras_hub
import tensorflow as tf

from tfllm.data import masking
from tfllm.data.tokenizers import required_special_ids, special_token_ids

# Documents (or rows) tokenized together in one op: amortizes per-call overhead.
TOKENIZE_BATCH = 64
MASK_TEXT = "[MASK]"


def _as_ragged(tokens) -> tf.RaggedTensor:
  return tokens if isinstance(tokens, tf.RaggedTensor) else tf.RaggedTensor.from_tensor(tokens)


def document_tokens(tokenizer, texts, separator_id: int):
  """Texts `[batch]` -> int32 `[tokens]`: each text's ids followed by `separator_id`,
  concatenated in order."""
  ids = tf.cast(tokenizer.tokenize(texts), tf.int32)
  separators = tf.fill([tf.shape(texts)[0], 1], tf.constant(separator_id, tf.int32))
  return tf.concat([ids, tf.RaggedTensor.from_tensor(separators)], axis=1).flat_values


class CausalLMPreprocessor:
  """Documents -> token ids, each document followed by the end-of-document token.

  Call: texts `[batch]` -> int32 `[tokens]` (`document_tokens` with eos); training packs
  that stream into blocks (`pipelines.causal_lm`) and `to_example` turns blocks into
  next-token prediction. A served prompt starts after eos (`eos_id`), as a document does in
  training.
  """

  def __init__(self, tokenizer, purpose: str = "causal_lm"):
    self.tokenizer = tokenizer
    (self.eos_id,) = required_special_ids(tokenizer, "eos", purpose=purpose)
    self.pad_id = special_token_ids(tokenizer).get("pad", 0)

  def __call__(self, texts):
    return document_tokens(self.tokenizer, texts, self.eos_id)

  @staticmethod
  def to_example(blocks):
    """Blocks int32 `[batch, L + 1]` -> `(features, labels, weight)` of next-token
    prediction: inputs `[batch, L]`, labels the inputs shifted by one, weight 1."""
    inputs = blocks[:, :-1]
    features = {"token_ids": inputs, "padding_mask": tf.ones_like(inputs, dtype=tf.bool)}
    return features, blocks[:, 1:], tf.ones(tf.shape(inputs), tf.float32)


class MaskedLMPreprocessor:
  """`[CLS] text [SEP]` with masks: drawn by `masking.mask_tokens` for training, read from
  literal `[MASK]` markers when served."""

  def __init__(self, tokenizer, sequence_length: int, selection_rate: float = 0.15,
               max_predictions: int = 20, purpose: str = "masked_lm"):
    self.tokenizer = tokenizer
    self.sequence_length = sequence_length
    self.selection_rate, self.max_predictions = selection_rate, max_predictions
    self.cls_id, self.sep_id, self.pad_id, self.mask_id = required_special_ids(
        tokenizer, "cls", "sep", "pad", "mask", purpose=purpose)
    ids = special_token_ids(tokenizer)
    self.unselectable_ids = sorted({ids[role] for role in ("pad", "cls", "sep", "bos", "eos")
                                    if role in ids})
    self.vocabulary_size = int(tokenizer.vocabulary_size())
    self.packer = keras_hub.layers.StartEndPacker(
        sequence_length, start_value=self.cls_id, end_value=self.sep_id,
        pad_value=self.pad_id, return_padding_mask=True)

  def __call__(self, texts):
    """Texts `[batch]` -> int32 `[tokens]`, each text followed by sep (blocks of L - 2 of
    this stream are what `mask_blocks` wraps)."""
    return document_tokens(self.tokenizer, texts, self.sep_id)

  def mask_blocks(self, blocks, seed):
    """Blocks int32 `[batch, L - 2]` -> `(features, labels, weight)`: `[CLS] block [SEP]`
    masked as `masking.mask_tokens` draws with `seed` (int `[2]`)."""
    rows = tf.shape(blocks)[0]
    token_ids = tf.concat([tf.fill([rows, 1], self.cls_id), blocks,
                           tf.fill([rows, 1], self.sep_id)], axis=1)
    masked = masking.mask_tokens(token_ids, seed, self.vocabulary_size, self.mask_id,
                                 self.selection_rate, self.max_predictions,
                                 self.unselectable_ids)
    features = {"token_ids": masked["token_ids"],
                "padding_mask": tf.ones_like(token_ids, dtype=tf.bool),
                "mask_positions": masked["mask_positions"]}
    return features, masked["mask_ids"], masked["mask_weights"]

  def fill_in(self, text):
    """Text `[batch]` with literal `[MASK]` markers -> `(features, num_masks)`.

    The text between markers is tokenized as usual and the mask id put between the pieces,
    so `[MASK]` works whatever the tokenizer does with brackets; masks past the sequence
    length are dropped. Features: `token_ids`, `padding_mask` `[batch, L]` and
    `mask_positions` `[batch, masks]` (0 past `num_masks`, int32 `[batch]`).
    """
    segments = tf.strings.split(text, sep=MASK_TEXT)                   # [batch, (segments)]
    pieces = _as_ragged(tf.cast(self.tokenizer.tokenize(segments.flat_values), tf.int32))
    masks = tf.RaggedTensor.from_tensor(tf.fill([pieces.nrows(), 1], self.mask_id))
    with_masks = tf.concat([pieces, masks], axis=1)                    # each segment + [MASK]
    rows = tf.RaggedTensor.from_row_splits(with_masks, segments.row_splits).merge_dims(1, 2)
    token_ids, padding_mask = self.packer(rows[:, :-1])                # no mask after the last
    is_mask = tf.equal(token_ids, self.mask_id)
    positions = tf.ragged.boolean_mask(
        tf.broadcast_to(tf.range(self.sequence_length), tf.shape(token_ids)), is_mask)
    features = {"token_ids": token_ids, "padding_mask": padding_mask,
                "mask_positions": positions.to_tensor(default_value=0)}
    return features, tf.cast(positions.row_lengths(), tf.int32)


class SequenceClassifierPreprocessor:
  """Text -> `[CLS] pieces [SEP]` padded (or truncated) to `sequence_length`.

  Call: string `[batch]` -> `{"token_ids": int32, "padding_mask": bool}`, `[batch, L]` each.

  Example:

  >>> from tfllm.data import tokenizers
  >>> pre = SequenceClassifierPreprocessor(tokenizers.ByteLevelTokenizer(), 6)
  >>> pre(tf.constant(["hi"]))["token_ids"].numpy().tolist()  # [CLS] h i [SEP] [PAD] [PAD]
  [[257, 104, 105, 258, 256, 256]]
  """

  def __init__(self, tokenizer, sequence_length: int,
               purpose: str = "sequence_classification"):
    self.tokenizer = tokenizer
    cls, sep, self.pad_id = required_special_ids(tokenizer, "cls", "sep", "pad",
                                                 purpose=purpose)
    self.packer = keras_hub.layers.StartEndPacker(
        sequence_length, start_value=cls, end_value=sep, pad_value=self.pad_id,
        return_padding_mask=True)

  def __call__(self, texts):
    token_ids, padding_mask = self.packer(tf.cast(self.tokenizer.tokenize(texts), tf.int32))
    return {"token_ids": token_ids, "padding_mask": padding_mask}


def _first_n(ragged: tf.RaggedTensor, counts: tf.Tensor) -> tf.RaggedTensor:
  """Boolean ragged mask selecting the first `counts[i]` items of row i."""
  positions = tf.ragged.range(ragged.row_lengths())
  return tf.ragged.map_flat_values(
      tf.less, positions, tf.gather(counts, positions.value_rowids()))


def word_pieces(tokenizer, words: tf.RaggedTensor, unk_id: int) -> tf.RaggedTensor:
  """Pieces of each word: int32 [batch, (words), (pieces)]; a word with no piece gets unk."""
  pieces = _as_ragged(tf.cast(tokenizer.tokenize(words.flat_values), tf.int32))
  # A word the tokenizer maps to nothing would lose its tag; it becomes one unk piece.
  unk = tf.RaggedTensor.from_tensor(tf.fill([tf.shape(words.flat_values)[0], 1], unk_id))
  with_unk = tf.concat([pieces, unk], axis=1)
  keep = tf.maximum(pieces.row_lengths(), 1)
  pieces = tf.ragged.boolean_mask(with_unk, _first_n(with_unk, keep))
  return tf.RaggedTensor.from_row_splits(pieces, words.row_splits)


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


class TokenClassifierPreprocessor:
  """Words -> word pieces -> `[CLS] pieces [SEP]`; a word's tag sits on its first piece.

  Training: `tagged(words, tags)` aligns tags with pieces, `pack(...)` packs a batch of
  aligned sentences into `(features, labels, weight)`. Serving: calling it on words `[batch,
  (words)]` returns `(features, first)`, `first` bool `[batch, L]` True on each word's first
  piece (words past the sequence length have none).
  """

  def __init__(self, tokenizer, sequence_length: int, purpose: str = "token_classification"):
    self.tokenizer = tokenizer
    cls, sep, self.pad_id = required_special_ids(tokenizer, "cls", "sep", "pad",
                                                 purpose=purpose)
    # Byte-level vocabularies have no unk (every word has bytes); pad stands in, never used.
    self.unk_id = special_token_ids(tokenizer).get("unk", self.pad_id)
    self.pack_ids = keras_hub.layers.StartEndPacker(
        sequence_length, start_value=cls, end_value=sep, pad_value=self.pad_id,
        return_padding_mask=True)
    # Integer values: StartEndPacker rejects a float 0.0 start/end value (len() of a float).
    self.pack_word_ids = keras_hub.layers.StartEndPacker(sequence_length, start_value=-1,
                                                         end_value=-1, pad_value=-1)
    self.pack_tags = keras_hub.layers.StartEndPacker(sequence_length, start_value=0,
                                                     end_value=0, pad_value=0)

  def tagged(self, words: tf.RaggedTensor, tags: tf.RaggedTensor):
    """Words and their int tags `[batch, (words)]` -> `align_word_tags`'s four tensors."""
    return align_word_tags(word_pieces(self.tokenizer, words, self.unk_id), tags)

  def pack(self, piece_ids, word_ids, piece_tags, first_piece):
    """Aligned sentences `[batch, (pieces)]` -> `(features, labels, weight)`, `[batch, L]`:
    features `token_ids`, `padding_mask`, `word_ids` (-1 on special and pad tokens); labels
    the word tags; weight 1.0 on first pieces."""
    token_ids, padding_mask = self.pack_ids(piece_ids)
    features = {"token_ids": token_ids, "padding_mask": padding_mask,
                "word_ids": self.pack_word_ids(word_ids)}
    return features, self.pack_tags(piece_tags), tf.cast(self.pack_tags(first_piece),
                                                         tf.float32)

  def __call__(self, words: tf.RaggedTensor):
    piece_ids, _, _, first_piece = self.tagged(words, tf.zeros_like(words, dtype=tf.int32))
    token_ids, padding_mask = self.pack_ids(piece_ids)
    first = self.pack_tags(first_piece) > 0
    return {"token_ids": token_ids, "padding_mask": padding_mask}, first

"""Served signatures per task: `tf.string` text in, named tensors out, tokenization in the graph.

Each `*Signatures` class holds a model and its tokenizer and exposes `functions()`: signature
name -> `tf.function` with a named input signature. Every text input goes through
`sanitize_text` (invalid UTF-8 bytes become U+FFFD) and is truncated to the configured length,
so no served input can fail the graph or grow its cost without bound.

  causal_lm                serving_default(prompt) -> {text, token_ids, num_tokens}
                           generate(prompt, max_new_tokens, temperature, top_k, top_p, seed)
  sequence_classification  serving_default(text) -> {label, label_id, probabilities}
                           serve_examples(inputs: serialized tf.Example) -> {classes, scores}
  token_classification     serving_default(text) -> {words, tags, num_words, entity_types,
                           entity_starts, entity_ends, num_entities}
                           serve_examples(inputs) -> the same
  masked_lm                serving_default(text) -> {tokens, token_ids, scores, num_masks}

`docs/serving.md` documents shapes, padding values and REST requests.
"""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

import keras_hub
import numpy as np
import tensorflow as tf

from tfllm.data import pipelines
from tfllm.data.tokenizers import special_token_ids
from tfllm.finetune.tag_decoding import decode_word_tags
from tfllm.models import generation
from tfllm.models.config import tag_decoding

TEXT = tf.TensorSpec([None], tf.string)
# Method name that lets TF Serving's Classify API (and Predict) use `serve_examples`.
CLASSIFY_METHOD_NAME = "tensorflow/serving/classify"


def sanitize_text(text):
  """Replaces invalid UTF-8 bytes with U+FFFD, so tokenizers never see malformed input."""
  return tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace")


def label_names(config) -> Tuple[str, ...]:
  """Class or tag names: `config.task.labels`, else `"0" ... "n-1"`."""
  if config.task.labels:
    return tuple(str(label) for label in config.task.labels)
  return tuple(str(i) for i in range(config.task.num_classes))


def _maybe_jit(function, jit_compile: bool):
  return tf.function(function, jit_compile=True) if jit_compile else function


class _Signatures:
  """Common parts: model, tokenizer, special ids, the forward pass (XLA or not)."""

  def __init__(self, model, tokenizer, config):
    self.model = model
    self.tokenizer = tokenizer
    self.config = config
    self.special = special_token_ids(tokenizer)
    self.jit_compile = bool(config.export.jit_compile)
    self.sequence_length = int(config.export.sequence_length or config.data.sequence_length)
    limit = model.backbone.max_sequence_length
    if not 3 <= self.sequence_length <= limit:
      raise ValueError(f"config.export.sequence_length={self.sequence_length} is not accepted; "
                       f"use 3 ... {limit} (the model's max_sequence_length), or 0 for "
                       "config.data.sequence_length")
    self._forward = _maybe_jit(lambda features: self.model(features, training=False),
                               self.jit_compile)

  def _special(self, *roles):
    missing = [role for role in roles if role not in self.special]
    if missing:
      raise ValueError(f"the tokenizer has no {', '.join(missing)} token; serving "
                       f"{self.config.task.name} needs {', '.join(roles)}")
    return tuple(self.special[role] for role in roles)

  def functions(self) -> Dict[str, tf.types.experimental.GenericFunction]:
    raise NotImplementedError

  def warmup_inputs(self) -> Dict[str, Dict[str, np.ndarray]]:
    """Signature name -> a small valid request (for TF Serving warm-up records)."""
    raise NotImplementedError

  def method_names(self) -> Dict[str, str]:
    """Signatures whose method name is not Predict's."""
    return {}


class CausalLMSignatures(_Signatures):
  """Generation with the KV cache inside the graph (`generation.generate_tokens`).

  `serving_default(prompt)` uses `config.export`'s max_new_tokens, temperature, top_k, top_p
  and seed. `generate` takes each of them as a required input of shape `[batch]` (or `[1]`,
  broadcast to the batch): TF Serving feeds every input of a signature, so optional inputs
  with defaults are the two signatures.
  """

  def __init__(self, model, tokenizer, config):
    super().__init__(model, tokenizer, config)
    (self.eos,) = self._special("eos")
    self.pad = self.special.get("pad", 0)
    self.max_length = int(config.export.max_length or model.backbone.max_sequence_length)
    limit = model.backbone.max_sequence_length
    if not 2 <= self.max_length <= limit:
      raise ValueError(f"config.export.max_length={self.max_length} is not accepted; use "
                       f"2 ... {limit}, or 0 for the model's max_sequence_length")
    self.stop_token_ids = (self.eos,)
    loop = lambda *args: generation.generate_tokens(  # noqa: E731
        self.model, *args, stop_token_ids=self.stop_token_ids, pad_token_id=self.pad)
    self._loop = _maybe_jit(loop, self.jit_compile)

  def _generate(self, prompt, max_new_tokens, temperature, top_k, top_p, seed):
    batch = tf.shape(prompt)[0:1]
    rows = lambda value, dtype: tf.broadcast_to(tf.cast(value, dtype), batch)  # noqa: E731
    # Training packs documents each followed by eos: a prompt starts like a document does.
    prompt_ids = generation.prompt_token_ids(self.tokenizer, sanitize_text(prompt),
                                             self.max_length - 1, start_token_id=self.eos)
    token_ids, lengths = generation.pack_prompts(prompt_ids, self.max_length, self.pad)
    token_ids, num_generated = self._loop(
        token_ids, lengths, rows(max_new_tokens, tf.int32), rows(temperature, tf.float32),
        rows(top_k, tf.int32), rows(top_p, tf.float32), rows(seed, tf.int64))
    new_ids = generation.generated_ids(token_ids, lengths, num_generated)
    return {
        "text": generation.continuation_text(self.tokenizer, new_ids, self.stop_token_ids),
        "token_ids": new_ids.to_tensor(default_value=self.pad),
        "num_tokens": num_generated,
    }

  def functions(self):
    defaults = self.config.export

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="prompt")])
    def serving_default(prompt):
      return self._generate(prompt, defaults.max_new_tokens, defaults.temperature,
                            defaults.top_k, defaults.top_p, defaults.seed)

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.string, name="prompt"),
        tf.TensorSpec([None], tf.int32, name="max_new_tokens"),
        tf.TensorSpec([None], tf.float32, name="temperature"),
        tf.TensorSpec([None], tf.int32, name="top_k"),
        tf.TensorSpec([None], tf.float32, name="top_p"),
        tf.TensorSpec([None], tf.int64, name="seed")])
    def generate(prompt, max_new_tokens, temperature, top_k, top_p, seed):
      return self._generate(prompt, max_new_tokens, temperature, top_k, top_p, seed)

    return {"serving_default": serving_default, "generate": generate}

  def warmup_inputs(self):
    prompt = np.array([b"Hello"], object)
    return {
        "serving_default": {"prompt": prompt},
        "generate": {"prompt": prompt, "max_new_tokens": np.array([4], np.int32),
                     "temperature": np.array([0.0], np.float32),
                     "top_k": np.array([0], np.int32), "top_p": np.array([1.0], np.float32),
                     "seed": np.array([0], np.int64)},
    }


def _text_feature_spec(config):
  return {config.data.text_feature: tf.io.FixedLenFeature([], tf.string, default_value="")}


def _serialized_example(feature_name: str, text: bytes) -> bytes:
  feature = tf.train.Feature(bytes_list=tf.train.BytesList(value=[text]))
  example = tf.train.Example(features=tf.train.Features(feature={feature_name: feature}))
  return example.SerializeToString()


class SequenceClassifierSignatures(_Signatures):
  """`[CLS] text [SEP]` as in training (`tfllm.data.pipelines`), then softmax over labels."""

  def __init__(self, model, tokenizer, config):
    super().__init__(model, tokenizer, config)
    cls, sep, pad = self._special("cls", "sep", "pad")
    self.labels = label_names(config)
    self.packer = keras_hub.layers.StartEndPacker(
        self.sequence_length, start_value=cls, end_value=sep, pad_value=pad,
        return_padding_mask=True)

  def _classify(self, text):
    pieces = tf.cast(self.tokenizer.tokenize(sanitize_text(text)), tf.int32)
    token_ids, padding_mask = self.packer(pieces)
    logits = self._forward({"token_ids": token_ids, "padding_mask": padding_mask})
    probabilities = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
    label_id = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
    return probabilities, label_id

  def functions(self):
    labels = tf.constant(self.labels)
    feature_spec = _text_feature_spec(self.config)
    text_feature = self.config.data.text_feature

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serving_default(text):
      probabilities, label_id = self._classify(text)
      return {"label": tf.gather(labels, label_id), "label_id": label_id,
              "probabilities": probabilities}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def serve_examples(inputs):
      text = tf.io.parse_example(inputs, feature_spec)[text_feature]
      probabilities, _ = self._classify(text)
      classes = tf.tile(labels[None, :], [tf.shape(probabilities)[0], 1])
      return {"classes": classes, "scores": probabilities}

    return {"serving_default": serving_default, "serve_examples": serve_examples}

  def method_names(self):
    return {"serve_examples": CLASSIFY_METHOD_NAME}

  def warmup_inputs(self):
    example = _serialized_example(self.config.data.text_feature, b"A fine film.")
    return {"serving_default": {"text": np.array([b"A fine film."], object)},
            "serve_examples": {"inputs": np.array([example], object)}}


def tag_spans(tags: Sequence[str]):
  """Per tag id: `(entity type index or -1 for O, begins an entity)` and the type names.

  `B-X` begins an entity of type X, `I-X` continues one (or begins it after another type),
  `O` is outside; a tag without a `B-`/`I-` prefix is its own type (runs of it are spans).
  """
  types, type_of, begins = [], [], []
  for tag in tags:
    if tag == "O":
      type_of.append(-1)
      begins.append(False)
      continue
    prefix, _, name = tag.partition("-")
    if prefix in ("B", "I") and name:
      begins.append(prefix == "B")
    else:
      name = tag
      begins.append(False)
    if name not in types:
      types.append(name)
    type_of.append(types.index(name))
  return tuple(type_of), tuple(begins), tuple(types)


def entity_spans(tag_ids, num_words, type_of, begins):
  """Entities of padded word tags as padded `(type index, start, end)`, end exclusive.

  Args:
    tag_ids: int32 `[batch, words]` (values past `num_words` are ignored).
    num_words: int32 `[batch]`.
    type_of, begins: per tag id, from `tag_spans`.

  Returns:
    `(types, starts, ends)` int32 `[batch, max entities]` padded with -1, and
    `num_entities [batch]`.
  """
  batch, width = tf.shape(tag_ids)[0], tf.shape(tag_ids)[1]
  valid = tf.range(width)[None, :] < num_words[:, None]
  types = tf.where(valid, tf.gather(tf.constant(type_of, tf.int32), tag_ids), -1)
  begin = tf.logical_and(valid, tf.gather(tf.constant(begins), tag_ids))
  previous = tf.pad(types[:, :-1], [[0, 0], [1, 0]], constant_values=-1)
  starts = tf.logical_and(types >= 0, tf.logical_or(begin, previous != types))
  inside = types >= 0  # every typed word is a start or continues the entity before it
  flat_starts = tf.reshape(starts, [-1])
  entity = tf.math.cumsum(tf.cast(flat_starts, tf.int32)) - 1
  num_total = tf.reduce_sum(tf.cast(flat_starts, tf.int32))
  positions = tf.reshape(tf.tile(tf.range(width)[None, :], [batch, 1]), [-1])
  in_flat = tf.reshape(inside, [-1])
  ends = tf.math.unsorted_segment_max(tf.boolean_mask(positions + 1, in_flat),
                                      tf.boolean_mask(entity, in_flat), num_total)
  rows = tf.boolean_mask(tf.reshape(tf.tile(tf.range(batch)[:, None], [1, width]), [-1]),
                         flat_starts)
  ragged = lambda values: tf.RaggedTensor.from_value_rowids(  # noqa: E731
      values, rows, nrows=batch).to_tensor(default_value=-1)
  num_entities = tf.math.bincount(rows, minlength=batch, maxlength=batch, dtype=tf.int32)
  return (ragged(tf.boolean_mask(tf.reshape(types, [-1]), flat_starts)),
          ragged(tf.boolean_mask(positions, flat_starts)), ragged(ends), num_entities)


class TokenClassifierSignatures(_Signatures):
  """Whitespace words -> word pieces (as in training) -> one tag a word (its first piece's,
  decoded as `config.task.decoding` says) and the entities the tags spell. Words past the
  sequence length are dropped."""

  def __init__(self, model, tokenizer, config):
    super().__init__(model, tokenizer, config)
    cls, sep, pad = self._special("cls", "sep", "pad")
    self.unk = self.special.get("unk", pad)
    self.tags = label_names(config)
    self.decoding = tag_decoding(config.task)
    self.type_of, self.begins, self.entity_types = tag_spans(self.tags)
    length = self.sequence_length
    self.pack_ids = keras_hub.layers.StartEndPacker(
        length, start_value=cls, end_value=sep, pad_value=pad, return_padding_mask=True)
    # Integer values: StartEndPacker rejects a float 0.0 start/end value (len() of a float).
    self.pack_first = keras_hub.layers.StartEndPacker(length, start_value=0, end_value=0,
                                                      pad_value=0)

  def _tag(self, text):
    words = tf.strings.split(sanitize_text(text))
    pieces = pipelines.word_pieces(self.tokenizer, words, self.unk)
    piece_ids, _, _, first_piece = pipelines.align_word_tags(
        pieces, tf.zeros_like(words, dtype=tf.int32))
    token_ids, padding_mask = self.pack_ids(piece_ids)
    first = self.pack_first(tf.cast(first_piece, tf.int32)) > 0
    logits = self._forward({"token_ids": token_ids, "padding_mask": padding_mask})
    piece_tags = decode_word_tags(logits, first, self.tags, self.decoding, trim=True)
    word_tags = tf.ragged.boolean_mask(piece_tags, first)
    num_words = tf.cast(word_tags.row_lengths(), tf.int32)
    kept_words = tf.ragged.boolean_mask(
        words, tf.ragged.range(words.row_lengths()) < tf.cast(num_words, tf.int64)[:, None])
    tag_ids = word_tags.to_tensor(default_value=0)
    types, starts, ends, num_entities = entity_spans(tag_ids, num_words, self.type_of,
                                                     self.begins)
    type_names = tf.constant(list(self.entity_types) + [""])
    return {
        "words": kept_words.to_tensor(default_value=""),
        "tags": tf.ragged.map_flat_values(
            tf.gather, tf.constant(self.tags), word_tags).to_tensor(default_value=""),
        "num_words": num_words,
        "entity_types": tf.gather(type_names, tf.where(types >= 0, types, len(self.entity_types))),
        "entity_starts": starts,
        "entity_ends": ends,
        "num_entities": num_entities,
    }

  def functions(self):
    feature_spec = _text_feature_spec(self.config)
    text_feature = self.config.data.text_feature

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serving_default(text):
      return self._tag(text)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def serve_examples(inputs):
      return self._tag(tf.io.parse_example(inputs, feature_spec)[text_feature])

    return {"serving_default": serving_default, "serve_examples": serve_examples}

  def warmup_inputs(self):
    example = _serialized_example(self.config.data.text_feature, b"John lives in Paris")
    return {"serving_default": {"text": np.array([b"John lives in Paris"], object)},
            "serve_examples": {"inputs": np.array([example], object)}}


MASK_TEXT = "[MASK]"


class MaskedLMSignatures(_Signatures):
  """Text with literal `[MASK]` markers -> the top tokens and probabilities at each mask.

  The text between markers is tokenized as usual and the mask id put between the pieces, so
  `[MASK]` works whatever the tokenizer does with brackets. Masks past the sequence length
  are dropped.
  """

  def __init__(self, model, tokenizer, config):
    super().__init__(model, tokenizer, config)
    self.cls, self.sep, self.pad, self.mask = self._special("cls", "sep", "pad", "mask")
    self.top_predictions = min(int(config.export.top_predictions), model.backbone.vocab_size)
    self.packer = keras_hub.layers.StartEndPacker(
        self.sequence_length, start_value=self.cls, end_value=self.sep, pad_value=self.pad,
        return_padding_mask=True)

  def _fill(self, text):
    segments = tf.strings.split(sanitize_text(text), sep=MASK_TEXT)   # [batch, (segments)]
    pieces = tf.cast(self.tokenizer.tokenize(segments.flat_values), tf.int32)
    if not isinstance(pieces, tf.RaggedTensor):
      pieces = tf.RaggedTensor.from_tensor(pieces)
    masks = tf.RaggedTensor.from_tensor(tf.fill([pieces.nrows(), 1], self.mask))
    with_masks = tf.concat([pieces, masks], axis=1)                    # each segment + [MASK]
    rows = tf.RaggedTensor.from_row_splits(with_masks, segments.row_splits).merge_dims(1, 2)
    rows = rows[:, :-1]                                                # no mask after the last
    token_ids, padding_mask = self.packer(rows)
    is_mask = tf.equal(token_ids, self.mask)
    positions = tf.ragged.boolean_mask(
        tf.broadcast_to(tf.range(self.sequence_length), tf.shape(token_ids)), is_mask)
    num_masks = tf.cast(positions.row_lengths(), tf.int32)
    features = {"token_ids": token_ids, "padding_mask": padding_mask,
                "mask_positions": positions.to_tensor(default_value=0)}
    if self.model.backbone.num_token_types:
      features["token_type_ids"] = tf.zeros_like(token_ids)
    # The head's gather fails on an empty batch (keras take_along_axis): answer it directly.
    probabilities = tf.cond(
        tf.shape(token_ids)[0] > 0,
        lambda: tf.nn.softmax(tf.cast(self._forward(features), tf.float32), axis=-1),
        lambda: tf.zeros([0, 0, self.model.backbone.vocab_size], tf.float32))
    scores, ids = tf.math.top_k(probabilities, k=self.top_predictions)
    valid = (tf.range(tf.shape(ids)[1])[None, :] < num_masks[:, None])[:, :, None]
    vocabulary = tf.constant(self.tokenizer.get_vocabulary())
    ids = tf.where(valid, ids, -1)
    return {"tokens": tf.where(valid, tf.gather(vocabulary, tf.maximum(ids, 0)), ""),
            "token_ids": ids, "scores": tf.where(valid, scores, 0.0), "num_masks": num_masks}

  def functions(self):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serving_default(text):
      return self._fill(text)

    return {"serving_default": serving_default}

  def warmup_inputs(self):
    return {"serving_default": {"text": np.array([b"The [MASK] is red."], object)}}


_SIGNATURES = {
    "causal_lm": CausalLMSignatures,
    "sequence_classification": SequenceClassifierSignatures,
    "token_classification": TokenClassifierSignatures,
    "masked_lm": MaskedLMSignatures,
}


def signatures_for(model, tokenizer, config) -> _Signatures:
  """The served signatures of `config.task.name`."""
  task = config.task.name
  if task not in _SIGNATURES:
    raise ValueError(f"config.task.name={task!r} has no served signatures; exportable: "
                     f"{', '.join(_SIGNATURES)}")
  return _SIGNATURES[task](model, tokenizer, config)

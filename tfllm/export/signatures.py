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
  multi_task               <head>(text) -> what that head's task serves from serving_default
                           serving_default(text) -> every head's outputs as `<head>_<output>`

What a classification or tagging head computes (text -> features as in training, logits ->
outputs) lives in `TextEncoder`/`WordEncoder` and `LabelOutputs`/`TagOutputs`, which the
single-task and the multi-task signatures share.

`docs/serving.md` documents shapes, padding values and REST requests.
"""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

import keras_hub
import numpy as np
import tensorflow as tf

from tfllm.config import ConfigError
from tfllm.data import pipelines
from tfllm.data.tokenizers import special_token_ids
from tfllm.tagging.decoding import decode_word_tags
from tfllm.models import generation
from tfllm.models.config import tag_decoding

TEXT = tf.TensorSpec([None], tf.string)
# Method name that lets TF Serving's Classify API (and Predict) use `serve_examples`.
CLASSIFY_METHOD_NAME = "tensorflow/serving/classify"


def sanitize_text(text):
  """Replaces invalid UTF-8 bytes with U+FFFD, so tokenizers never see malformed input."""
  return tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace")


def label_names(section) -> Tuple[str, ...]:
  """Class or tag names of a task or head section: its `labels`, else `"0" ... "n-1"`."""
  if section.labels:
    return tuple(str(label) for label in section.labels)
  return tuple(str(i) for i in range(section.num_classes))


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
      raise ConfigError(f"config.export.sequence_length={self.sequence_length} is not accepted; "
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

  def _encoder(self, kind):
    """A `TextEncoder` or `WordEncoder` over this tokenizer and sequence length."""
    cls, sep, pad = self._special("cls", "sep", "pad")
    if kind is WordEncoder:
      # Byte-level vocabularies have no unk (every word has bytes); pad stands in, never used.
      return WordEncoder(self.tokenizer, cls, sep, pad, self.special.get("unk", pad),
                         self.sequence_length)
    return TextEncoder(self.tokenizer, cls, sep, pad, self.sequence_length)

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
      raise ConfigError(f"config.export.max_length={self.max_length} is not accepted; use "
                        f"2 ... {limit}, or 0 for the model's max_sequence_length")
    self.stop_token_ids = (self.eos,)
    loop = lambda *args: generation.generate_tokens(  # noqa: E731
        self.model, *args, stop_token_ids=self.stop_token_ids, pad_token_id=self.pad)
    self._loop = _maybe_jit(loop, self.jit_compile)

  def _generate(self, prompt, max_new_tokens, temperature, top_k, top_p, seed):
    batch = tf.shape(prompt)[0:1]
    rows = lambda value, dtype: tf.broadcast_to(tf.cast(value, dtype), batch)  # noqa: E731
    max_new_tokens = rows(max_new_tokens, tf.int32)
    # Training packs documents each followed by eos: a prompt starts like a document does.
    # A long prompt keeps its last tokens, leaving room for max_new_tokens.
    prompt_ids = generation.prompt_token_ids(
        self.tokenizer, sanitize_text(prompt),
        generation.prompt_budget(self.max_length, max_new_tokens), start_token_id=self.eos)
    token_ids, lengths = generation.pack_prompts(prompt_ids, self.max_length, self.pad)
    token_ids, num_generated = self._loop(
        token_ids, lengths, max_new_tokens, rows(temperature, tf.float32),
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


class TextEncoder:
  """Text -> `[CLS] pieces [SEP]` features, as `pipelines.sequence_classification_dataset`
  builds them (what a classification head was trained on); longer texts are truncated.

  Call: sanitized text `[batch]` -> `(features, {})`.
  """

  def __init__(self, tokenizer, cls, sep, pad, sequence_length):
    self.tokenizer = tokenizer
    self.packer = keras_hub.layers.StartEndPacker(
        sequence_length, start_value=cls, end_value=sep, pad_value=pad,
        return_padding_mask=True)

  def __call__(self, text):
    token_ids, padding_mask = self.packer(tf.cast(self.tokenizer.tokenize(text), tf.int32))
    return {"token_ids": token_ids, "padding_mask": padding_mask}, {}


class WordEncoder:
  """Whitespace words -> word pieces -> `[CLS] pieces [SEP]`, as
  `pipelines.token_classification_dataset` builds them (what a tagging head was trained on).

  Call: sanitized text `[batch]` -> `(features, {"words": ragged words, "first": bool
  [batch, sequence_length], True at each word's first piece})`; words past the sequence
  length have no first piece.
  """

  def __init__(self, tokenizer, cls, sep, pad, unk, sequence_length):
    self.tokenizer, self.unk = tokenizer, unk
    self.pack_ids = keras_hub.layers.StartEndPacker(
        sequence_length, start_value=cls, end_value=sep, pad_value=pad,
        return_padding_mask=True)
    # Integer values: StartEndPacker rejects a float 0.0 start/end value (len() of a float).
    self.pack_first = keras_hub.layers.StartEndPacker(sequence_length, start_value=0,
                                                      end_value=0, pad_value=0)

  def __call__(self, text):
    words = tf.strings.split(text)
    pieces = pipelines.word_pieces(self.tokenizer, words, self.unk)
    piece_ids, _, _, first_piece = pipelines.align_word_tags(
        pieces, tf.zeros_like(words, dtype=tf.int32))
    token_ids, padding_mask = self.pack_ids(piece_ids)
    first = self.pack_first(tf.cast(first_piece, tf.int32)) > 0
    return ({"token_ids": token_ids, "padding_mask": padding_mask},
            {"words": words, "first": first})


class LabelOutputs:
  """A classification head's served outputs: `{label, label_id, probabilities}`.

  Call: logits `[batch, num_classes]` and the `TextEncoder`'s context -> outputs.
  """

  encoder = TextEncoder

  def __init__(self, labels: Sequence[str]):
    self.labels = tuple(labels)

  def __call__(self, logits, encoded):
    del encoded  # the label depends on the logits only
    probabilities = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
    label_id = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
    return {"label": tf.gather(tf.constant(self.labels), label_id), "label_id": label_id,
            "probabilities": probabilities}


class TagOutputs:
  """A tagging head's served outputs: one tag a word (its first piece's, decoded as
  `decoding` says) and the entities the tags spell (see `docs/serving.md`).

  Call: logits `[batch, sequence_length, num_tags]` and the `WordEncoder`'s context ->
  `{words, tags, num_words, entity_types, entity_starts, entity_ends, num_entities}`.
  """

  encoder = WordEncoder

  def __init__(self, tags: Sequence[str], decoding: str):
    self.tags = tuple(tags)
    self.decoding = decoding
    self.type_of, self.begins, self.entity_types = tag_spans(self.tags)

  def __call__(self, logits, encoded):
    words, first = encoded["words"], encoded["first"]
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


def head_outputs(section):
  """`LabelOutputs` or `TagOutputs` of a classification or tagging task / head section."""
  task = section.get("task", section.get("name"))
  if task == "sequence_classification":
    return LabelOutputs(label_names(section))
  if task == "token_classification":
    return TagOutputs(label_names(section), tag_decoding(section))
  raise ValueError(f"a {task} head has no served signature here; served heads: "
                   "sequence_classification, token_classification")


class _HeadSignatures(_Signatures):
  """A classification or tagging task: encoder -> model -> `head_outputs(config.task)`."""

  def __init__(self, model, tokenizer, config):
    super().__init__(model, tokenizer, config)
    self.outputs = head_outputs(config.task)
    self.encoder = self._encoder(self.outputs.encoder)

  def _serve(self, text):
    features, encoded = self.encoder(sanitize_text(text))
    return self.outputs(self._forward(features), encoded)


class SequenceClassifierSignatures(_HeadSignatures):
  """`[CLS] text [SEP]` as in training (`tfllm.data.pipelines`), then softmax over labels."""

  def functions(self):
    labels = tf.constant(self.outputs.labels)
    feature_spec = _text_feature_spec(self.config)
    text_feature = self.config.data.text_feature

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serving_default(text):
      return self._serve(text)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def serve_examples(inputs):
      text = tf.io.parse_example(inputs, feature_spec)[text_feature]
      probabilities = self._serve(text)["probabilities"]
      classes = tf.tile(labels[None, :], [tf.shape(probabilities)[0], 1])
      return {"classes": classes, "scores": probabilities}

    return {"serving_default": serving_default, "serve_examples": serve_examples}

  def method_names(self):
    return {"serve_examples": CLASSIFY_METHOD_NAME}

  def warmup_inputs(self):
    example = _serialized_example(self.config.data.text_feature, b"A fine film.")
    return {"serving_default": {"text": np.array([b"A fine film."], object)},
            "serve_examples": {"inputs": np.array([example], object)}}


class TokenClassifierSignatures(_HeadSignatures):
  """Whitespace words -> word pieces (as in training) -> one tag a word (its first piece's,
  decoded as `config.task.decoding` says) and the entities the tags spell. Words past the
  sequence length are dropped."""

  def functions(self):
    feature_spec = _text_feature_spec(self.config)
    text_feature = self.config.data.text_feature

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serving_default(text):
      return self._serve(text)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def serve_examples(inputs):
      return self._serve(tf.io.parse_example(inputs, feature_spec)[text_feature])

    return {"serving_default": serving_default, "serve_examples": serve_examples}

  def warmup_inputs(self):
    example = _serialized_example(self.config.data.text_feature, b"John lives in Paris")
    return {"serving_default": {"text": np.array([b"John lives in Paris"], object)},
            "serve_examples": {"inputs": np.array([example], object)}}


class MultiTaskSignatures(_Signatures):
  """One SavedModel for every head of a `MultiTaskModel`.

  `<head name>(text)` returns what that head's single-task `serving_default` returns
  (`LabelOutputs` or `TagOutputs`, with the head's labels and `decoding`), running the
  backbone and that head only. `serving_default(text)` returns every head's outputs, each
  key prefixed by `<head name>_`; heads that read the same encoding (classification heads:
  the whole text; tagging heads: whitespace words, as each was trained) share one backbone
  pass.
  """

  def __init__(self, model, tokenizer, config):
    super().__init__(model, tokenizer, config)
    self.heads = {}
    for name, head in config.task.heads.items():
      if not name.isidentifier() or name == "serving_default":
        raise ConfigError(f"config.task.heads.{name}: a head's name is its signature's name; "
                          "use a Python identifier other than 'serving_default'")
      try:
        self.heads[name] = head_outputs(head)
      except ValueError as error:
        raise ConfigError(f"config.task.heads.{name}: {error}") from None
    self.encoders = {kind: self._encoder(kind)
                     for kind in dict.fromkeys(o.encoder for o in self.heads.values())}
    self._forwards = {}

  def _forward_heads(self, names: Tuple[str, ...]):
    """The backbone once, then the heads `names` on its output (XLA or not, one function per
    set of heads)."""
    if names not in self._forwards:
      def forward(features):
        hidden = self.model.backbone(features, training=False)
        return {name: self.model.heads[name](hidden, features, training=False)
                for name in names}
      self._forwards[names] = _maybe_jit(forward, self.jit_compile)
    return self._forwards[names]

  def _serve(self, text, names: Sequence[str]):
    """`{head: outputs}` of the heads `names`, one backbone pass per encoding."""
    text = sanitize_text(text)
    outputs = {}
    for kind, encoder in self.encoders.items():
      group = tuple(name for name in names if self.heads[name].encoder is kind)
      if not group:
        continue
      features, encoded = encoder(text)
      logits = self._forward_heads(group)(features)
      outputs.update({name: self.heads[name](logits[name], encoded) for name in group})
    return outputs

  def functions(self):
    text_spec = tf.TensorSpec([None], tf.string, name="text")

    def one_head(name):
      @tf.function(input_signature=[text_spec])
      def serve_head(text):
        return self._serve(text, [name])[name]
      return serve_head

    @tf.function(input_signature=[text_spec])
    def serving_default(text):
      outputs = {}
      for name, head in self._serve(text, list(self.heads)).items():
        for key, value in head.items():
          if f"{name}_{key}" in outputs:
            raise ConfigError(f"heads' outputs meet in serving_default's key {name}_{key}; "
                              "rename a head in config.task.heads")
          outputs[f"{name}_{key}"] = value
      return outputs

    functions = {"serving_default": serving_default}
    functions.update({name: one_head(name) for name in self.heads})
    return functions

  def warmup_inputs(self):
    text = {"text": np.array([b"John lives in Paris"], object)}
    return {name: dict(text) for name in ["serving_default", *self.heads]}


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
    # Token names by id (get_vocabulary's type differs between tokenizers).
    self.vocabulary = [tokenizer.id_to_token(i) for i in range(tokenizer.vocabulary_size())]
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
    vocabulary = tf.constant(self.vocabulary)
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
    "multi_task": MultiTaskSignatures,
}


def signatures_for(model, tokenizer, config) -> _Signatures:
  """The served signatures of `config.task.name`."""
  task = config.task.name
  if task not in _SIGNATURES:
    raise ConfigError(f"config.task.name={task!r} has no served signatures; exportable: "
                      f"{', '.join(_SIGNATURES)}")
  return _SIGNATURES[task](model, tokenizer, config)

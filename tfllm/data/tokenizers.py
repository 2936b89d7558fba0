"""Tokenizers: train, load, save and reload keras-hub tokenizers.

Three kinds, all running as TF / TF-Text ops (inside tf.data and inside a SavedModel):
  word_piece      `keras_hub.tokenizers.WordPieceTokenizer`; trained with keras-hub's
                  `compute_word_piece_vocabulary`, or a BERT `vocab.txt`.
  sentence_piece  `keras_hub.tokenizers.SentencePieceTokenizer`; trained with SentencePiece
                  (keras-hub's settings plus a `[MASK]` control symbol), or a `.model` file.
  byte            `ByteLevelTokenizer`: UTF-8 bytes (ids 0-255) plus special tokens; no
                  training.

Special tokens are explicit: `special_token_ids(tokenizer)` maps the roles pad, unk, bos,
eos, cls, sep and mask to ids (a role a vocabulary lacks is absent). A trained WordPiece
vocabulary starts with `[PAD] [UNK] [CLS] [SEP] [MASK]`; its bos/eos are `[CLS]`/`[SEP]`.

A saved tokenizer is a directory: `tokenizer.json` (kind and options) and the vocabulary
asset (`vocabulary.txt` or `sentencepiece.model`), written atomically.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Dict, Optional, Tuple

import keras
import keras_hub
import tensorflow as tf

from tfllm import model_dir as model_dir_lib
from tfllm.data import sources

WORD_PIECE_RESERVED = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_CONFIG_FILE = "tokenizer.json"
_ASSETS = {"word_piece": "vocabulary.txt", "sentence_piece": "sentencepiece.model"}
_BYTE_SPECIAL = ("[PAD]", "[CLS]", "[SEP]", "[MASK]")
# keras-hub's WordPiece learner (TF-Text's) meets a vocabulary size within 5% (slack_ratio)
# when the corpus has enough pieces; below half of the size asked for is an error.
_WORD_PIECE_SLACK = 0.95
_WORD_PIECE_MIN_FRACTION = 0.5


@keras.saving.register_keras_serializable(package="tfllm")
class ByteLevelTokenizer(keras_hub.tokenizers.ByteTokenizer):
  """UTF-8 bytes (ids 0-255) followed by special tokens `[PAD] [CLS] [SEP] [MASK]` (256-259).

  keras-hub's `ByteTokenizer` has no special tokens; models need distinct pad, document
  separator and mask ids, so they sit after the 256 byte values. `detokenize` drops them.
  """

  def __init__(self, **kwargs):
    kwargs.setdefault("lowercase", False)
    super().__init__(**kwargs)

  def vocabulary_size(self) -> int:
    return 256 + len(_BYTE_SPECIAL)

  def tokenize(self, inputs):
    # keras-hub's graph path squeezes `decode_raw`'s `[bytes, 1]`, which fails when a batch
    # holds no byte at all (only empty strings, or no string: a served request can be either).
    # One one-byte string more, dropped after tokenizing, keeps that dimension non-empty.
    if not (tf.inside_function() and tf.is_tensor(inputs) and inputs.dtype == tf.string
            and inputs.shape.rank in (0, 1)):
      return super().tokenize(inputs)
    texts = tf.concat([tf.reshape(inputs, [-1]), tf.constant([" "])], axis=0)
    tokens = super().tokenize(texts)[:-1]
    return tokens[0] if inputs.shape.rank == 0 else tokens

  def id_to_token(self, id: int) -> str:  # pylint: disable=redefined-builtin
    if 256 <= id < self.vocabulary_size():
      return _BYTE_SPECIAL[id - 256]
    return super().id_to_token(id)

  def token_to_id(self, token: str) -> int:
    if token in _BYTE_SPECIAL:
      return 256 + _BYTE_SPECIAL.index(token)
    raise ValueError(f"token {token!r} is not a special token of ByteLevelTokenizer; "
                     f"byte tokens are byte values, specials: {', '.join(_BYTE_SPECIAL)}")

  def detokenize(self, inputs):
    inputs = tf.convert_to_tensor(inputs) if not isinstance(inputs, tf.RaggedTensor) else inputs
    if isinstance(inputs, tf.RaggedTensor):
      kept = tf.ragged.boolean_mask(inputs, inputs < 256)
    elif inputs.shape.rank == 1:
      kept = tf.boolean_mask(inputs, inputs < 256)
    else:
      kept = tf.ragged.boolean_mask(inputs, inputs < 256)
    return super().detokenize(kept)


def special_token_ids(tokenizer) -> Dict[str, int]:
  """Ids of the special roles the tokenizer's vocabulary holds.

  Returns:
    dict with keys among `pad, unk, bos, eos, cls, sep, mask`. WordPiece and byte-level
    vocabularies use `[CLS]`/`[SEP]` as bos/eos; SentencePiece models use `<s>`/`</s>` as
    cls/sep.
  """
  if isinstance(tokenizer, ByteLevelTokenizer):
    pad, cls, sep, mask = (256 + i for i in range(len(_BYTE_SPECIAL)))
    return dict(pad=pad, cls=cls, sep=sep, bos=cls, eos=sep, mask=mask)
  if isinstance(tokenizer, keras_hub.tokenizers.SentencePieceTokenizer):
    import sentencepiece
    processor = sentencepiece.SentencePieceProcessor(model_proto=sentence_piece_proto(tokenizer))
    ids = dict(unk=processor.unk_id(), bos=processor.bos_id(), eos=processor.eos_id(),
               pad=processor.pad_id())
    mask = processor.piece_to_id("[MASK]")
    if mask != processor.unk_id():
      ids["mask"] = mask
    ids = {role: i for role, i in ids.items() if i >= 0}
    if "bos" in ids:
      ids["cls"] = ids["bos"]
    if "eos" in ids:
      ids["sep"] = ids["eos"]
    return ids
  if isinstance(tokenizer, keras_hub.tokenizers.WordPieceTokenizer):
    vocabulary = {token: i for i, token in enumerate(tokenizer.get_vocabulary())}
    ids = {}
    for role, token in (("pad", "[PAD]"), ("unk", "[UNK]"), ("cls", "[CLS]"), ("sep", "[SEP]"),
                        ("mask", "[MASK]")):
      if token in vocabulary:
        ids[role] = vocabulary[token]
    if "cls" in ids:
      ids["bos"] = ids["cls"]
    if "sep" in ids:
      ids["eos"] = ids["sep"]
    return ids
  raise ValueError(f"unsupported tokenizer {type(tokenizer).__name__}; accepted: "
                   "WordPieceTokenizer, SentencePieceTokenizer, ByteLevelTokenizer")


def required_special_ids(tokenizer, *roles: str, purpose: str = "this task") -> Tuple[int, ...]:
  """The ids of the special `roles` (e.g. `"cls", "sep"`), in that order.

  Raises:
    ValueError: the tokenizer's vocabulary lacks a role; the message names `purpose`
      (what needs the tokens, e.g. "serving masked_lm").
  """
  ids = special_token_ids(tokenizer)
  missing = [role for role in roles if role not in ids]
  if missing:
    raise ValueError(f"tokenizer {type(tokenizer).__name__} has no {', '.join(missing)} token; "
                     f"{purpose} needs {', '.join(roles)} (it has: {', '.join(sorted(ids))})")
  return tuple(ids[role] for role in roles)


def sentence_piece_proto(tokenizer) -> bytes:
  """The serialized SentencePiece model of a `keras_hub.tokenizers.SentencePieceTokenizer`
  (its `proto` as bytes, read through `tf.io.gfile` when it is a path)."""
  proto = tokenizer.proto
  if isinstance(proto, str):
    with tf.io.gfile.GFile(proto, "rb") as f:
      proto = f.read()
  return bytes(proto)


def _kind(tokenizer) -> str:
  if isinstance(tokenizer, ByteLevelTokenizer):
    return "byte"
  if isinstance(tokenizer, keras_hub.tokenizers.SentencePieceTokenizer):
    return "sentence_piece"
  if isinstance(tokenizer, keras_hub.tokenizers.WordPieceTokenizer):
    return "word_piece"
  raise ValueError(f"cannot save tokenizer {type(tokenizer).__name__}; accepted: "
                   "WordPieceTokenizer, SentencePieceTokenizer, ByteLevelTokenizer")


def _write_tokenizer(tokenizer, directory: str):
  kind = _kind(tokenizer)
  options = {"type": kind, "lowercase": bool(getattr(tokenizer, "lowercase", False))}
  if kind == "word_piece":
    options["asset"] = _ASSETS[kind]
    options["strip_accents"] = bool(tokenizer.strip_accents)
    with tf.io.gfile.GFile(os.path.join(directory, _ASSETS[kind]), "w") as f:
      f.write("\n".join(tokenizer.get_vocabulary()) + "\n")
  elif kind == "sentence_piece":
    options["asset"] = _ASSETS[kind]
    with tf.io.gfile.GFile(os.path.join(directory, _ASSETS[kind]), "wb") as f:
      f.write(sentence_piece_proto(tokenizer))
  options["special_token_ids"] = special_token_ids(tokenizer)
  options["vocabulary_size"] = int(tokenizer.vocabulary_size())
  with tf.io.gfile.GFile(os.path.join(directory, _CONFIG_FILE), "w") as f:
    f.write(json.dumps(options, indent=2, sort_keys=True))


def save_tokenizer(tokenizer, directory: str) -> str:
  """Writes `tokenizer` to `directory` (any TF filesystem) through a staged directory.

  A tokenizer already in `directory` is replaced only once the new one is complete;
  `tokenizer.json`, which `is_saved_tokenizer` looks for, arrives last
  (`tfllm.model_dir.publish_directory`).

  Returns:
    `directory`.
  """
  directory = os.fspath(directory).rstrip("/")
  staging = model_dir_lib.staging_path(os.path.dirname(directory),
                                       os.path.basename(directory))
  tf.io.gfile.makedirs(staging)
  try:
    _write_tokenizer(tokenizer, staging)
    model_dir_lib.publish_directory(staging, directory, last=(_CONFIG_FILE,))
  finally:
    model_dir_lib.remove(staging)
  return directory


def is_saved_tokenizer(directory: str) -> bool:
  return bool(directory) and tf.io.gfile.exists(os.path.join(directory, _CONFIG_FILE))


def load_tokenizer(directory: str):
  """Loads a tokenizer written by `save_tokenizer`.

  Raises:
    ValueError: `directory` holds no saved tokenizer or an unknown kind.
  """
  path = os.path.join(directory, _CONFIG_FILE)
  if not tf.io.gfile.exists(path):
    raise ValueError(f"{directory!r} holds no saved tokenizer (no {_CONFIG_FILE})")
  with tf.io.gfile.GFile(path) as f:
    options = json.loads(f.read())
  kind = options.get("type")
  if kind == "byte":
    return ByteLevelTokenizer(lowercase=options.get("lowercase", False))
  if kind in _ASSETS:
    return load_vocabulary(os.path.join(directory, options["asset"]),
                           lowercase=options.get("lowercase", False),
                           strip_accents=options.get("strip_accents", False))
  raise ValueError(f"{path}: unknown tokenizer type {kind!r}; accepted: byte, word_piece, "
                   "sentence_piece")


def load_vocabulary(path: str, lowercase: bool = False, strip_accents: bool = False):
  """A tokenizer from an existing vocabulary file.

  Args:
    path: a WordPiece vocabulary (one token a line, e.g. BERT's `vocab.txt`) or a
      SentencePiece model (`.model` / `.spm`; recognized by content, not name).
    lowercase: lowercase text first (WordPiece; e.g. True for uncased BERT).
    strip_accents: strip accents first (WordPiece).
  """
  if not tf.io.gfile.exists(path):
    raise ValueError(f"config.tokenizer.vocabulary={path!r} does not exist")
  with tf.io.gfile.GFile(path, "rb") as f:
    data = f.read()
  if not data:
    raise ValueError(f"config.tokenizer.vocabulary={path!r} is empty")
  if _is_sentence_piece_model(data):
    return keras_hub.tokenizers.SentencePieceTokenizer(proto=data)
  try:
    tokens = data.decode("utf-8").splitlines()
  except UnicodeDecodeError as error:
    raise ValueError(f"config.tokenizer.vocabulary={path!r} is neither a SentencePiece model "
                     "nor a UTF-8 WordPiece vocabulary") from error
  oov = "[UNK]" if "[UNK]" in tokens else tokens[0]
  return keras_hub.tokenizers.WordPieceTokenizer(
      vocabulary=tokens, lowercase=lowercase, strip_accents=strip_accents, oov_token=oov)


def _is_sentence_piece_model(data: bytes) -> bool:
  import sentencepiece
  try:
    processor = sentencepiece.SentencePieceProcessor(model_proto=data)
  except (RuntimeError, TypeError, OSError):
    return False
  return processor.get_piece_size() > 0


def _training_lines(config) -> tf.data.Dataset:
  """Non-empty lines of the train split's text: what vocabularies are trained on."""
  documents = sources.text_documents(config.data, config.data.train_split)
  lines = documents.map(lambda text: tf.strings.split(text, "\n")).unbatch()
  lines = lines.map(tf.strings.strip).filter(lambda line: tf.strings.length(line) > 0)
  if config.tokenizer.max_training_lines:
    lines = lines.take(config.tokenizer.max_training_lines)
  return lines


def train_word_piece(lines: tf.data.Dataset, vocab_size: int, lowercase: bool = False):
  """WordPiece tokenizer trained on `lines`, about `vocab_size` tokens (reserved included).

  The learner hits the size within 5% when the corpus has enough pieces seen >= 10 times; with
  fewer it returns what there is (a warning), and below half of `vocab_size` it is an error.
  `tokenizer.vocabulary_size()` is the exact count.
  """
  if vocab_size <= len(WORD_PIECE_RESERVED):
    raise ValueError(f"config.tokenizer.vocab_size={vocab_size} leaves no room beside the "
                     f"{len(WORD_PIECE_RESERVED)} reserved tokens; accepted: > "
                     f"{len(WORD_PIECE_RESERVED)}")
  vocabulary = keras_hub.tokenizers.compute_word_piece_vocabulary(
      lines.batch(1000), vocab_size, lowercase=lowercase,
      reserved_tokens=list(WORD_PIECE_RESERVED))
  if len(vocabulary) <= len(WORD_PIECE_RESERVED):
    raise ValueError("empty corpus: no text to train a WordPiece vocabulary on")
  # The learner searches a count threshold and lands within its 5% slack of the target, but
  # keeps only pieces seen >= 10 times: a smaller corpus yields fewer. Somewhat fewer is fine
  # (the model takes `vocabulary_size()`); far fewer means the size asked for is unrealistic.
  if len(vocabulary) < _WORD_PIECE_MIN_FRACTION * vocab_size:
    raise ValueError(f"config.tokenizer.vocab_size={vocab_size} is larger than this corpus "
                     f"supports: it yields only {len(vocabulary)} WordPiece tokens (pieces seen "
                     f">= 10 times); set vocab_size <= {len(vocabulary)}")
  if len(vocabulary) < _WORD_PIECE_SLACK * vocab_size:
    logging.warning("config.tokenizer.vocab_size=%d: this corpus yields only %d WordPiece "
                    "tokens (pieces seen >= 10 times); using %d", vocab_size, len(vocabulary),
                    len(vocabulary))
  return keras_hub.tokenizers.WordPieceTokenizer(vocabulary=vocabulary, lowercase=lowercase,
                                                 oov_token="[UNK]")


def train_sentence_piece(lines: tf.data.Dataset, vocab_size: int, lowercase: bool = False,
                         model_type: str = "unigram"):
  """SentencePiece tokenizer trained on `lines`.

  keras-hub's `compute_sentence_piece_proto` fixes pad=0, unk=1, bos=2, eos=3 but cannot
  reserve a mask id, which masked LM needs; this calls the SentencePiece trainer with the same
  settings plus `[MASK]` as a control symbol (id 4, never produced from text).
  """
  import io
  import sentencepiece
  writer = io.BytesIO()
  try:
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=lines.as_numpy_iterator(), model_writer=writer,
        vocab_size=vocab_size, model_type=model_type,
        normalization_rule_name="nmt_nfkc_cf" if lowercase else "nmt_nfkc",
        pad_id=0, unk_id=1, bos_id=2, eos_id=3, control_symbols=["[MASK]"],
        minloglevel=2)
  except RuntimeError as error:
    message = str(error)
    if "Vocabulary size too high" in message or "vocab_size" in message:
      raise ValueError(f"config.tokenizer.vocab_size={vocab_size} is larger than this corpus "
                       f"supports ({message.strip()})") from error
    if "empty" in message.lower() or "no sentence" in message.lower():
      raise ValueError(f"empty corpus: cannot train SentencePiece ({message.strip()})") from error
    raise
  return keras_hub.tokenizers.SentencePieceTokenizer(proto=writer.getvalue())


def train_tokenizer(config):
  """A tokenizer of kind `config.tokenizer.type` trained on `config.data`'s train split."""
  kind = config.tokenizer.type
  if kind == "byte":
    return ByteLevelTokenizer(lowercase=config.tokenizer.lowercase)
  lines = _training_lines(config)
  logging.info("training a %s tokenizer (vocab %d) on split %r of %r", kind,
               config.tokenizer.vocab_size, config.data.train_split, config.data.dataset)
  if kind == "word_piece":
    return train_word_piece(lines, config.tokenizer.vocab_size, config.tokenizer.lowercase)
  if kind == "sentence_piece":
    return train_sentence_piece(lines, config.tokenizer.vocab_size, config.tokenizer.lowercase,
                                config.tokenizer.sentence_piece_model)
  raise ValueError(f"config.tokenizer.type={kind!r} is not accepted; use one of: "
                   "word_piece, sentence_piece, byte")


def get_tokenizer(config, model_dir: Optional[str] = None):
  """The job's tokenizer: saved with the model, else the configured vocabulary, else trained.

  Order: `model_dir/tokenizer/` when it holds a saved tokenizer; else
  `config.tokenizer.vocabulary` when it names a file; else one trained on the train split
  (`config.tokenizer.type`). When `model_dir` is given, a tokenizer not loaded from it is
  saved there, so later runs (resume, export) reload the identical vocabulary.

  Args:
    config: the full config (`tokenizer` and `data` sections are read).
    model_dir: the model directory, or None.

  Returns:
    A keras-hub tokenizer; `tokenizer.vocabulary_size()` is the model's vocab size.
  """
  saved = model_dir_lib.tokenizer_dir(model_dir) if model_dir else None
  if saved and is_saved_tokenizer(saved):
    return load_tokenizer(saved)
  if config.tokenizer.vocabulary:
    tokenizer = load_vocabulary(config.tokenizer.vocabulary, lowercase=config.tokenizer.lowercase)
  else:
    tokenizer = train_tokenizer(config)
  if saved:
    save_tokenizer(tokenizer, saved)
  return tokenizer

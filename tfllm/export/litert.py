"""LiteRT (TFLite) export of classifiers for edge devices, and its Python runner.

The `.tflite` model takes token ids, not text: TF-Text's WordPiece op
(`FastWordpieceTokenizeWithOffsets`) is neither a LiteRT builtin nor a flex
(`SELECT_TF_OPS`) op, so a string-in graph does not convert (`ERROR_NEEDS_CUSTOM_OPS`;
docs/stack.md). Tokenization is the documented preprocessing step instead: the tokenizer
ships beside the model and `LiteRTClassifier` runs the same encoder as the served
SavedModel (`tfllm.export.heads.TextEncoder` / `WordEncoder`).

Layout of `<export_dir>/<version>/`:
  model.tflite   inputs `token_ids`, `padding_mask` (int32 `[batch, sequence_length]`, mask
                 1 at real tokens); output `probabilities` float32 `[batch, num_classes]`
                 (sequence classification) or `log_probabilities` float32
                 `[batch, sequence_length, num_tags]` (token classification; a CRF tagger's
                 is `emissions`, its transition scores are in litert.json)
  tokenizer/     the training tokenizer (`tfllm.data.tokenizers.save_tokenizer`)
  litert.json    task, labels, decoding, sequence length, special ids, quantization, the
                 training data's text and label feature names

Quantization (`config.export.litert_quantize`): `none` (float32), `dynamic_int8` (int8
weights, float activations), `int8` (the dense layers' matmuls with int8 weights and int8
activations calibrated on `config.export.litert_representative_examples` examples of the
training split through the same preprocessing, and int8 embedding lookups and GELU;
attention scores, softmax, layer norm, residual adds and pooling stay float:
`FLOAT_OPS_IN_INT8`).
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Dict, Iterable, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from tfllm import config as config_lib
from tfllm import model_dir as model_dir_lib
from tfllm.data import pipelines, tokenizers
from tfllm.export import saved_model
from tfllm.export import heads
from tfllm.export import signatures as signatures_lib
from tfllm.models.config import tag_decoding
from tfllm.tagging.scores import TagScores

QUANTIZATIONS = ("none", "dynamic_int8", "int8")
TASKS = ("sequence_classification", "token_classification")
MODEL_FILE = "model.tflite"
INFO_FILE = "litert.json"
INPUTS = ("token_ids", "padding_mask")
# Ops `int8` keeps in float32, so that it quantizes the dense layers' matmuls (weights and
# activations), the embedding lookups and GELU, and nothing int8 cannot carry
# (docs/stack.md, LiteRT; the choice was measured on validation, docs/finetuning.md):
# - attention scores beside the -1e9 of masked keys (BATCH_MATMUL, the RESHAPE after it,
#   SELECT_V2, SOFTMAX): as int8 their step is 3.9e6, so all real scores read alike and
#   attention turns uniform (MiniLM sentiment: validation accuracy 0.51);
# - mean pooling's count and division (SUM, MAXIMUM, DIV): the count saturates at the
#   longest calibration text, and LiteRT's quantized DIV refuses a raw int8 0 divisor;
# - layer norm (MEAN, SQUARED_DIFFERENCE, RSQRT) and the residual stream's elementwise ADD
#   and MUL, whose few large features leave the others a handful of int8 steps.
FLOAT_OPS_IN_INT8 = ("BATCH_MATMUL", "RESHAPE", "SELECT_V2", "SOFTMAX", "SUM", "MAXIMUM",
                     "DIV", "MEAN", "SQUARED_DIFFERENCE", "RSQRT", "ADD", "MUL")


def _output_name(task: str, crf: bool = False) -> str:
  if task == "sequence_classification":
    return "probabilities"
  return "emissions" if crf else "log_probabilities"


def model_function(model, task: str, sequence_length: int):
  """`tf.function(token_ids, padding_mask) -> {probabilities | log_probabilities |
  emissions}` over int32 `[batch, sequence_length]` inputs; softmax in float32; a CRF
  tagger's emissions as they are (its transitions are constants, in litert.json)."""
  spec = [tf.TensorSpec([None, sequence_length], tf.int32, name) for name in INPUTS]

  @tf.function(input_signature=spec)
  def classify(token_ids, padding_mask):
    outputs = model({"token_ids": token_ids, "padding_mask": tf.cast(padding_mask, tf.bool)},
                    training=False)
    if isinstance(outputs, TagScores):
      return {"emissions": tf.cast(outputs.emissions, tf.float32)}
    logits = tf.cast(outputs, tf.float32)
    if task == "sequence_classification":
      return {"probabilities": tf.nn.softmax(logits, axis=-1)}
    return {"log_probabilities": tf.nn.log_softmax(logits, axis=-1)}

  return classify


def convert(model, task: str, sequence_length: int, quantize: str = "none",
            representative: Optional[Iterable[Dict[str, np.ndarray]]] = None) -> bytes:
  """The LiteRT flatbuffer of `model_function(...)`, quantized as `quantize` says.

  The function goes through a SavedModel first: converting the concrete function directly
  leaves Keras 3's variables as LiteRT resource variables that read as garbage
  (docs/stack.md).

  Args:
    representative: for `int8`: dicts `{token_ids, padding_mask}` of int32 `[1, seq]`.
  """
  if quantize not in QUANTIZATIONS:
    raise config_lib.ConfigError(f"config.export.litert_quantize={quantize!r} is not "
                                 f"accepted; accepted: {', '.join(QUANTIZATIONS)}")
  function = model_function(model, task, sequence_length)
  with tempfile.TemporaryDirectory(prefix="tfllm-litert-") as scratch:
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", function)
    archive.write_out(scratch, verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(scratch)
    if quantize != "none":
      converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "int8":
      if representative is None:
        raise ValueError("litert_quantize=int8 needs representative examples")
      examples = list(representative)
      converter.representative_dataset = lambda: iter(examples)
      converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                             tf.lite.OpsSet.TFLITE_BUILTINS]
      # The quantization debugger is the converter's public way to leave named ops float
      # (it also builds an instrumented model that is discarded: docs/stack.md, LiteRT).
      selective = tf.lite.experimental.QuantizationDebugger(
          converter=converter, debug_dataset=lambda: iter(examples),
          debug_options=tf.lite.experimental.QuantizationDebugOptions(
              denylisted_ops=list(FLOAT_OPS_IN_INT8)))
      return selective.get_nondebug_quantized_model()
    return converter.convert()


def representative_examples(config, tokenizer, num_examples: int):
  """`num_examples` examples of `config.data.train_split`, preprocessed as in training and
  padded to the export's sequence length, as `{token_ids, padding_mask}` int32 `[1, seq]`."""
  length = int(config.export.sequence_length or config.data.sequence_length)
  pad = tokenizers.special_token_ids(tokenizer).get("pad", 0)
  dataset = pipelines.make_dataset(config, config.data.train_split, tokenizer, training=False)
  examples = []
  for features, _, weights in dataset:
    ids = features["token_ids"].numpy()
    mask = features["padding_mask"].numpy()
    keep = np.asarray(tf.nest.flatten(weights)[0]).reshape(len(ids), -1).max(axis=1) > 0
    for row in np.flatnonzero(keep):
      padded_ids = np.full([1, length], pad, np.int32)
      padded_mask = np.zeros([1, length], np.int32)
      n = min(length, ids.shape[1])
      padded_ids[0, :n], padded_mask[0, :n] = ids[row, :n], mask[row, :n]
      examples.append({"token_ids": padded_ids, "padding_mask": padded_mask})
      if len(examples) == num_examples:
        return examples
  if not examples:
    raise config_lib.ConfigError(f"config.data.train_split={config.data.train_split!r} gave "
                                 "no example to calibrate litert_quantize=int8 on")
  return examples


def export_litert(model, tokenizer, config, export_dir: str, version: Optional[int] = None,
                  overwrite: bool = False, representative=None) -> str:
  """Writes `<export_dir>/<version>/` (see the module docstring) through a staged directory.

  Args:
    representative: for `litert_quantize=int8`: examples as `convert` takes; None reads
      `representative_examples` from the training split.

  Returns:
    The version's path.
  """
  config_lib.validate(config)
  task = config.task.name
  if task not in TASKS:
    raise config_lib.ConfigError(f"config.export.format='litert' exports {', '.join(TASKS)}; "
                                 f"config.task.name={task!r} is not accepted")
  quantize = config.export.litert_quantize
  serving = signatures_lib.signatures_for(model, tokenizer, config)  # checks lengths, ids
  length = serving.sequence_length
  if quantize == "int8" and representative is None:
    representative = representative_examples(config, tokenizer,
                                             config.export.litert_representative_examples)
  export_dir = os.fspath(export_dir).rstrip("/")
  if version is None:
    version = saved_model.next_version(export_dir)
  target = os.path.join(export_dir, str(version))
  if tf.io.gfile.exists(target) and not overwrite:
    raise saved_model.ExportError(f"{target} already exists; choose another version or pass "
                                  "overwrite")
  flatbuffer = convert(model, task, length, quantize, representative)
  special = tokenizers.special_token_ids(tokenizer)
  decoding = tag_decoding(config.task) if task == "token_classification" else ""
  crf = _crf_scores(model) if decoding == "crf" else {}
  info = dict(task=task, labels=list(heads.label_names(config.task)), decoding=decoding,
              **crf, sequence_length=length, quantize=quantize, inputs=list(INPUTS),
              output=_output_name(task, bool(crf)),
              vocabulary_size=int(tokenizer.vocabulary_size()),
              special_token_ids={k: int(v) for k, v in special.items()},
              # What `tfllm-predict --litert --input=tfds:...` reads by default.
              text_feature=config.data.text_feature, label_feature=config.data.label_feature)
  tf.io.gfile.makedirs(export_dir)
  staged = model_dir_lib.staging_path(export_dir, str(version))
  try:
    tf.io.gfile.makedirs(staged)
    with tf.io.gfile.GFile(os.path.join(staged, MODEL_FILE), "wb") as f:
      f.write(flatbuffer)
    tokenizers.save_tokenizer(tokenizer, os.path.join(staged, "tokenizer"))
    with tf.io.gfile.GFile(os.path.join(staged, INFO_FILE), "w") as f:
      f.write(json.dumps(info, indent=2))
    model_dir_lib.publish_directory(staged, target, last=(MODEL_FILE,))
  finally:
    model_dir_lib.remove(staged)
  return target


def _crf_scores(model) -> Dict[str, list]:
  """A CRF tagger's learned `crf_transitions` and `crf_start`, as lists for litert.json."""
  head = model.head
  return {"crf_transitions": np.asarray(head.transitions.numpy(), np.float64).tolist(),
          "crf_start": np.asarray(head.start.numpy(), np.float64).tolist()}


class LiteRTClassifier:
  """Runs an `export_litert` version with `tf.lite.Interpreter`: text -> the same outputs as
  the SavedModel's `serving_default` (`{label, label_id, probabilities}` or `{words, tags,
  num_words, entity_*}`), tokenized in Python by the shipped tokenizer.

  Args:
    path: the version directory.
    num_threads: interpreter threads (None: LiteRT's default).

  Example:

    classifier = LiteRTClassifier("/tmp/litert/sentiment/1")
    classifier(["a fine film"])["label"]          # -> [b"positive"]
    classifier.run_ids(token_ids, padding_mask)   # the raw model output
  """

  def __init__(self, path: str, num_threads: Optional[int] = None):
    with tf.io.gfile.GFile(os.path.join(path, INFO_FILE)) as f:
      self.info = json.loads(f.read())
    with tf.io.gfile.GFile(os.path.join(path, MODEL_FILE), "rb") as f:
      self.interpreter = tf.lite.Interpreter(model_content=f.read(), num_threads=num_threads)
    self.runner = self.interpreter.get_signature_runner()
    self.tokenizer = tokenizers.load_tokenizer(os.path.join(path, "tokenizer"))
    self.sequence_length = int(self.info["sequence_length"])
    if self.info["task"] == "sequence_classification":
      self.outputs = heads.LabelOutputs(self.info["labels"])
    else:
      self.outputs = heads.TagOutputs(self.info["labels"], self.info["decoding"])
    # The served encoder over the exported tokenizer (its special ids are the info file's).
    self.encoder = self.outputs.encoder(self.tokenizer, self.sequence_length)
    # In a graph, as in serving (eager keras-hub tokenizers return Python lists).
    self._encode = tf.function(lambda text: self.encoder(heads.sanitize_text(text)))
    # Decoding too: run eagerly, the tagger's op-by-op Viterbi and word alignment cost more
    # than the interpreter at batch 1 (docs/finetuning.md). After a second batch size, one
    # shape-generic trace serves them all.
    self._decode = tf.function(self._outputs, reduce_retracing=True)

  def encode(self, texts: Sequence):
    """The preprocessing step: strings -> (`{token_ids, padding_mask}` int32 NumPy
    `[batch, sequence_length]`, the encoder's context for the outputs).

    Raises:
      ValueError: `texts` is not a list of strings.
    """
    if isinstance(texts, (str, bytes)) or not all(isinstance(t, (str, bytes)) for t in texts):
      raise ValueError("texts must be a list of strings (str or bytes), one per example")
    features, encoded = self._encode(tf.constant(list(texts), tf.string, shape=[len(texts)]))
    return ({"token_ids": features["token_ids"].numpy(),
             "padding_mask": features["padding_mask"].numpy().astype(np.int32)}, encoded)

  def _check(self, name, value):
    value = np.asarray(value)
    if value.ndim != 2 or value.shape[1] != self.sequence_length:
      raise ValueError(f"{name} has shape {list(value.shape)}; the model takes "
                       f"[batch, {self.sequence_length}] (longer inputs: truncate, or call with "
                       "text, which is truncated as in serving)")
    if not np.issubdtype(value.dtype, np.integer):
      raise ValueError(f"{name} has dtype {value.dtype}; the model takes integers (int32)")
    return value.astype(np.int32)

  def run_ids(self, token_ids, padding_mask) -> np.ndarray:
    """The model's output (`probabilities` or `log_probabilities`) for int
    `[batch, sequence_length]` inputs.

    Raises:
      ValueError: a wrong shape or dtype, or ids outside the vocabulary (one line).
    """
    token_ids = self._check("token_ids", token_ids)
    padding_mask = self._check("padding_mask", padding_mask)
    if token_ids.shape != padding_mask.shape:
      raise ValueError(f"token_ids {list(token_ids.shape)} and padding_mask "
                       f"{list(padding_mask.shape)} differ in shape")
    size = int(self.info["vocabulary_size"])
    if token_ids.size and (token_ids.min() < 0 or token_ids.max() >= size):
      raise ValueError(f"token_ids holds ids outside 0 ... {size - 1} (the vocabulary)")
    if not len(token_ids):
      return np.zeros([0] + ([] if self.info["task"] == "sequence_classification"
                             else [self.sequence_length]) + [len(self.info["labels"])],
                      np.float32)
    return self.runner(token_ids=token_ids, padding_mask=padding_mask)[self.info["output"]]

  def __call__(self, texts: Sequence) -> Dict[str, np.ndarray]:
    """Outputs of `serving_default` for a list of strings (or bytes).

    Raises:
      ValueError: `texts` is not a list of strings.
    """
    features, encoded = self.encode(texts)
    scores = tf.constant(self.run_ids(**features))
    return {k: v.numpy() for k, v in self._decode(scores, encoded).items()}

  def _outputs(self, scores, encoded):
    """The serving outputs of the interpreter's `scores` for the encoder's context."""
    if self.info["task"] == "sequence_classification":
      scores = tf.math.log(tf.maximum(scores, 1e-30))   # LabelOutputs softmaxes: back to p
    elif "crf_transitions" in self.info:
      scores = TagScores(scores, tf.constant(self.info["crf_transitions"], tf.float32),
                         tf.constant(self.info["crf_start"], tf.float32))
    return self.outputs(scores, encoded)

"""Tiny trained-looking model directories for the export tests (2 layers, width 32)."""

from __future__ import annotations

import functools
import os

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from tests import testing
from tfllm import config as config_lib
from tfllm import export
from tfllm.data import tokenizers
from tfllm.export import latency, warmup
from tfllm.models import build
from tfllm.model_dir import checkpoint_dir
from tests.models.test_configs import load_config

WORDS = ("the a film is was good bad great awful movie john mary lives in paris london "
         "hello world to be or not that question . , ! ?").split()
VOCABULARY = list(tokenizers.WORD_PIECE_RESERVED) + WORDS + ["##s", "##ing", "##ed"]
NER_TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
SENTIMENT_LABELS = ["negative", "positive"]
TOKENIZER_KINDS = ("word_piece", "sentence_piece", "byte")
# What the tiny SentencePiece model is trained on (sentences of the WordPiece vocabulary).
_SENTENCES = ["the film was good", "john lives in paris", "hello world , to be or not",
              "that is the question !", "mary lives in london ?", "an awful movie , bad ."]


@functools.lru_cache(maxsize=None)
def _sentence_piece_proto() -> bytes:
  lines = tf.data.Dataset.from_tensor_slices(_SENTENCES * 20)
  tokenizer = tokenizers.train_sentence_piece(lines, vocab_size=40)
  return bytes(tokenizer.proto)


def tiny_tokenizer(kind: str = "word_piece"):
  """A tokenizer of `kind` (one of TOKENIZER_KINDS) over the tiny vocabulary's words."""
  if kind == "byte":
    return tokenizers.ByteLevelTokenizer()
  if kind == "sentence_piece":
    return keras_hub.tokenizers.SentencePieceTokenizer(proto=_sentence_piece_proto())
  return keras_hub.tokenizers.WordPieceTokenizer(vocabulary=VOCABULARY, lowercase=True,
                                                 oov_token="[UNK]")


def export_config(task: str, tokenizer: str = "word_piece"):
  """A full config of a 2-layer, width-32 model for `task` over a tiny `tokenizer` kind.

  `tests.testing.tiny_config` (GPT-2 for `causal_lm`, else BERT) sized to the tokenizer,
  without dropout, greedy export. `multi_task` has a sentiment head (`sentiment`, 2 labels)
  and an NER head (`ner`, IOB2 tags decoded by Viterbi).
  """
  task_options = dict(dropout=0.0)
  if task == "multi_task":
    task_options["heads"] = {
        "sentiment": dict(task="sequence_classification", labels=SENTIMENT_LABELS,
                          dropout=0.0),
        "ner": dict(task="token_classification", labels=NER_TAGS, dropout=0.0,
                    decoding="iob2_viterbi"),
    }
  return testing.tiny_config(
      "gpt2" if task == "causal_lm" else "bert", task,
      labels=NER_TAGS if task == "token_classification" else SENTIMENT_LABELS,
      model=dict(vocab_size=int(tiny_tokenizer(tokenizer).vocabulary_size()), num_heads=2,
                 dropout=0.0, attention_dropout=0.0),
      tokenizer=dict(type=tokenizer), task_options=task_options,
      data=dict(sequence_length=16), export=dict(max_new_tokens=8, temperature=0.0))


def default_job_config():
  """The default job's config (`configs/shakespeare_lm.py`: causal LM, byte-level tokens,
  its export settings) with a 2-layer, width-32, context-32 model."""
  config = load_config("shakespeare_lm")
  config.model.update(num_layers=2, hidden_dim=32, num_heads=2, intermediate_dim=64,
                      max_sequence_length=32)
  config.data.sequence_length = 32
  config.export.max_new_tokens = 16   # 64 of a context of 128: half of it here too
  return config


def make_model_dir(path: str, task: str, seed: int = 0, tokenizer: str = "word_piece",
                   config=None, change=None):
  """Writes what a training run leaves: config.json, tokenizer/, checkpoints/ckpt-1.

  Args:
    task, tokenizer: what `export_config` builds, unless `config` is given (its
      `tokenizer.type` then picks the tokenizer).
    change: a function of the built model that sets weights before they are saved.
  """
  if config is None:
    config = export_config(task, tokenizer)
  keras.utils.set_random_seed(seed)
  model = build(config)
  if change is not None:
    change(model)
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
    f.write(config_lib.to_json(config))
  tokenizers.save_tokenizer(tiny_tokenizer(config.tokenizer.type),
                            os.path.join(path, "tokenizer"))
  manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model),
                                       checkpoint_dir(path), max_to_keep=1)
  manager.save(checkpoint_number=1)
  return model, config


class _ModelDirs(dict):
  """task, `(task, tokenizer kind)` or "default_job" -> a model directory, written on first
  use (a bare task uses WordPiece)."""

  def __init__(self, root):
    super().__init__()
    self.root = root

  def __missing__(self, key):
    task, kind = (key, "word_piece") if isinstance(key, str) else key
    name = key if isinstance(key, str) else f"{task}-{kind}"
    config = default_job_config() if key == "default_job" else None
    make_model_dir(str(self.root / name), task, seed=len(self), tokenizer=kind, config=config)
    self[key] = str(self.root / name)
    return self[key]


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
  """task -> a model directory (each built once per test session, when first used)."""
  return _ModelDirs(tmp_path_factory.mktemp("model_dirs"))


class _Exports(dict):
  """`model_dirs` key -> (version path, model, tokenizer, config), exported on first use."""

  def __init__(self, model_dirs, root):
    super().__init__()
    self.model_dirs, self.root = model_dirs, root

  def __missing__(self, key):
    model, tokenizer, config = export.load_trained(self.model_dirs[key])
    name = os.path.basename(self.model_dirs[key])
    path = export.export_saved_model(model, tokenizer, config, str(self.root / name))
    self[key] = (path, model, tokenizer, config)
    return self[key]


@pytest.fixture(scope="session")
def exports(model_dirs, tmp_path_factory):
  """`model_dirs` key -> its export and what it was made from (each exported once)."""
  return _Exports(model_dirs, tmp_path_factory.mktemp("exports"))


def strings(values):
  return np.array(values, dtype=object)


def warmup_requests(path):
  """Signature name -> inputs of the export's TF Serving warm-up records."""
  from tensorflow_serving.apis import prediction_log_pb2  # pylint: disable=g-import-not-at-top
  requests = {}
  records = os.path.join(path, "assets.extra", warmup.WARMUP_FILE)
  for record in tf.data.TFRecordDataset(records).as_numpy_iterator():
    log = prediction_log_pb2.PredictionLog.FromString(record)
    request = log.predict_log.request
    requests[request.model_spec.signature_name] = {
        name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
  return requests


def served(exports, key, calls):
  """Runs the export's warm-up requests plus `calls` in a fresh TF-only process; every call
  must answer (no error)."""
  path = exports[key][0]
  warm = list(warmup_requests(path).items())
  result = latency.run_tf_only(path, calls=warm + list(calls), list_ops=True, timeout=300)
  for outputs in result["outputs"]:
    assert not isinstance(outputs, str), outputs
  result["outputs"] = result["outputs"][len(warm):]
  return result

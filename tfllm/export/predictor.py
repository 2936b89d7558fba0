"""Batch prediction's model: the served signatures of a training run (built in memory), of
an export (loaded), or of a LiteRT export (`serving_default` run by
`tfllm.export.litert.LiteRTClassifier`), and the signature a run calls (`load_predictor`,
`choose_signature`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Dict, Mapping, Optional

import tensorflow as tf

from tfllm import config as config_lib
from tfllm import model_dir as model_dir_lib
from tfllm.artifacts.files import read_json
from tfllm.export import tf_only

# Settings of the causal LM's `generate` signature (its other inputs than the prompt).
GENERATION_SETTINGS = ("max_new_tokens", "temperature", "top_k", "top_p", "seed")
# `assets.extra/` file of an export that holds the config it was made from.
EXPORT_CONFIG_FILE = os.path.join("assets.extra", "tfllm_config.json")
# A LiteRT version directory's description and model (`tfllm.export.litert.INFO_FILE` and
# `MODEL_FILE`; that module brings Keras, which an export is served without).
LITERT_INFO_FILE = "litert.json"
LITERT_MODEL_FILE = "model.tflite"

@dataclasses.dataclass
class Predictor:
  """Served functions of one model and the config it was trained with.

  Attributes:
    signatures: name -> function called with keyword tensors, returning a dict of tensors.
    config: the model's config as a dict (empty when an export carries none).
    source: the model directory or SavedModel path (for messages).
  """
  signatures: Mapping[str, Callable]
  config: Dict[str, Any]
  source: str


def check_saved_model(path: str) -> None:
  """Raises a one-line `ConfigError` unless `path` is a SavedModel version directory
  (`gs://` too); when it is the export's base directory, the error names its latest version."""
  if tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
    return
  from tfllm.export.saved_model import existing_versions  # brings Keras: only on this error path
  versions = [str(version) for version in existing_versions(path)]
  hint = (f"; it holds versions {', '.join(versions)}: pass "
          f"{os.path.join(path, versions[-1])}" if versions else
          "; pass a version directory tfllm-export wrote, e.g. /tmp/tfllm_serving/"
          "shakespeare/1")
  raise config_lib.ConfigError(f"saved_model={path!r} holds no saved_model.pb{hint}")


def check_litert(path: str) -> None:
  """Raises a one-line `ConfigError` unless `path` is a LiteRT version directory (`gs://`
  too): the export puts its model file in place last, so its presence means a whole export."""
  if not tf.io.gfile.exists(os.path.join(path, LITERT_MODEL_FILE)):
    raise config_lib.ConfigError(
        f"litert={path!r} holds no {LITERT_MODEL_FILE}; pass a version directory "
        "tfllm-export --format=litert wrote, e.g. /tmp/litert/sentiment/1")


def _check_model_source(model_dir: Optional[str], saved_model: Optional[str],
                        litert: Optional[str] = None) -> None:
  given = sum(bool(source) for source in (model_dir, saved_model, litert))
  if given != 1:
    raise config_lib.ConfigError(
        "give exactly one of --model_dir (a training run's directory), --saved_model (an "
        "exported version directory) and --litert (a LiteRT version directory); got "
        f"{'neither' if not given else 'more than one'}")
  if litert:
    check_litert(litert)
  if model_dir and not tf.io.gfile.isdir(model_dir):
    raise config_lib.ConfigError(f"model_dir={model_dir!r} does not exist; pass the "
                                 "directory a training run wrote")
  if saved_model:
    check_saved_model(saved_model)


def model_config(model_dir: Optional[str] = None, saved_model: Optional[str] = None,
                 litert: Optional[str] = None):
  """The model's config as a dict, read without loading the model ({} when absent; for a
  LiteRT export, the `task` and `data` keys its `litert.json` records)."""
  _check_model_source(model_dir, saved_model, litert)
  if model_dir:
    return read_json(model_dir_lib.config_path(model_dir))
  if litert:
    info = read_json(os.path.join(litert, LITERT_INFO_FILE))
    return {"task": {"name": info["task"], "labels": info["labels"],
                     "decoding": info.get("decoding", "")},
            "data": {"sequence_length": info["sequence_length"],
                     # Exports before these keys were recorded: the config defaults.
                     "text_feature": info.get("text_feature", "text"),
                     "label_feature": info.get("label_feature", "label")}}
  return read_json(os.path.join(saved_model, EXPORT_CONFIG_FILE))


def register_text_ops() -> None:
  """Registers TF-Text's kernels the way `tfllm/export/tf_only.py` does (a SavedModel with
  in-graph tokenization needs them: `Op type not registered 'RegexSplitWithOffsets'`)."""
  for library in tf_only.text_op_libraries():
    tf.load_op_library(library)


def load_predictor(model_dir: Optional[str] = None, saved_model: Optional[str] = None,
                   litert: Optional[str] = None) -> Predictor:
  """The served functions of a training run (built in memory), of an export (loaded) or of
  a LiteRT export (its `serving_default`: text -> the SavedModel's outputs, by
  `LiteRTClassifier` with one interpreter).

  Raises:
    ConfigError: not exactly one of the three is given, or it does not exist.
    ExportError: `model_dir` lacks its config, tokenizer or checkpoint.
  """
  config = model_config(model_dir, saved_model, litert)
  if litert:
    from tfllm.export.litert import LiteRTClassifier  # Keras: only for a LiteRT export
    classifier = LiteRTClassifier(litert)

    def serving_default(text):
      return classifier(list(text.numpy()))

    serving_default.specs = {"text": tf.TensorSpec([None], tf.string, name="text")}
    return Predictor({"serving_default": serving_default}, config, litert)
  if model_dir:
    # Keras, keras-hub and the model code only for a model_dir: an export is served without.
    from tfllm.export import signatures as signatures_lib  # Keras: only for a model_dir
    from tfllm.export import trained  # Keras: only for a model_dir
    model, tokenizer, trained_config = trained.load_trained(model_dir)
    functions = signatures_lib.signatures_for(model, tokenizer, trained_config).functions()
    return Predictor(functions, json.loads(config_lib.to_json(trained_config)), model_dir)
  register_text_ops()
  loaded = tf.saved_model.load(saved_model)
  # `loaded` owns the variables the signatures read: keep it alive with them.
  signatures = {name: _bound(function, loaded) for name, function in loaded.signatures.items()}
  return Predictor(signatures, config, saved_model)


def _bound(function, owner):
  def call(**inputs):
    return function(**inputs)
  call.owner = owner  # keeps the loaded object (and its variables) alive
  call.specs = input_specs(function)
  return call


def input_specs(function) -> Dict[str, tf.TensorSpec]:
  """Input name -> TensorSpec of a signature (a loaded signature or a `tf.function` with an
  input signature)."""
  specs = getattr(function, "specs", None)
  if specs is not None:
    return specs
  structured = getattr(function, "structured_input_signature", None)
  if structured is not None:
    args, kwargs = structured
    return {**{spec.name: spec for spec in args}, **kwargs}
  return {spec.name: spec for spec in function.input_signature}


def _default_settings(config: Mapping) -> Dict[str, Any]:
  defaults = config_lib.default_config().export.to_dict()
  defaults.update(config.get("export", {}))
  return {name: defaults[name] for name in GENERATION_SETTINGS}


def choose_signature(predictor: Predictor, settings: Mapping[str, Any]):
  """`(signature name, fixed inputs)`: `generate` with `settings` (the rest from the model's
  `config.export`) when any setting is given, else `serving_default`.

  Raises:
    ConfigError: settings for a model without a `generate` signature, or a signature whose
      inputs this tool cannot fill.
  """
  settings = {name: value for name, value in settings.items() if value is not None}
  available = ", ".join(sorted(predictor.signatures))
  name = "generate" if settings else "serving_default"
  if name not in predictor.signatures:
    if settings:
      raise config_lib.ConfigError(
          f"--{', --'.join(sorted(settings))} need a causal LM (a 'generate' signature); "
          f"{predictor.source} has signatures: {available}")
    raise config_lib.ConfigError(f"{predictor.source} has no serving_default signature; it "
                                 f"has: {available}")
  values = {**_default_settings(predictor.config), **settings}
  fixed = {}
  text_inputs = []
  for input_name, spec in input_specs(predictor.signatures[name]).items():
    if spec.dtype == tf.string:
      text_inputs.append(input_name)
    elif input_name in values:
      fixed[input_name] = tf.constant([values[input_name]], spec.dtype)
    else:
      raise config_lib.ConfigError(f"signature {name!r} of {predictor.source} takes input "
                                   f"{input_name!r}, which batch prediction cannot fill")
  if len(text_inputs) != 1:
    raise config_lib.ConfigError(f"signature {name!r} of {predictor.source} takes "
                                 f"{len(text_inputs)} string inputs; batch prediction feeds "
                                 "exactly one")
  return name, text_inputs[0], fixed

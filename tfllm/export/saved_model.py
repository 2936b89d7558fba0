"""`export_saved_model`: a TF Serving model version, written atomically.

Layout (what TF Serving watches): `<export_dir>/<version>/saved_model.pb`, `variables/`,
`assets/` and `assets.extra/tf_serving_warmup_requests`. `export_dir` may be any TF
filesystem path (`gs://bucket/models/name`). The version is written under a staged name
inside `export_dir` (`.tmp-<version>-...`, which TF Serving ignores: not an integer) and then
published (`tfllm.model_dir.publish_directory`): on a local disk one rename, so a server
polling `export_dir` never sees a half-written version; on `gs://` file by file with
`saved_model.pb` last (docs/distributed.md, "Model dirs and exports on gs://"). An existing
version is replaced only when `overwrite=True`.
"""

from __future__ import annotations

import os
from typing import Optional

import keras
import tensorflow as tf

from tfllm import config as config_lib
from tfllm import model_dir as model_dir_lib
from tfllm.export import signatures as signatures_lib
from tfllm.export import warmup as warmup_lib


class ExportError(config_lib.ConfigError):
  """The export cannot be written as asked (missing inputs, existing version, ...): a usage
  error (exit code 2 in the CLIs)."""


def existing_versions(export_dir: str):
  """Integer versions present in `export_dir` (sorted), ignoring anything else."""
  if not tf.io.gfile.isdir(export_dir):
    return []
  # gfile lists gs:// subdirectories with a trailing "/".
  names = (name.rstrip("/") for name in tf.io.gfile.listdir(export_dir))
  return sorted(int(name) for name in names if name.isdigit())


def next_version(export_dir: str) -> int:
  """One more than the newest version in `export_dir`, or 1."""
  versions = existing_versions(export_dir)
  return versions[-1] + 1 if versions else 1


def _write_saved_model(path, model, tokenizer, config):
  serving = signatures_lib.signatures_for(model, tokenizer, config)
  functions = serving.functions()
  for function in functions.values():
    function.get_concrete_function()
  tokenizer(tf.constant([""]))  # builds the layer (ExportArchive tracks only built layers)
  archive = keras.export.ExportArchive()
  # Not `archive.track(model)`: the endpoints capture the model's variables themselves, and
  # tracking the model too stores every weight twice (its keras.Variable wrappers beside the
  # captured tf.Variables: keras-team/keras#23553, 2x the SavedModel on disk and in memory).
  # The tokenizer is tracked for its vocabulary tables.
  archive.track(tokenizer)
  for name, function in functions.items():
    archive.add_endpoint(name, function)
  archive.write_out(path, verbose=False)
  _set_method_names(path, serving.method_names())
  return serving


def _set_method_names(path, method_names):
  """Gives signatures another method name than Predict (e.g. Classify for serve_examples).

  `tf.saved_model.save` writes every signature as Predict; TF Serving's Classify API checks
  the method name, while its Predict API accepts any, so the rename only adds an API.
  """
  if not method_names:
    return
  from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=g-direct-tensorflow-import
  pb_path = os.path.join(path, "saved_model.pb")
  saved_model = saved_model_pb2.SavedModel()
  with tf.io.gfile.GFile(pb_path, "rb") as f:
    saved_model.ParseFromString(f.read())
  for meta_graph in saved_model.meta_graphs:
    for name, method in method_names.items():
      if name in meta_graph.signature_def:
        meta_graph.signature_def[name].method_name = method
  with tf.io.gfile.GFile(pb_path, "wb") as f:
    f.write(saved_model.SerializeToString())


def export_saved_model(model, tokenizer, config, export_dir: str, version: Optional[int] = None,
                       overwrite: bool = False, extra_files=None) -> str:
  """Exports `model` with in-graph tokenization as `<export_dir>/<version>/`.

  Args:
    model: the built task model (`tfllm.models.build(config)`, weights restored).
    tokenizer: its keras-hub tokenizer (`tfllm.data.tokenizers`); its vocabulary is stored
      inside the SavedModel.
    config: the model's full config; `config.export` sets generation defaults, lengths, XLA
      and warm-up (see `tfllm.export.config`).
    export_dir: the TF Serving model base path.
    version: integer version; None = one more than the newest present (1 if none).
    overwrite: replace an existing `version` (otherwise that is an error).
    extra_files: optional `{name: text}` written into `assets.extra/` with the version.

  Returns:
    The path of the written version.

  Raises:
    ExportError: `version` exists and `overwrite` is False, or `version` is not a
      non-negative integer.
  """
  config_lib.validate(config)
  export_dir = os.fspath(export_dir).rstrip("/")
  if model_dir_lib.is_local(export_dir):
    export_dir = os.path.abspath(export_dir)
  if version is None:
    version = next_version(export_dir)
  if isinstance(version, bool) or not isinstance(version, int) or version < 0:
    raise ExportError(f"version={version!r} is not accepted; TF Serving versions are integers "
                      ">= 0")
  target = os.path.join(export_dir, str(version))
  if tf.io.gfile.exists(target) and not overwrite:
    raise ExportError(f"{target} already exists; choose another version or pass overwrite")
  tf.io.gfile.makedirs(export_dir)
  saved_model_dir = model_dir_lib.staging_path(export_dir, str(version))
  try:
    serving = _write_saved_model(saved_model_dir, model, tokenizer, config)
    extra = os.path.join(saved_model_dir, "assets.extra")
    tf.io.gfile.makedirs(extra)
    if config.export.warmup:
      warmup_lib.write_warmup_requests(os.path.join(extra, warmup_lib.WARMUP_FILE),
                                       serving.warmup_inputs())
    with tf.io.gfile.GFile(os.path.join(extra, "tfllm_config.json"), "w") as f:
      f.write(config_lib.to_json(config))
    for name, text in (extra_files or {}).items():
      with tf.io.gfile.GFile(os.path.join(extra, name), "w") as f:
        f.write(text)
    # TF Serving loads a version from its saved_model.pb: it arrives last where files move
    # one by one.
    model_dir_lib.publish_directory(saved_model_dir, target, last=("saved_model.pb",))
  finally:
    model_dir_lib.remove(saved_model_dir)
  return target

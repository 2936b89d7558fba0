"""The config a model_dir saved, against the config of a new run in it.

`compare_with_model_dir` refuses a run of a different model shape before anything is written,
and lists the other settings a resumed run changes.
"""

from __future__ import annotations

import json
from typing import Any, List, Optional

import ml_collections
import tensorflow as tf

from tfllm import config as config_lib
from tfllm.model_dir import config_path

# Sections whose values shape the variables a checkpoint holds (and their meaning).
_SHAPE_SECTIONS = ("model", "task", "tokenizer")


def _differences(old: Any, new: Any, path: str):
  if isinstance(old, dict) and isinstance(new, dict):
    for key in sorted(set(old) | set(new)):
      yield from _differences(old.get(key), new.get(key), f"{path}.{key}")
  elif old != new and not (isinstance(old, (list, tuple)) and isinstance(new, (list, tuple))
                           and list(old) == list(new)):
    yield f"{path}={new!r} (model_dir has {old!r})"


def _is_decoding(diff: str) -> bool:
  # How tags are decoded is chosen at evaluation and export; the weights do not depend on it.
  return diff.split("=", 1)[0].endswith(".decoding")


def compare_with_model_dir(config: ml_collections.ConfigDict, model_dir: str,
                           ignore=("model.vocab_size",)) -> Optional[List[str]]:
  """Compares `config` with the config saved in `model_dir`.

  Args:
    ignore: shape settings not compared (the vocabulary size before the tokenizer is built).

  Returns:
    None when `model_dir` has no config; else the settings outside the model's shape (train,
    data, export, ...) that differ: a resumed run uses the new ones, so it says which.

  Raises:
    ConfigError: `model_dir` holds a run of a different model shape.
  """
  path = config_path(model_dir)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    saved = json.load(f)
  new = json.loads(config_lib.to_json(config))
  shape_diffs, other_diffs = [], []
  for section in sorted(set(saved) | set(new)):
    for diff in _differences(saved.get(section), new.get(section), f"config.{section}"):
      if section not in _SHAPE_SECTIONS or _is_decoding(diff):
        other_diffs.append(diff)
      elif not any(diff.startswith(f"config.{key}=") for key in ignore):
        shape_diffs.append(diff)
  if shape_diffs:
    more = f" (and {len(shape_diffs) - 1} more)" if len(shape_diffs) > 1 else ""
    raise config_lib.ConfigError(
        f"model_dir {model_dir} holds a different model: {shape_diffs[0]}{more}; use a new "
        "--model_dir or the saved config")
  return other_diffs

"""Reading a model_dir's or an export's JSON files without the model code (no Keras): what
batch prediction needs before it decides how to load a model."""

from __future__ import annotations

import json
from typing import Any, Dict

import tensorflow as tf


def read_json(path: str) -> Dict[str, Any]:
  """The JSON object in `path` (any `tf.io.gfile` path), or {} when there is no such file."""
  if not tf.io.gfile.exists(path):
    return {}
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)

"""The on-disk size of an export's weights, plain and gzip-compressed.

A pruned model exports dense kernels holding zeros (`tfllm.finetune.pruning` folds its masks
in): the plain size does not shrink, the compressed one does (what a registry or a download
of the gzipped version costs). Neither changes the serving speed: dense matmuls do the same
work with zeros.
"""

from __future__ import annotations

import dataclasses
import os
import zlib

import tensorflow as tf

_CHUNK = 1 << 22


@dataclasses.dataclass
class VariablesSize:
  plain_bytes: int
  gzip_bytes: int
  what: str = "variables"

  def describe(self) -> str:
    ratio = self.gzip_bytes / self.plain_bytes if self.plain_bytes else 0.0
    return (f"{self.what}: {self.plain_bytes / 1e6:.2f} MB, gzipped "
            f"{self.gzip_bytes / 1e6:.2f} MB ({100 * ratio:.0f}%)")


def gzip_size(path: str) -> int:
  """Bytes of `path` (any `tf.io.gfile` path) after gzip (zlib level 6, gzip container)."""
  compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
  total = 0
  with tf.io.gfile.GFile(path, "rb") as f:
    while True:
      chunk = f.read(_CHUNK)
      if not chunk:
        break
      total += len(compressor.compress(chunk))
  return total + len(compressor.flush())


def variables_size(saved_model_path: str) -> VariablesSize:
  """Plain and gzipped bytes of the files in `<saved_model_path>/variables/`."""
  directory = os.path.join(saved_model_path, "variables")
  plain = packed = 0
  for name in sorted(tf.io.gfile.listdir(directory)):
    path = os.path.join(directory, name)
    plain += tf.io.gfile.stat(path).length
    packed += gzip_size(path)
  return VariablesSize(plain, packed)


def export_size(export_path: str, litert_file: str = "model.tflite") -> VariablesSize:
  """`variables_size` of a SavedModel version, or the plain and gzipped bytes of a LiteRT
  export's `litert_file` (its weights are inside the flatbuffer)."""
  if tf.io.gfile.isdir(os.path.join(export_path, "variables")):
    return variables_size(export_path)
  path = os.path.join(export_path, litert_file)
  return VariablesSize(tf.io.gfile.stat(path).length, gzip_size(path), what=litert_file)

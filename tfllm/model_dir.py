"""What a tfllm model_dir holds, by name, and the one way tfllm writes files into it.

  config.json         the resolved config (vocab size from the tokenizer), written at start
  tokenizer/          the tokenizer (`tfllm.data.tokenizers.save_tokenizer`)
  checkpoints/        model + optimizer + step (`tfllm.training.checkpointing`)
  train/, eval/       TensorBoard summaries
  eval_metrics.json   the last evaluation's metrics, step and split
  best_checkpoint/, best_checkpoint.json
                      with `train.early_stopping`: the checkpoint of the best evaluation by
                      the monitored metric, and which one it is (step, metric, value)
  eval_metrics_int8.json, model.int8.weights.h5
                      with `finetune.quantize=int8`: the quantized model's metrics, weights

Training (`tfllm.training.job`) writes it; resume, export, generation and distillation
teachers (`tfllm.artifacts.load_trained_model`) read it.

Model dirs, export dirs and data dirs may be any TF filesystem path (`gs://bucket/run`,
`ram://...`, a local path): every file operation goes through `tf.io.gfile`, and every
writer goes through the helpers below, which never let a half-written file or directory
replace a good one. Work in progress is staged under a name starting with `STAGING_PREFIX`
(`.tmp-`), which tfllm's readers and TF Serving (integer version names only) ignore. What a
reader can see while a directory is published, per filesystem: docs/distributed.md, section
"Model dirs and exports on gs://".
"""

import contextlib
import os
import tempfile
import uuid
from typing import Callable, Iterator, Sequence, Union

import tensorflow as tf

CONFIG_FILE = "config.json"
TOKENIZER_SUBDIR = "tokenizer"
CHECKPOINT_SUBDIR = "checkpoints"
EVAL_FILE = "eval_metrics.json"
BEST_CHECKPOINT_SUBDIR = "best_checkpoint"
BEST_CHECKPOINT_FILE = "best_checkpoint.json"
INT8_EVAL_FILE = "eval_metrics_int8.json"
INT8_WEIGHTS_FILE = "model.int8.weights.h5"
# Names of work in progress; readers skip them.
STAGING_PREFIX = ".tmp-"


def config_path(model_dir: str) -> str:
  return os.path.join(model_dir, CONFIG_FILE)


def tokenizer_dir(model_dir: str) -> str:
  return os.path.join(model_dir, TOKENIZER_SUBDIR)


def checkpoint_dir(model_dir: str) -> str:
  """Where the chief keeps the checkpoints of `model_dir`."""
  return os.path.join(model_dir, CHECKPOINT_SUBDIR)


# ------------------------------------------------------------------------ file system


def is_local(path: str) -> bool:
  """True for a plain local path: the only kind `os`, `open` and `h5py` understand."""
  return "://" not in os.fspath(path)


def renames_directories(path: str) -> bool:
  """Whether `tf.io.gfile.rename` moves a whole directory at once on `path`'s filesystem.

  A POSIX rename does (atomically). `gs://` renames object by object (copy, then delete) and
  `ram://` moves only the directory's own entry, leaving its files at the old names.
  """
  path = os.fspath(path)
  return is_local(path) or path.startswith("file://")


def staging_path(directory: str, name: str) -> str:
  """A fresh name in `directory` for work in progress on `name` (starts `STAGING_PREFIX`)."""
  return os.path.join(directory, f"{STAGING_PREFIX}{name}-{uuid.uuid4().hex[:12]}")


def remove(path: str) -> None:
  """Removes the file or directory tree `path`; nothing when it does not exist."""
  try:
    if tf.io.gfile.isdir(path):
      tf.io.gfile.rmtree(path)
    elif tf.io.gfile.exists(path):
      tf.io.gfile.remove(path)
  except tf.errors.NotFoundError:
    pass


def _stage_and_rename(path: str, fill: Callable[[str], None]) -> str:
  """`fill(staged)` writes a staged file beside `path`, which is then renamed to `path`."""
  path = os.fspath(path)
  directory = os.path.dirname(path)
  if directory:
    tf.io.gfile.makedirs(directory)
  staged = staging_path(directory, os.path.basename(path))
  try:
    fill(staged)
    tf.io.gfile.rename(staged, path, overwrite=True)
  except BaseException:
    remove(staged)
    raise
  return path


def write_atomically(path: str, data: Union[str, bytes]) -> str:
  """Writes `data` to `path` on any TF filesystem: a staged file renamed into place.

  A reader sees the old file or the whole new one (a POSIX rename; one object copied on
  `gs://`; one entry moved on `ram://`), never a part; on failure the old file is intact.

  Returns:
    `path`.
  """
  def fill(staged):
    with tf.io.gfile.GFile(staged, "wb") as f:
      f.write(data.encode("utf-8") if isinstance(data, str) else data)
  return _stage_and_rename(path, fill)


def copy_atomically(source: str, path: str) -> str:
  """Copies the file `source` to `path` (any TF filesystems) as `write_atomically` writes.

  Returns:
    `path`.
  """
  return _stage_and_rename(path, lambda staged: tf.io.gfile.copy(source, staged,
                                                                 overwrite=True))


def write_with_local_writer(path: str, write: Callable[[str], None]) -> str:
  """`write_atomically` for writers that need a local file (Keras' h5 weights, ...).

  `write(local_path)` writes into a private local directory (the local name ends like
  `path`, for writers that check the extension); the finished file then goes to `path`
  through `copy_atomically`.

  Returns:
    `path`.
  """
  path = os.fspath(path)
  with tempfile.TemporaryDirectory(prefix="tfllm-") as scratch:
    local = os.path.join(scratch, os.path.basename(path))
    write(local)
    return copy_atomically(local, path)


@contextlib.contextmanager
def local_copy(path: str) -> Iterator[str]:
  """A local path holding the file `path` (itself when local), for readers that need one."""
  path = os.fspath(path)
  if is_local(path):
    yield path
    return
  with tempfile.TemporaryDirectory(prefix="tfllm-") as scratch:
    local = os.path.join(scratch, os.path.basename(path))
    tf.io.gfile.copy(path, local)
    yield local


def publish_directory(staged: str, target: str, last: Sequence[str] = ()) -> str:
  """Moves the complete directory `staged` to `target`, replacing any `target` there.

  Where a rename moves a directory (local disks), the old `target` is renamed aside, `staged`
  renamed into place, the old one deleted: a reader sees the old or the new directory, and
  for an instant none. Elsewhere (`gs://`, `ram://`) the files move one by one: the old
  `target` is deleted (its `last` files first), then the new files arrive, those named in
  `last` (relative paths, e.g. `saved_model.pb`) at the end, so a reader that waits for them
  never reads a partial directory. `staged` is removed in both cases.

  Args:
    staged: a finished directory, normally `staging_path(parent of target, ...)` (same
      filesystem as `target`).
    target: where it belongs.
    last: files (relative to `staged`) to put in place after all others.

  Returns:
    `target`.
  """
  staged, target = os.fspath(staged), os.fspath(target)
  if renames_directories(target):
    retired = None
    if tf.io.gfile.exists(target):
      retired = staging_path(os.path.dirname(target), "old-" + os.path.basename(target))
      tf.io.gfile.rename(target, retired)
    tf.io.gfile.rename(staged, target)
    if retired:
      remove(retired)
    return target
  if tf.io.gfile.exists(target):
    for name in last:
      remove(os.path.join(target, name))
    remove(target)
  tf.io.gfile.makedirs(target)
  moves, final = [], []
  for relative, is_directory in _entries_below(staged):
    if is_directory:
      tf.io.gfile.makedirs(os.path.join(target, relative))
    else:
      (final if relative in last else moves).append(relative)
  for relative in moves + final:
    tf.io.gfile.rename(os.path.join(staged, relative), os.path.join(target, relative),
                       overwrite=True)
  remove(staged)
  return target


def _entries_below(directory: str, relative: str = ""):
  """Yields (path relative to `directory`, is a directory) for everything below it, parents
  first. Names listed that do not exist are skipped: `ram://` lists `assets.extra` under
  `assets/` too (its listing matches name prefixes)."""
  here = os.path.join(directory, relative) if relative else directory
  for name in sorted(tf.io.gfile.listdir(here)):
    child = os.path.join(relative, name.rstrip("/")) if relative else name.rstrip("/")
    path = os.path.join(directory, child)
    if tf.io.gfile.isdir(path):
      yield child, True
      yield from _entries_below(directory, child)
    elif tf.io.gfile.exists(path):
      yield child, False

def best_checkpoint_dir(model_dir: str) -> str:
  """Where early stopping keeps the best checkpoint (outside the newest-N rotation)."""
  return os.path.join(model_dir, BEST_CHECKPOINT_SUBDIR)


def best_checkpoint_path(model_dir: str) -> str:
  """The record of the best checkpoint: JSON with step, metric, mode, value, checkpoint."""
  return os.path.join(model_dir, BEST_CHECKPOINT_FILE)

"""Batch prediction's inputs: a text file, a JSONL file or a TFDS split, read and checked
before any model work (`open_inputs`; the formats are described in `tfllm.export.predict`).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Union

import numpy as np
import tensorflow as tf

from tfllm import config as config_lib

FORMATS = ("auto", "text", "jsonl", "tfds")
TFDS_PREFIX = "tfds:"
JSONL_SUFFIXES = (".jsonl", ".ndjson")
DEFAULT_TEXT_FIELD = "text"
DEFAULT_ID_FIELD = "id"


@dataclasses.dataclass(frozen=True)
class Item:
  """One input: where it came from (`{"line": 3}` or `{"index": 0}`), its id, its text, and
  its raw label (the split's label feature, numpy) when the inputs were opened for scoring."""
  position: Dict[str, int]
  text: str
  id: Any = None
  label: Any = None


SKIP_REASONS = ("empty", "invalid UTF-8")


@dataclasses.dataclass(frozen=True)
class Skip:
  """An input left out: `reason` is one of SKIP_REASONS."""
  reason: str


@dataclasses.dataclass
class Inputs:
  """What `open_inputs` found: `items()` yields `Item`s and `Skip`s in input order.

  Attributes:
    description: the input as the user named it (for messages).
    unit: "lines" or "examples" (for the summary).
    total: inputs the iteration will yield, skips included, when known.
    items: a function returning a fresh iterator over the inputs.
    source: the TFDS split's `tfllm.data.sources.Source` (None for files).
    label_field: the feature each `Item.label` holds (None: not opened for scoring).
  """
  description: str
  unit: str
  total: Optional[int]
  items: Callable[[], Iterator[Union[Item, Skip]]]
  source: Any = None
  label_field: Optional[str] = None


def resolve_format(path: str, input_format: str = "auto") -> str:
  """The format of `path`: `input_format`, or for "auto" the prefix `tfds:`, a `.jsonl` /
  `.ndjson` suffix, else text."""
  if input_format not in FORMATS:
    raise config_lib.ConfigError(f"input_format={input_format!r} is not accepted; use one of "
                                 f"{', '.join(FORMATS)}")
  if input_format != "auto":
    return input_format
  if path.startswith(TFDS_PREFIX):
    return "tfds"
  return "jsonl" if path.lower().endswith(JSONL_SUFFIXES) else "text"


def _text_or_skip(data: bytes) -> Union[str, Skip]:
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError:
    return Skip("invalid UTF-8")
  return text if text.strip() else Skip("empty")


def _checked_text(text: str) -> Union[str, Skip]:
  """A decoded string kept, or skipped when empty or holding lone surrogates (JSON `\\udc80`
  decodes to a str that is not UTF-8)."""
  if not text.strip():
    return Skip("empty")
  try:
    text.encode("utf-8")
  except UnicodeEncodeError:
    return Skip("invalid UTF-8")
  return text


def _file_lines(path: str) -> Iterator[bytes]:
  with tf.io.gfile.GFile(path, "rb") as f:
    for line in f:
      yield line.rstrip(b"\r\n") if line.endswith(b"\n") else line


def _text_items(path: str) -> Iterator[Union[Item, Skip]]:
  for number, line in enumerate(_file_lines(path), 1):
    text = _text_or_skip(line)
    yield text if isinstance(text, Skip) else Item({"line": number}, text)


def _jsonl_items(path: str, text_field: str, id_field: str) -> Iterator[Union[Item, Skip]]:
  for number, line in enumerate(_file_lines(path), 1):
    decoded = _text_or_skip(line)
    if isinstance(decoded, Skip):
      yield decoded
      continue
    where = f"{path} line {number}"
    try:
      record = json.loads(decoded)
    except json.JSONDecodeError as error:
      raise config_lib.ConfigError(
          f"{where} is not JSON ({error.msg} at column {error.colno}); JSONL input takes one "
          f"JSON object a line with the text in {text_field!r}") from None
    if not isinstance(record, dict):
      raise config_lib.ConfigError(
          f"{where} is a JSON {type(record).__name__}, not an object; JSONL input takes one "
          f"object a line with the text in {text_field!r}")
    if text_field not in record:
      raise config_lib.ConfigError(
          f"{where} has no field {text_field!r} (it has: {', '.join(sorted(record)) or 'none'});"
          " name the text field with --text_field")
    text = record[text_field]
    if not isinstance(text, str):
      raise config_lib.ConfigError(
          f"{where}: field {text_field!r} holds a JSON {type(text).__name__}; expected a "
          "string")
    text = _checked_text(text)
    yield text if isinstance(text, Skip) else Item({"line": number}, text,
                                                   record.get(id_field))


def parse_tfds_input(path: str):
  """`tfds:NAME/SPLIT` -> `(NAME, SPLIT)`; NAME may be `name/config:version`."""
  spec = path[len(TFDS_PREFIX):] if path.startswith(TFDS_PREFIX) else path
  name, _, split = spec.rpartition("/")
  if not name or not split:
    raise config_lib.ConfigError(
        f"input={path!r} is not a TFDS split; write tfds:NAME/SPLIT, e.g. "
        "tfds:tfllm_movie_sentiment/test or tfds:tfllm_conll2003/validation[:100]")
  return name, split


def python_value(value):
  """A numpy value as JSON-ready Python: bytes -> str, arrays -> lists, scalars -> numbers."""
  if isinstance(value, bytes):
    return value.decode("utf-8", errors="replace")
  if isinstance(value, np.ndarray):
    if value.dtype == object or value.dtype.kind == "S":
      return [python_value(v) for v in value]
    return value.tolist()
  if isinstance(value, np.generic):
    return value.item()
  return value


def _tfds_features(name: str, data_dir: Optional[str], path: str):
  """Feature names of TFDS dataset `name` (a tfllm builder, one registered, or one prepared
  in `data_dir`), read without preparing it."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tfllm.data import sources  # imports TFDS (seconds): only for TFDS inputs
  if name.split("/")[0].split(":")[0] in sources.TFLLM_BUILDERS:
    import tfllm.data.datasets  # noqa: F401  registers tfllm's builders: only for TFDS inputs
  try:
    return list(tfds.builder(name, data_dir=data_dir or None).info.features.keys())
  except tfds.core.registered.DatasetNotFoundError:
    raise config_lib.ConfigError(
        f"input={path!r}: {name!r} is neither a registered TFDS dataset nor prepared in "
        f"--data_dir={data_dir or tfds.core.constants.DATA_DIR}; tfllm's own: "
        f"{', '.join(sources.TFLLM_BUILDERS)}") from None


def _tfds_inputs(path: str, text_field: Optional[str], id_field: str, data_dir: Optional[str],
                 model_config: Mapping, progress: bool,
                 label_field: Optional[str] = None) -> Inputs:
  # TFDS is imported only for TFDS inputs (its import takes seconds).
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tfllm.data import sources  # imports TFDS (seconds): only for TFDS inputs
  if not progress:
    tfds.disable_progress_bar()  # preparing tfllm's builders draws bars on stderr otherwise
  name, split = parse_tfds_input(path)
  features = _tfds_features(name, data_dir, path)
  text_feature = text_field or model_config.get("data", {}).get("text_feature",
                                                                DEFAULT_TEXT_FIELD)
  if text_feature not in features:
    origin = "--text_field" if text_field else "the model's config.data.text_feature"
    raise config_lib.ConfigError(
        f"input={path!r}: text feature {text_feature!r} ({origin}) is not a feature of "
        f"{name!r}; its features: {', '.join(sorted(features))}; choose one with --text_field")
  if label_field is not None and label_field not in features:
    raise config_lib.ConfigError(
        f"input={path!r}: label feature {label_field!r} is not a feature of {name!r}; its "
        f"features: {', '.join(sorted(features))}; choose one with --label_field")
  data_config = config_lib.default_config().data
  data_config.update(dataset=name, data_dir=data_dir or "", text_feature=text_feature,
                     label_feature=label_field or data_config.label_feature)
  try:
    source = sources.load_source(data_config, split)
  except ValueError as error:  # an unknown or empty split, an unprepared catalog dataset
    raise config_lib.ConfigError(f"input={path!r}: {error}") from None
  spec = source.examples.element_spec[text_feature]
  if spec.dtype != tf.string or spec.shape.rank > 1:
    raise config_lib.ConfigError(
        f"input={path!r}: feature {text_feature!r} holds {spec.dtype.name} values of rank "
        f"{spec.shape.rank}; the text must be a string or a sequence of words: choose another "
        "with --text_field")
  has_id = id_field in source.examples.element_spec

  def rows(example):
    row = {"text": sources.as_text(example[text_feature])}
    if has_id:
      row["id"] = example[id_field]
    if label_field is not None:
      row["label"] = example[label_field]
    return row

  def items():
    for index, row in enumerate(tfds.as_numpy(source.examples.map(rows))):
      text = _text_or_skip(row["text"])
      if isinstance(text, Skip):
        yield text
      else:
        yield Item({"index": index}, text, python_value(row["id"]) if has_id else None,
                   row.get("label"))

  return Inputs(path, "examples", source.num_examples, items, source, label_field)


def open_inputs(path: str, input_format: str = "auto", text_field: Optional[str] = None,
                id_field: str = DEFAULT_ID_FIELD, data_dir: Optional[str] = None,
                model_config: Optional[Mapping] = None, progress: bool = False,
                label_field: Optional[str] = None) -> Inputs:
  """The inputs of `path`, checked: a file is read once here, so a bad line fails now.

  Args:
    path: a text or JSONL file (any `tf.io.gfile` path, `gs://` included) or `tfds:NAME/SPLIT`.
    input_format: one of FORMATS; "auto" decides by prefix and suffix (`resolve_format`).
    text_field: JSONL field or TFDS feature of the text; None: "text" for JSONL, the model's
      `data.text_feature` for TFDS.
    id_field: JSONL field or TFDS feature copied to each output line as `id` when present.
    data_dir: TFDS data directory (None: TFDS's default).
    model_config: the model's config as a dict (for the TFDS text feature).
    progress: let TFDS draw its progress bars while it prepares a tfllm dataset.
    label_field: for scoring, the TFDS feature each item's `label` carries (TFDS inputs
      only; a file input with it is refused).

  Raises:
    ConfigError: unknown format, missing file, a JSONL line that is not an object with a
      string `text_field`, an unknown TFDS dataset, split or feature, a `label_field` for a
      file or not in the split.
  """
  input_format = resolve_format(path, input_format)
  if input_format == "tfds":
    return _tfds_inputs(path, text_field, id_field, data_dir, model_config or {}, progress,
                        label_field)
  if label_field is not None:
    raise config_lib.ConfigError(
        f"input={path!r} is a {input_format} file, which carries no labels; scoring reads a "
        "labelled TFDS split: --input=tfds:NAME/SPLIT, e.g. tfds:tfllm_movie_sentiment/test")
  if not tf.io.gfile.exists(path):
    raise config_lib.ConfigError(f"input={path!r}: no such file; give a text file (one input "
                                 "a line), a .jsonl file or tfds:NAME/SPLIT")
  if tf.io.gfile.isdir(path):
    raise config_lib.ConfigError(f"input={path!r} is a directory; give a text file, a .jsonl "
                                 "file or tfds:NAME/SPLIT")
  if input_format == "jsonl":
    items = lambda: _jsonl_items(path, text_field or DEFAULT_TEXT_FIELD, id_field)  # noqa: E731
  else:
    items = lambda: _text_items(path)  # noqa: E731
  total = sum(1 for _ in items())  # reads (and checks) every line before any model work
  return Inputs(path, "lines", total, items)

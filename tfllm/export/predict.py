"""Batch inference through the served signatures: inputs from a file or TFDS, JSONL out.

The model is either a training run's directory (its signatures are built in memory with
`tfllm.export.signatures.signatures_for`, nothing is written) or an exported TF Serving
version directory (loaded with `tf.saved_model.load`, TF-Text's kernels registered first).
Either way the functions called are the ones TF Serving runs, so a prediction here is the
prediction a server would give.

Inputs (`open_inputs`):
  text    one input a line;
  jsonl   one JSON object a line, the input in `text_field` (and an optional `id_field`);
  tfds    `tfds:NAME/SPLIT` (`NAME` may carry `/CONFIG` and `:VERSION`; `SPLIT` may be a
          slice such as `test[:100]`), the text in `text_field` (default: the model's
          `config.data.text_feature`); a sequence of words is joined with spaces.
Empty or whitespace-only inputs and inputs that are not valid UTF-8 are skipped and
counted; any other bad input raises `ConfigError` naming the line and what is accepted,
before the model is loaded.

Output (`predict_to_file`): one JSON object a line, in input order: where the input came
from (`line` in the file, or `index` in the TFDS split), its `id` when it has one, the
`input` text, and every output of the signature for that row, with the padding that only
batching added removed (`num_words`, `num_entities`, `num_tokens`, `num_masks` say how many
values of their row are real) and, for a tagger, `entities` spelled out. The file is
written under a temporary name beside the output and renamed into place at the end, so a
failed run never leaves a partial file where a good one was. See `docs/serving.md`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Union

import numpy as np
import tensorflow as tf

from tfllm import config as config_lib
from tfllm import model_dir as model_dir_lib

FORMATS = ("auto", "text", "jsonl", "tfds")
TFDS_PREFIX = "tfds:"
JSONL_SUFFIXES = (".jsonl", ".ndjson")
DEFAULT_TEXT_FIELD = "text"
DEFAULT_ID_FIELD = "id"
# Settings of the causal LM's `generate` signature (its other inputs than the prompt).
GENERATION_SETTINGS = ("max_new_tokens", "temperature", "top_k", "top_p", "seed")
# `assets.extra/` file of an export that holds the config it was made from.
EXPORT_CONFIG_FILE = os.path.join("assets.extra", "tfllm_config.json")
# Count outputs and the outputs they trim: signatures pad each row to the longest of its
# batch, so without the trim a row's answer would depend on the rows batched with it.
PADDED_OUTPUTS = {
    "num_tokens": ("token_ids",),
    "num_words": ("words", "tags"),
    "num_entities": ("entity_types", "entity_starts", "entity_ends"),
    "num_masks": ("tokens", "token_ids", "scores"),
}
# Keys each record starts with; a signature output of the same name would be ambiguous.
RECORD_KEYS = ("line", "index", "id", "input")


@dataclasses.dataclass(frozen=True)
class Item:
  """One input: where it came from (`{"line": 3}` or `{"index": 0}`), its id, its text."""
  position: Dict[str, int]
  text: str
  id: Any = None


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
  """
  description: str
  unit: str
  total: Optional[int]
  items: Callable[[], Iterator[Union[Item, Skip]]]


@dataclasses.dataclass
class Summary:
  """What a run wrote: predictions and skipped inputs by reason."""
  output: str
  unit: str
  written: int = 0
  skipped: Dict[str, int] = dataclasses.field(
      default_factory=lambda: {reason: 0 for reason in SKIP_REASONS})

  def line(self) -> str:
    """`N predictions written to FILE; K lines skipped (empty: a, invalid UTF-8: b)`."""
    reasons = ", ".join(f"{reason}: {count}" for reason, count in self.skipped.items())
    return (f"{self.written} predictions written to {self.output}; "
            f"{sum(self.skipped.values())} {self.unit} skipped ({reasons})")


# Inputs ------------------------------------------------------------------------------------

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


def _python_value(value):
  """A numpy value as JSON-ready Python: bytes -> str, arrays -> lists, scalars -> numbers."""
  if isinstance(value, bytes):
    return value.decode("utf-8", errors="replace")
  if isinstance(value, np.ndarray):
    if value.dtype == object or value.dtype.kind == "S":
      return [_python_value(v) for v in value]
    return value.tolist()
  if isinstance(value, np.generic):
    return value.item()
  return value


def _tfds_features(name: str, data_dir: Optional[str], path: str):
  """Feature names of TFDS dataset `name` (a tfllm builder, one registered, or one prepared
  in `data_dir`), read without preparing it."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tfllm.data import sources  # pylint: disable=g-import-not-at-top
  if name.split("/")[0].split(":")[0] in sources.TFLLM_BUILDERS:
    import tfllm.data.datasets  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  try:
    return list(tfds.builder(name, data_dir=data_dir or None).info.features.keys())
  except tfds.core.registered.DatasetNotFoundError:
    raise config_lib.ConfigError(
        f"input={path!r}: {name!r} is neither a registered TFDS dataset nor prepared in "
        f"--data_dir={data_dir or tfds.core.constants.DATA_DIR}; tfllm's own: "
        f"{', '.join(sources.TFLLM_BUILDERS)}") from None


def _tfds_inputs(path: str, text_field: Optional[str], id_field: str, data_dir: Optional[str],
                 model_config: Mapping, progress: bool) -> Inputs:
  # TFDS is imported only for TFDS inputs (its import takes seconds).
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tfllm.data import sources  # pylint: disable=g-import-not-at-top
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
  data_config = config_lib.default_config().data
  data_config.update(dataset=name, data_dir=data_dir or "", text_feature=text_feature)
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
    return row

  def items():
    for index, row in enumerate(tfds.as_numpy(source.examples.map(rows))):
      text = _text_or_skip(row["text"])
      if isinstance(text, Skip):
        yield text
      else:
        yield Item({"index": index}, text, _python_value(row["id"]) if has_id else None)

  return Inputs(path, "examples", source.num_examples, items)


def open_inputs(path: str, input_format: str = "auto", text_field: Optional[str] = None,
                id_field: str = DEFAULT_ID_FIELD, data_dir: Optional[str] = None,
                model_config: Optional[Mapping] = None, progress: bool = False) -> Inputs:
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

  Raises:
    ConfigError: unknown format, missing file, a JSONL line that is not an object with a
      string `text_field`, an unknown TFDS dataset, split or feature.
  """
  input_format = resolve_format(path, input_format)
  if input_format == "tfds":
    return _tfds_inputs(path, text_field, id_field, data_dir, model_config or {}, progress)
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


# The model ---------------------------------------------------------------------------------

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


def _read_json(path: str) -> Dict[str, Any]:
  if not tf.io.gfile.exists(path):
    return {}
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def _check_model_source(model_dir: Optional[str], saved_model: Optional[str]) -> None:
  if bool(model_dir) == bool(saved_model):
    raise config_lib.ConfigError(
        "give exactly one of --model_dir (a training run's directory) and --saved_model (an "
        f"exported version directory); got {'both' if model_dir else 'neither'}")
  if model_dir and not tf.io.gfile.isdir(model_dir):
    raise config_lib.ConfigError(f"model_dir={model_dir!r} does not exist; pass the "
                                 "directory a training run wrote")
  if saved_model and not tf.io.gfile.exists(os.path.join(saved_model, "saved_model.pb")):
    # Only on this error path: the saved_model module brings Keras, which serving needs not.
    from tfllm.export.saved_model import existing_versions  # pylint: disable=g-import-not-at-top
    versions = [str(version) for version in existing_versions(saved_model)]
    hint = (f"; it holds versions {', '.join(versions)}: pass "
            f"{os.path.join(saved_model, versions[-1])}" if versions else
            "; pass a version directory tfllm-export wrote, e.g. /tmp/tfllm_serving/"
            "shakespeare/1")
    raise config_lib.ConfigError(f"saved_model={saved_model!r} holds no saved_model.pb{hint}")


def model_config(model_dir: Optional[str] = None, saved_model: Optional[str] = None):
  """The model's config as a dict, read without loading the model ({} when absent)."""
  _check_model_source(model_dir, saved_model)
  if model_dir:
    return _read_json(model_dir_lib.config_path(model_dir))
  return _read_json(os.path.join(saved_model, EXPORT_CONFIG_FILE))


def register_text_ops() -> None:
  """Registers TF-Text's kernels the way `tfllm/export/tf_only.py` does (a SavedModel with
  in-graph tokenization needs them: `Op type not registered 'RegexSplitWithOffsets'`)."""
  from tfllm.export import tf_only  # pylint: disable=g-import-not-at-top
  for library in tf_only.text_op_libraries():
    tf.load_op_library(library)


def load_predictor(model_dir: Optional[str] = None,
                   saved_model: Optional[str] = None) -> Predictor:
  """The served functions of a training run (built in memory) or of an export (loaded).

  Raises:
    ConfigError: not exactly one of the two is given, or it does not exist.
    ExportError: `model_dir` lacks its config, tokenizer or checkpoint.
  """
  config = model_config(model_dir, saved_model)
  if model_dir:
    from tfllm.export import saved_model as saved_model_lib  # pylint: disable=g-import-not-at-top
    from tfllm.export import signatures as signatures_lib  # pylint: disable=g-import-not-at-top
    model, tokenizer, trained_config = saved_model_lib.load_trained(model_dir)
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


# Outputs -----------------------------------------------------------------------------------

def _entities(row: Mapping[str, Any], prefix: str) -> Optional[List[Dict[str, Any]]]:
  keys = [prefix + key for key in ("entity_types", "entity_starts", "entity_ends", "words")]
  if not all(key in row for key in keys):
    return None
  types, starts, ends, words = (row[key] for key in keys)
  return [{"type": kind, "start": start, "end": end, "text": " ".join(words[start:end])}
          for kind, start, end in zip(types, starts, ends)]


def output_rows(outputs: Mapping[str, Any], batch: int) -> List[Dict[str, Any]]:
  """A signature's batched outputs as one JSON-ready dict per row, padding removed.

  Works for any output dict: each value's row is taken along its first axis (a value
  without that axis is given to every row); counts named in PADDED_OUTPUTS (with any
  prefix, as a multi-task model may add) trim the outputs they count.
  """
  arrays = {name: value.numpy() if hasattr(value, "numpy") else np.asarray(value)
            for name, value in outputs.items()}
  rows = []
  for i in range(batch):
    row = {name: _python_value(value[i] if value.ndim and value.shape[0] == batch else value)
           for name, value in arrays.items()}
    for name in list(row):
      for count_name, padded in PADDED_OUTPUTS.items():
        if not name.endswith(count_name):
          continue
        prefix = name[:-len(count_name)]
        for target in padded:
          if isinstance(row.get(prefix + target), list):
            row[prefix + target] = row[prefix + target][:row[name]]
    for name in list(row):
      if name.endswith("entity_types"):
        entities = _entities(row, name[:-len("entity_types")])
        if entities is not None:
          row[name[:-len("entity_types")] + "entities"] = entities
    rows.append(row)
  return rows


def _record(item: Item, row: Mapping[str, Any]) -> Dict[str, Any]:
  record = dict(item.position)
  if item.id is not None:
    record["id"] = item.id
  record["input"] = item.text
  clashes = sorted(set(row) & set(RECORD_KEYS))
  if clashes:
    raise ValueError(f"the signature returns {clashes[0]!r}, a key predict lines keep for "
                     "the input's place")
  record.update(row)
  return record


class AtomicOutput:
  """A text file written under a temporary name beside `path` and renamed into place on
  `commit()`; `discard()` (or a failure inside `with`) removes the temporary file, leaving
  whatever was at `path` untouched. Works on any `tf.io.gfile` path (`gs://` too)."""

  def __init__(self, path: str):
    self.path = path
    directory, name = os.path.split(path)
    self.temporary = model_dir_lib.staging_path(directory, name)
    if directory:
      tf.io.gfile.makedirs(directory)
    self._file = tf.io.gfile.GFile(self.temporary, "w")

  def write(self, text: str) -> None:
    self._file.write(text)

  def commit(self) -> None:
    self._file.close()
    tf.io.gfile.rename(self.temporary, self.path, overwrite=True)

  def discard(self) -> None:
    self._file.close()
    model_dir_lib.remove(self.temporary)

  def __enter__(self):
    return self

  def __exit__(self, kind, value, traceback):
    if kind is None:
      self.commit()
    else:
      self.discard()
    return False


def _batches(items: Iterator[Union[Item, Skip]], batch_size: int, summary: Summary, bar):
  batch = []
  for item in items:
    bar.update(1)
    if isinstance(item, Skip):
      summary.skipped[item.reason] += 1
      continue
    batch.append(item)
    if len(batch) == batch_size:
      yield batch
      batch = []
  if batch:
    yield batch


def _check_output(output: str, inputs: Inputs) -> None:
  if not output:
    raise config_lib.ConfigError("output is required: the .jsonl file to write")
  if tf.io.gfile.isdir(output):
    raise config_lib.ConfigError(f"output={output!r} is a directory; give a file name such as "
                                 f"{os.path.join(output, 'predictions.jsonl')}")
  if os.path.abspath(output) == os.path.abspath(inputs.description):
    raise config_lib.ConfigError(f"output={output!r} is the input file; write elsewhere")


def predict(predictor: Predictor, inputs: Inputs, output: str, batch_size: int = 32,
            settings: Optional[Mapping[str, Any]] = None, progress: bool = False) -> Summary:
  """Runs the chosen signature over `inputs` in batches and writes `output` atomically.

  Args:
    predictor: from `load_predictor` (or any `Predictor`).
    inputs: from `open_inputs`.
    output: the JSONL file to write (replaced only once every prediction is written).
    batch_size: inputs per signature call.
    settings: generation settings (GENERATION_SETTINGS); any given selects `generate`.
    progress: show a progress bar on stderr.

  Returns:
    A `Summary` of what was written and skipped.
  """
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  if batch_size < 1:
    raise config_lib.ConfigError(f"batch_size={batch_size} is not accepted; use 1 or more")
  _check_output(output, inputs)
  name, text_input, fixed = choose_signature(predictor, settings or {})
  function = predictor.signatures[name]
  summary = Summary(output, inputs.unit)
  with tqdm(total=inputs.total, unit=" inputs", file=sys.stderr, disable=not progress,
            dynamic_ncols=True) as bar, AtomicOutput(output) as out:
    for batch in _batches(inputs.items(), batch_size, summary, bar):
      texts = tf.constant(np.array([item.text.encode("utf-8") for item in batch], object))
      rows = output_rows(function(**{text_input: texts}, **fixed), len(batch))
      out.write("".join(json.dumps(_record(item, row), ensure_ascii=False) + "\n"
                        for item, row in zip(batch, rows)))
      summary.written += len(batch)
  return summary


def predict_to_file(output: str, input_path: str, model_dir: Optional[str] = None,
                    saved_model: Optional[str] = None, input_format: str = "auto",
                    text_field: Optional[str] = None, id_field: str = DEFAULT_ID_FIELD,
                    data_dir: Optional[str] = None, batch_size: int = 32,
                    settings: Optional[Mapping[str, Any]] = None,
                    progress: bool = False) -> Summary:
  """`predict` of a model directory or export over a file or TFDS split (see the module
  docstring). Inputs and flags are checked before the model is loaded.

  Raises:
    ConfigError: a bad argument or input (what `open_inputs`, `choose_signature` and the
      model checks raise), before anything is written.
  """
  config = model_config(model_dir, saved_model)
  inputs = open_inputs(input_path, input_format, text_field, id_field, data_dir, config,
                       progress)
  _check_output(output, inputs)
  predictor = load_predictor(model_dir, saved_model)
  return predict(predictor, inputs, output, batch_size, settings, progress)


def progress_wanted(enabled: bool, stream=None) -> bool:
  """Whether to draw a progress bar: asked for and `stream` (stderr) is a terminal."""
  stream = stream if stream is not None else sys.stderr
  return bool(enabled) and hasattr(stream, "isatty") and stream.isatty()


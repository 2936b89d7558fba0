"""Batch inference through the served signatures: inputs from a file or TFDS, JSONL out.

The model is either a training run's directory (its signatures are built in memory with
`tfllm.export.signatures.signatures_for`, nothing is written) or an exported TF Serving
version directory (loaded with `tf.saved_model.load`, TF-Text's kernels registered first).
Either way the functions called are the ones TF Serving runs, so a prediction here is the
prediction a server would give.

This module writes the output; `tfllm.export.predict_inputs` reads the inputs and
`tfllm.export.predictor` loads the model and chooses the signature.

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

Scoring (`score=True`, a labelled TFDS split): the predictions are also compared with the
split's labels by `tfllm.export.score`, the evaluation report's metrics computed from the
served outputs (`Summary.metrics`, optionally written as JSON to `metrics_output`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any, Dict, Iterator, List, Mapping, Optional, Union

import numpy as np
import tensorflow as tf

from tfllm import config as config_lib
from tfllm import model_dir as model_dir_lib
from tfllm.export.predict_inputs import (DEFAULT_ID_FIELD, SKIP_REASONS, Inputs, Item, Skip,
                                         open_inputs, python_value)
from tfllm.export.predictor import Predictor, choose_signature, load_predictor, model_config

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


@dataclasses.dataclass
class Summary:
  """What a run wrote: predictions and skipped inputs by reason; with scoring, the metrics,
  the scorer's table (`report`) and what was scored (`scored`, the input's description)."""
  output: str
  unit: str
  written: int = 0
  skipped: Dict[str, int] = dataclasses.field(
      default_factory=lambda: {reason: 0 for reason in SKIP_REASONS})
  metrics: Optional[Dict[str, float]] = None
  report: str = ""
  scored: str = ""

  def line(self) -> str:
    """`N predictions written to FILE; K lines skipped (empty: a, invalid UTF-8: b)`."""
    reasons = ", ".join(f"{reason}: {count}" for reason, count in self.skipped.items())
    return (f"{self.written} predictions written to {self.output}; "
            f"{sum(self.skipped.values())} {self.unit} skipped ({reasons})")

  def score_line(self) -> str:
    """`score of tfds:NAME/SPLIT (N examples): accuracy 0.8624  class/macro/f1 ...`, the
    evaluation report's format ("" without scoring)."""
    if self.metrics is None:
      return ""
    values = "  ".join(f"{key} {value:.4f}" for key, value in sorted(self.metrics.items()))
    return f"score of {self.scored} ({self.written} examples): {values}"


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
    row = {name: python_value(value[i] if value.ndim and value.shape[0] == batch else value)
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


def _check_output(output: str, inputs: Inputs, name: str = "output") -> None:
  if not output:
    raise config_lib.ConfigError(f"{name} is required: the file to write")
  if tf.io.gfile.isdir(output):
    raise config_lib.ConfigError(f"{name}={output!r} is a directory; give a file name such as "
                                 f"{os.path.join(output, 'predictions.jsonl')}")
  if os.path.abspath(output) == os.path.abspath(inputs.description):
    raise config_lib.ConfigError(f"{name}={output!r} is the input file; write elsewhere")


def predict(predictor: Predictor, inputs: Inputs, output: str, batch_size: int = 32,
            settings: Optional[Mapping[str, Any]] = None, progress: bool = False,
            scorer=None) -> Summary:
  """Runs the chosen signature over `inputs` in batches and writes `output` atomically.

  Args:
    predictor: from `load_predictor` (or any `Predictor`).
    inputs: from `open_inputs`.
    output: the JSONL file to write (replaced only once every prediction is written).
    batch_size: inputs per signature call.
    settings: generation settings (GENERATION_SETTINGS); any given selects `generate`.
    progress: show a progress bar on stderr.
    scorer: a `tfllm.export.score.Scorer` (inputs opened with a label field) to compare the
      predictions with the labels; None: no scoring.

  Returns:
    A `Summary` of what was written and skipped (and the scores).
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
      if scorer is not None:
        scorer.add([item.label for item in batch], rows)
      out.write("".join(json.dumps(_record(item, row), ensure_ascii=False) + "\n"
                        for item, row in zip(batch, rows)))
      summary.written += len(batch)
  if scorer is not None:
    summary.metrics, summary.report = scorer.result(), scorer.report()
    summary.scored = inputs.description
  return summary


def predict_to_file(output: str, input_path: str, model_dir: Optional[str] = None,
                    saved_model: Optional[str] = None, input_format: str = "auto",
                    text_field: Optional[str] = None, id_field: str = DEFAULT_ID_FIELD,
                    data_dir: Optional[str] = None, batch_size: int = 32,
                    settings: Optional[Mapping[str, Any]] = None,
                    progress: bool = False, score: bool = False,
                    label_field: Optional[str] = None,
                    metrics_output: Optional[str] = None,
                    litert: Optional[str] = None) -> Summary:
  """`predict` of a model directory or export over a file or TFDS split (see the module
  docstring). Inputs and flags are checked before the model is loaded.

  Args (besides `predict`'s):
    score: compare the predictions with the labels of the TFDS split `input_path`.
    label_field: the split's label feature (None: the model's `config.data.label_feature`).
    metrics_output: with `score`, a JSON file for the metrics (written atomically).
    litert: a LiteRT version directory, instead of `model_dir` or `saved_model`.

  Raises:
    ConfigError: a bad argument or input (what `open_inputs`, `choose_signature` and the
      model checks raise; scoring a file, a language model or an unknown label feature),
      before anything is written.
  """
  from tfllm.export import score as score_lib  # imports TFDS (seconds): only when scoring
  config = model_config(model_dir, saved_model, litert)
  for name, value in (("metrics_output", metrics_output), ("label_field", label_field)):
    if value and not score:
      raise config_lib.ConfigError(f"{name}={value!r} is for scoring; add --score or drop "
                                   f"--{name}")
  if score:
    score_lib.check_scored_task(config)   # before a TFDS split is prepared
  if score and not label_field:
    label_field = config.get("data", {}).get("label_feature") or "label"
  inputs = open_inputs(input_path, input_format, text_field, id_field, data_dir, config,
                       progress, label_field if score else None)
  _check_output(output, inputs)
  scorer = score_lib.scorer_for(config, inputs) if score else None
  if metrics_output:
    _check_output(metrics_output, inputs, "metrics_output")
    if os.path.abspath(metrics_output) == os.path.abspath(output):
      raise config_lib.ConfigError(f"metrics_output={metrics_output!r} is the predictions' "
                                   "output; give another file")
  predictor = load_predictor(model_dir, saved_model, litert)
  summary = predict(predictor, inputs, output, batch_size, settings, progress, scorer)
  if metrics_output:
    with AtomicOutput(metrics_output) as out:
      out.write(json.dumps(dict(input=inputs.description, examples=summary.written,
                                **summary.metrics), indent=2, sort_keys=True) + "\n")
  return summary


def progress_wanted(enabled: bool, stream=None) -> bool:
  """Whether to draw a progress bar: asked for and `stream` (stderr) is a terminal."""
  stream = stream if stream is not None else sys.stderr
  return bool(enabled) and hasattr(stream, "isatty") and stream.isatty()


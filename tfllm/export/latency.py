"""Served latency and throughput of an exported SavedModel, measured in a TensorFlow-only
process (`tfllm/export/tf_only.py`: what a model server runs, without tfllm or keras).

`run_tf_only` is the one way tests and benchmarks call an export from outside: correctness
checks pass `calls`, measurements pass `latency`.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

import keras
import keras_hub
import numpy as np

from tfllm.data.tokenizers import WORD_PIECE_RESERVED
from tfllm.export import litert, predictor
from tfllm.export.saved_model import export_saved_model
from tfllm.models import build, generation

TF_ONLY_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tf_only.py")


def run_tf_only(path: str, calls=(), latency=(), list_ops: bool = False,
                timeout: float = 600.0) -> dict:
  """Runs requests against the SavedModel at `path` in a fresh TensorFlow-only process.

  Args:
    path: a SavedModel (version) directory.
    calls: `(signature, {input: numpy array})` pairs, run once each.
    latency: `(label, signature, inputs, iterations)` tuples, timed per call.
    list_ops: also return the graph's ops split into core / text / other.
    timeout: seconds before the process is killed (`subprocess.TimeoutExpired`).

  Returns:
    The result dict described in `tf_only.py`.
  """
  request = {"path": path, "calls": list(calls), "latency": list(latency),
             "list_ops": list_ops}
  with tempfile.TemporaryDirectory() as scratch:
    request_path = os.path.join(scratch, "request.pkl")
    result_path = os.path.join(scratch, "result.pkl")
    with open(request_path, "wb") as f:
      pickle.dump(request, f)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    process = subprocess.run([sys.executable, TF_ONLY_SCRIPT, request_path, result_path],
                             capture_output=True, text=True, timeout=timeout, env=env,
                             cwd=scratch, check=False)
    if process.returncode != 0:
      tail = "\n".join(process.stderr.strip().splitlines()[-5:])
      raise RuntimeError(f"tf_only.py exited {process.returncode}: {tail}")
    with open(result_path, "rb") as f:
      return pickle.load(f)


def percentiles(times: List[float]) -> Dict[str, float]:
  """p50 / p99 / mean in milliseconds of per-call `times` (seconds)."""
  values = np.asarray(times) * 1000.0
  return {"p50_ms": float(np.percentile(values, 50)), "p99_ms": float(np.percentile(values, 99)),
          "mean_ms": float(values.mean())}


def measure_served(path: str, signature: str, make_inputs, batch_sizes=(1, 32),
                   iterations: int = 50, timeout: float = 600.0,
                   items_per_row: Optional[int] = None) -> Dict[str, dict]:
  """Latency percentiles and throughput of `signature` for each batch size.

  Args:
    path: the SavedModel version directory.
    signature: signature name.
    make_inputs: callable(batch size) -> {input name: numpy array}.
    batch_sizes: batch sizes to time.
    iterations: timed calls per batch size (after one warm-up call).
    items_per_row: what one row produces for throughput (e.g. new tokens per prompt); rows
      per second when None.

  Returns:
    batch size -> {p50_ms, p99_ms, mean_ms, rows_per_s (, items_per_s)}.
  """
  runs = [(str(b), signature, make_inputs(b), iterations) for b in batch_sizes]
  result = run_tf_only(path, latency=runs, timeout=timeout)
  figures = {}
  for batch in batch_sizes:
    stats = percentiles(result["latency"][str(batch)])
    stats["rows_per_s"] = batch / (stats["mean_ms"] / 1000.0)
    if items_per_row:
      stats["items_per_s"] = stats["rows_per_s"] * items_per_row
    figures[batch] = stats
  return figures


def synthetic_word_piece_tokenizer(vocab_size: int):
  """A WordPiece tokenizer of `vocab_size` tokens (`w0 w1 ...` after the reserved ones): for
  timing models whose weights, and so whose vocabulary, do not matter."""
  words = [f"w{i}" for i in range(vocab_size - len(WORD_PIECE_RESERVED))]
  return keras_hub.tokenizers.WordPieceTokenizer(
      vocabulary=list(WORD_PIECE_RESERVED) + words, oov_token="[UNK]")


def _time(function, iterations):
  function()
  times = []
  for _ in range(iterations):
    start = time.perf_counter()
    function()
    times.append(time.perf_counter() - start)
  return times


def measure_generation(config, export_dir: str, prompt_length: int = 16,
                       max_new_tokens: int = 64, batch_sizes=(1, 32), iterations: int = 10,
                       keras_hub_jit_compile=(False, True)) -> dict:
  """Tokens/s of an exported causal LM, served, vs KerasHub's `GPT2CausalLM.generate`.

  Builds `config`'s model (random weights; a GPT-2 style `config.model`) and a KerasHub
  GPT-2 of the same shape, both greedy over a buffer of `prompt_length + max_new_tokens`
  (the KV-cache length), no stop token for KerasHub; the export's own eos stop is counted
  (`num_tokens`), so its tokens/s are tokens actually produced. The export is timed in a
  TensorFlow-only process, KerasHub in this one, one after the other.

  Returns:
    `{"served": {batch: stats}, "keras_hub": {"xla"|"no_xla": {batch: stats}},
    "tfllm_in_process_xla": {batch: stats}}`; stats hold p50_ms, p99_ms, mean_ms and
    tokens_per_s.
  """
  config = config.copy_and_resolve_references()
  length = prompt_length + max_new_tokens
  config.export.update(max_new_tokens=max_new_tokens, temperature=0.0, max_length=length,
                       warmup=False)
  keras.utils.set_random_seed(0)
  model = build(config)
  tokenizer = synthetic_word_piece_tokenizer(config.model.vocab_size)
  path = export_saved_model(model, tokenizer, config, export_dir)
  # The start token plus prompt_length - 1 words: prompts of prompt_length tokens.
  prompt = " ".join(f"w{i}" for i in range(prompt_length - 1)).encode()

  def prompts(batch):
    return {"prompt": np.array([prompt] * batch, object)}

  served = run_tf_only(path, calls=[("serving_default", prompts(b)) for b in batch_sizes],
                       latency=[(str(b), "serving_default", prompts(b), iterations)
                                for b in batch_sizes])
  results = {"served": {}, "keras_hub": {}, "tfllm_in_process_xla": {}}
  for batch, outputs in zip(batch_sizes, served["outputs"]):
    stats = percentiles(served["latency"][str(batch)])
    stats["tokens_per_s"] = float(np.sum(outputs["num_tokens"])) / (stats["mean_ms"] / 1000)
    results["served"][batch] = stats
  results["keras_hub"] = _keras_hub_generation(config.model, prompt_length, max_new_tokens,
                                               batch_sizes, iterations, keras_hub_jit_compile)
  generator = generation.Generator(model, tokenizer=None, stop_token_ids=(), max_length=length)
  for batch in batch_sizes:
    ids = [list(range(5, 5 + prompt_length))] * batch
    stats = percentiles(_time(lambda: generator.generate(ids, max_new_tokens=max_new_tokens),
                              iterations))
    stats["tokens_per_s"] = batch * max_new_tokens / (stats["mean_ms"] / 1000)
    results["tfllm_in_process_xla"][batch] = stats
  return results


def _keras_hub_generation(m, prompt_length: int, max_new_tokens: int, batch_sizes,
                          iterations: int, jit_compiles) -> dict:
  """Greedy tokens/s of a random KerasHub GPT-2 of `config.model` `m`'s shape, no stop token:
  `{"xla"|"no_xla": {batch: stats}}`, one entry per `jit_compiles` setting."""
  length = prompt_length + max_new_tokens
  backbone = keras_hub.models.GPT2Backbone(
      vocabulary_size=m.vocab_size, num_layers=m.num_layers, num_heads=m.num_heads,
      hidden_dim=m.hidden_dim, intermediate_dim=m.intermediate_dim, dropout=0.0,
      max_sequence_length=m.max_sequence_length)
  reference = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
  results = {}
  for jit in jit_compiles:
    reference.compile(sampler="greedy", jit_compile=jit)
    label = "xla" if jit else "no_xla"
    results[label] = {}
    for batch in batch_sizes:
      token_ids = np.zeros((batch, length), np.int32)
      token_ids[:, :prompt_length] = np.arange(prompt_length) + 5
      padding_mask = np.zeros((batch, length), bool)
      padding_mask[:, :prompt_length] = True
      inputs = {"token_ids": token_ids, "padding_mask": padding_mask}
      stats = percentiles(_time(lambda: reference.generate(inputs, stop_token_ids=None),
                                iterations))
      stats["tokens_per_s"] = batch * max_new_tokens / (stats["mean_ms"] / 1000)
      results[label][batch] = stats
  return results


def measure_classifier(config, export_dir: str, words: int = 20, batch_sizes=(1, 32),
                       iterations: int = 50) -> dict:
  """Served latency and examples/s of a sequence or token classifier built from `config`
  (random weights, synthetic vocabulary), timed in a TensorFlow-only process.

  Returns:
    batch size -> {p50_ms, p99_ms, mean_ms, rows_per_s}.
  """
  config = config.copy_and_resolve_references()
  config.export.warmup = False
  keras.utils.set_random_seed(0)
  model = build(config)
  tokenizer = synthetic_word_piece_tokenizer(config.model.vocab_size)
  path = export_saved_model(model, tokenizer, config, export_dir)
  return measure_saved_classifier(path, words, batch_sizes, iterations)


def measure_saved_classifier(path: str, words: int = 20, batch_sizes=(1, 32),
                             iterations: int = 50) -> dict:
  """Served latency and examples/s of an exported classifier (`serving_default(text)`) as it
  is, e.g. a fine-tuned, LoRA-merged or int8 export, in a TensorFlow-only process.

  Args:
    path: the SavedModel (a version directory of `tfllm-export`).
    words: words of the synthetic text each example sends.

  Returns:
    batch size -> {p50_ms, p99_ms, mean_ms, rows_per_s}.
  """
  predictor.check_saved_model(path)
  text = " ".join(f"word{i}" for i in range(words)).encode()
  return measure_served(path, "serving_default",
                        lambda batch: {"text": np.array([text] * batch, object)},
                        batch_sizes=batch_sizes, iterations=iterations)


def measure_litert_classifier(path: str, words: int = 20, batch_sizes=(1, 32),
                              iterations: int = 50, num_threads: Optional[int] = None) -> dict:
  """Latency and examples/s of a LiteRT export (`tfllm-export --format=litert`) in
  `tf.lite.Interpreter`, in this process (the interpreter needs no server).

  Two figures per batch size: the whole text-in call (`LiteRTClassifier(texts)`:
  tokenization, the interpreter, decoding to labels or tags) and, under `interpreter`, the
  interpreter alone on the encoded ids (what an edge app that tokenizes natively pays).

  Args:
    path: the LiteRT version directory (holding model.tflite and litert.json).
    words: words of the synthetic text each example sends.
    num_threads: the interpreter's threads (None: LiteRT's default).

  Returns:
    batch size -> {p50_ms, p99_ms, mean_ms, rows_per_s, interpreter: {p50_ms, p99_ms,
    mean_ms, rows_per_s}}.
  """
  predictor.check_litert(path)
  classifier = litert.LiteRTClassifier(path, num_threads=num_threads)
  text = " ".join(f"word{i}" for i in range(words))
  figures = {}
  for batch in batch_sizes:
    texts = [text] * batch
    features, _ = classifier.encode(texts)
    stats = percentiles(_time(lambda: classifier(texts), iterations))
    alone = percentiles(_time(lambda: classifier.run_ids(**features), iterations))
    for figure in (stats, alone):
      figure["rows_per_s"] = batch / (figure["mean_ms"] / 1000.0)
    stats["interpreter"] = alone
    figures[batch] = stats
  return figures

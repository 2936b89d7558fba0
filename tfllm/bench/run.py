"""`run(config, mode, ...)`: the benchmark a `tfllm-bench` command line describes.

Modes:
  train      tokens/s, step time, MFU, peak memory of the training step (`bench.train`)
  generate   greedy generation tokens/s and per-token latency (`bench.generate`)
  attention  block-wise vs standard attention layer, time and memory (`bench.attention`)
  pipeline   input-pipeline tokens/s (`tfllm.data.throughput`)
  serve      exported SavedModel latency p50/p99 and throughput, in a TensorFlow-only
             process (`tfllm.export.latency`; causal LMs also time KerasHub's generate),
             or a LiteRT export's in `tf.lite.Interpreter`
  hlo        XLA's cost of the compiled train step, FLOPs, bytes, fusions, peak buffers
             and H100 roofline, tfllm next to KerasHub (`bench.hlo`)
"""

from __future__ import annotations

import importlib
import json
import os
from typing import Callable, Dict, List, Optional, Sequence

import keras

from tfllm import config as config_lib
from tfllm import runtime
from tfllm.bench import hlo, machine, mfu, report, sweep as sweep_lib
from tfllm.bench.attention import benchmark_attention
from tfllm.bench.generate import benchmark_generate
from tfllm.bench.train import benchmark_train

MODES = ("train", "generate", "attention", "pipeline", "serve", "hlo")


def run(config, mode: str = "train", compare: Optional[str] = None,
        sweeps: Sequence[str] = (), batch_size: int = 0, steps: int = 10, repeats: int = 5,
        jit_compile: bool = True, mixed_precision: str = "float32",
        peak_flops: float = 0.0, prompt_length: int = 16, new_tokens: int = 64,
        attention_block_size: int = 512, output: Optional[str] = None,
        plot: Optional[str] = None, export_dir: Optional[str] = None,
        saved_model: Optional[str] = None, litert: Optional[str] = None,
        log: Callable[[str], None] = print) -> Dict:
  """Runs one benchmark mode (with its sweeps), prints tables, writes JSON and a plot.

  Args:
    config: full validated config.
    mode: one of `MODES`.
    compare: "keras_hub" to time KerasHub's model of the same shape alongside (train,
      generate), or None.
    sweeps: `"NAME=V1,V2,..."` strings (`sweep.SWEEP_KEYS`); train mode reruns at each value
      and fits the growth; generate mode sweeps `batch_size`; attention mode `seq_len`.
    batch_size: examples per step (train; 0 = `config.train.global_batch_size`) or per
      call (attention; 0 = 1).
    steps: train steps per timed round.
    repeats: timed rounds (candidates alternate within a round).
    jit_compile: XLA on every side.
    mixed_precision: Keras dtype policy for the models ("float32", "mixed_bfloat16",
      "mixed_float16").
    peak_flops: peak FLOP/s per device for MFU; 0 = the table, or a measured matmul on CPU.
    prompt_length, new_tokens: generation shape.
    attention_block_size: block size of the block-wise attention (attention mode).
    output: JSON path (None: not written).
    plot: PNG path for sweeps (None: next to `output` as `.png`, if `output` is set).
    export_dir: serve mode: where the model of `config` (random weights) is exported.
    saved_model: serve mode: an exported classifier (a `tfllm-export` version directory)
      timed as it is, instead of exporting `config`'s model.
    litert: serve mode: a LiteRT export (a `tfllm-export --format=litert` version
      directory) timed in `tf.lite.Interpreter` with the thread plan's intra-op threads.
    log: where tables and progress lines go.

  Returns:
    The result dict written to `output`, with `machine` (`bench.machine`: CPU, cores, load
    average before and after, the share of CPU time other work took, and whether that made
    the run busy).
  """
  if mode not in MODES:
    raise config_lib.ConfigError(f"mode={mode!r} is not accepted; use one of: "
                                 f"{', '.join(MODES)}")
  if repeats < 1 or steps < 1:
    raise config_lib.ConfigError(f"repeats={repeats} and steps={steps} must be >= 1")
  parsed = [sweep_lib.parse_sweep(s) for s in sweeps]
  threads = runtime.plan_threads(config.runtime)
  log(runtime.configure_threads(threads) or threads.describe())
  previous_policy = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy(mixed_precision)
  before = machine.describe()
  try:
    result = _run_mode(config, mode, compare, parsed, batch_size, steps, repeats, jit_compile,
                       mixed_precision, peak_flops, prompt_length, new_tokens,
                       attention_block_size, export_dir, saved_model, litert,
                       threads.intra_op, log)
  finally:
    keras.mixed_precision.set_global_policy(previous_policy)
  result["machine"] = machine.finish(before)
  log(machine.summary(result["machine"]))
  if output:
    report.write_json(result, output)
    log(f"wrote {output}")
  if result.get("sweeps"):
    plot = plot or (os.path.splitext(output)[0] + ".png" if output else None)
    if plot:
      sweep_lib.plot_sweeps(result["sweeps"], plot)
      result["plot"] = plot
      log(f"wrote {plot}")
  return result


def _peak(mixed_precision, peak_flops) -> mfu.Peak:
  dtype = {"mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}.get(mixed_precision,
                                                                          "float32")
  return mfu.device_peak(dtype, override=peak_flops or None)


def _run_mode(config, mode, compare, sweeps, batch_size, steps, repeats, jit_compile,
              mixed_precision, peak_flops, prompt_length, new_tokens, attention_block_size,
              export_dir, saved_model, litert, litert_threads, log) -> Dict:
  if mode == "train":
    return _train(config, compare, sweeps, batch_size, steps, repeats, jit_compile,
                  _peak(mixed_precision, peak_flops), log)
  if mode == "generate":
    batch_sizes = _only_sweep(sweeps, "batch_size", mode) or ([batch_size] if batch_size
                                                              else [1, 8])
    result = benchmark_generate(config, batch_sizes, prompt_length, new_tokens, repeats,
                                jit_compile, compare, log)
    log(report.generate_table(result))
    return result
  if mode == "attention":
    _no_compare(compare, mode)
    lengths = _only_sweep(sweeps, "seq_len", mode) or [4096, 8192]
    result = benchmark_attention(config, lengths, attention_block_size, batch_size or 1,
                                 repeats, jit_compile, log=log)
    log(report.attention_table(result))
    return result
  if mode == "hlo":
    if sweeps:
      raise config_lib.ConfigError("hlo mode takes no --sweep; set the shape with "
                                   "--batch_size and --config.data.sequence_length=")
    result = hlo.benchmark_hlo(config, batch_size, compare, log)
    log(hlo.table(result))
    return result
  if mode == "pipeline":
    _no_compare(compare, mode)
    throughput = _optional_module("tfllm.data.throughput", mode)
    result = dict(mode="pipeline", **throughput.measure_pipeline_throughput(config))
    log(f"pipeline ({result['task']}): {result['tokens_per_s']:.0f} tokens/s "
        f"({result['batches']} batches of {result['batch_size']}x{result['sequence_length']})")
    return result
  given = [name for name, value in (("--export_dir", export_dir),
                                    ("--saved_model", saved_model), ("--litert", litert))
           if value]
  if len(given) != 1:
    raise config_lib.ConfigError(
        "serve mode needs one of --export_dir, a directory the model of --config is "
        "exported to (random weights) and served from, --saved_model, an exported "
        "classifier to time as it is, or --litert, a LiteRT export to time in its "
        "interpreter" + (f"; got {' and '.join(given)}" if given else ""))
  latency = _optional_module("tfllm.export.latency", mode)
  batch_sizes = _only_sweep(sweeps, "batch_size", mode) or ([batch_size] if batch_size
                                                            else [1, 32])
  if litert:
    _no_compare(compare, mode)
    figures = latency.measure_litert_classifier(litert, batch_sizes=batch_sizes,
                                                iterations=repeats, num_threads=litert_threads)
  elif saved_model:
    _no_compare(compare, mode)
    figures = latency.measure_saved_classifier(saved_model, batch_sizes=batch_sizes,
                                               iterations=repeats)
  elif config.task.name == "causal_lm":
    # Served generation in a TensorFlow-only process, with KerasHub's generate beside it.
    figures = latency.measure_generation(config, export_dir, prompt_length, new_tokens,
                                         batch_sizes, iterations=repeats)
  elif config.task.name in ("sequence_classification", "token_classification"):
    _no_compare(compare, mode)
    figures = latency.measure_classifier(config, export_dir, batch_sizes=batch_sizes,
                                         iterations=repeats)
  else:
    raise config_lib.ConfigError(f"serve mode measures causal_lm and classifier exports, "
                                 f"not task {config.task.name!r}")
  served = (dict(litert=litert, interpreter_threads=litert_threads) if litert
            else dict(saved_model=saved_model) if saved_model
            else dict(task=config.task.name, export_dir=export_dir))
  result = dict(mode="serve", **served, results=figures)
  log(json.dumps(figures, indent=1, default=str))
  return result


def _train(config, compare, sweeps, batch_size, steps, repeats, jit_compile, peak, log):
  if peak.flops_per_second:
    log(f"peak: {peak.flops_per_second / 1e9:.1f} GFLOP/s ({peak.source})")
  if not sweeps:
    result = benchmark_train(config, batch_size, steps, repeats, jit_compile, compare, peak,
                             log)
    log(report.train_table(result))
    return result
  summaries = []
  for name, values in sweeps:
    points = []
    for value in values:
      result = benchmark_train(sweep_lib.config_at(config, name, value), batch_size, steps,
                               repeats, jit_compile, compare, peak, log)
      log(report.train_table(result))
      tfllm = result["models"]["tfllm"]
      points.append(dict(value=value, step_seconds=tfllm["step_seconds"],
                         step_cpu_seconds=tfllm["step_cpu_seconds"],
                         tokens_per_second=tfllm["tokens_per_second"], mfu=tfllm["mfu"],
                         peak_bytes=tfllm["memory"].get("peak_bytes"),
                         device_bytes=tfllm["device_bytes"],
                         collectives=tfllm.get("collectives"),
                         memory_kind=tfllm["memory"].get("kind"), result=result))
    summary = sweep_lib.summarize_sweep(name, points)
    log(report.sweep_table(summary))
    summaries.append(summary)
  return dict(mode="train", sweeps=summaries)


def _only_sweep(sweeps, name: str, mode: str) -> List[int]:
  for sweep_name, values in sweeps:
    if sweep_name != name:
      raise config_lib.ConfigError(f"{mode} mode sweeps only {name} (--sweep={name}=...), "
                                   f"not {sweep_name}")
    return values
  return []


def _no_compare(compare, mode):
  if compare:
    raise config_lib.ConfigError(f"--compare={compare} is for train and generate modes, "
                                 f"not {mode}")


def _optional_module(name: str, mode: str):
  try:
    return importlib.import_module(name)
  except ImportError as error:
    raise ValueError(f"{mode} mode needs {name}, which is not available here "
                     f"({error})") from None

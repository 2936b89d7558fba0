"""Training throughput of tfllm's GPT-2 124M beside KerasHub's, under Keras 3's JAX backend.

Runs where TensorFlow is absent (a JAX+CUDA machine): tfllm's layers and models are written in
`keras.ops` (docs/jax.md). For each batch size, one jitted train step per model (forward,
token cross-entropy in float32, gradients, an AdamW update; `model.stateless_call` and
`optimizer.stateless_apply` under `jax.jit`), then timed rounds that alternate the two
models (the order flips each round), so that a drift in the machine hits both alike.

    KERAS_BACKEND=jax python tools/jax_train_bench.py                  # GPT-2 124M, seq 1024
    KERAS_BACKEND=jax python tools/jax_train_bench.py --quick          # tiny shape, CPU check

Reports, per model and batch size: tokens/s (median round), the step time, MFU against the
device's dense peak for the compute dtype (`tfllm.training.flops`; 989 TFLOP/s bf16 on an
H200) with FLOPs per token from tfllm's formula `6 N + 12 L H Q T`, and XLA's memory
analysis of the compiled step (arguments + outputs + temporaries - aliased). Once: a measured
bf16 matmul rate, the device's peak memory in use over the whole run. The table comes last;
`--output=FILE.json` also writes every figure. docs/benchmarks.md has the H200 commands.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402  (after the backend is chosen)
import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402

from tfllm import models  # noqa: E402
from tfllm.bench import keras_hub_models  # noqa: E402
from tfllm.training import flops  # noqa: E402

H200_BF16_PEAK = 989e12   # dense, the table's "H200" row (tfllm.training.flops)
# The quick shape: seconds on a CPU, every code path of the full run.
QUICK_MODEL = dict(vocab_size=512, num_layers=2, hidden_dim=64, num_heads=2,
                   intermediate_dim=128, max_sequence_length=64)


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true",
                      help="tiny shape (2 layers, width 64, seq 64), batch 2, 2 rounds of 2 "
                           "steps: checks the script on a CPU; its figures mean nothing")
  parser.add_argument("--batch_sizes", default=None,
                      help="comma-separated (default 8,16,32; --quick: 2)")
  parser.add_argument("--sequence_length", type=int, default=None,
                      help="default: the config's (1024; --quick: 64)")
  parser.add_argument("--rounds", type=int, default=None, help="timed rounds per model "
                      "(default 3; --quick: 2)")
  parser.add_argument("--steps", type=int, default=None, help="steps per round (default 10; "
                      "--quick: 2)")
  parser.add_argument("--precision", default="mixed_bfloat16",
                      choices=("mixed_bfloat16", "float32", "bfloat16"),
                      help="Keras dtype policy")
  parser.add_argument("--matmul_size", type=int, default=None,
                      help="side of the square bf16 matmul timed once (default 8192; --quick: "
                           "256)")
  parser.add_argument("--output", default=None, help="also write the figures to this JSON file")
  args = parser.parse_args(argv)
  quick = args.quick
  args.batch_sizes = [int(b) for b in (args.batch_sizes or ("2" if quick else "8,16,32"))
                      .split(",")]
  args.rounds = args.rounds or (2 if quick else 3)
  args.steps = args.steps or (2 if quick else 10)
  args.matmul_size = args.matmul_size or (256 if quick else 8192)
  return args


def gpt_small_model_section(quick: bool):
  """`configs/gpt_small.py`'s `model` section (the quick shape shrinks it)."""
  spec = importlib.util.spec_from_file_location("gpt_small", REPO / "configs" / "gpt_small.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  if quick:
    config.model.update(QUICK_MODEL)
    config.tokenizer.vocab_size = QUICK_MODEL["vocab_size"]
    config.data.sequence_length = QUICK_MODEL["max_sequence_length"]
  return config


def build_models(config):
  """{name: causal LM taking {token_ids, padding_mask} to logits} of the same shape."""
  tfllm_lm = models.build(config)
  # GPT2CausalLM without a preprocessor: the backbone and its tied reverse projection.
  hub_lm = keras_hub.models.GPT2CausalLM(backbone=keras_hub_models.gpt2_backbone(config.model),
                                         preprocessor=None)
  return {"tfllm": tfllm_lm, "keras_hub": hub_lm}


def flops_per_token(model, config, sequence_length: int) -> float:
  section = config.model
  return flops.training_flops_per_token(
      flops.flops_parameter_count(model), section.num_layers, section.num_heads,
      section.head_dim or section.hidden_dim // section.num_heads, sequence_length)


def make_train_step(model, optimizer):
  """A jitted `(trainable, non_trainable, optimizer_vars, features, labels) -> (..., loss)`."""

  def loss_fn(trainable, non_trainable, features, labels):
    logits, non_trainable = model.stateless_call(trainable, non_trainable, features,
                                                 training=True)
    # Cross-entropy in float32 whatever the compute dtype (the house rule for losses).
    losses = keras.losses.sparse_categorical_crossentropy(
        labels, keras.ops.cast(logits, "float32"), from_logits=True)
    return keras.ops.mean(losses), non_trainable

  def step(trainable, non_trainable, optimizer_variables, features, labels):
    (loss, non_trainable), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        trainable, non_trainable, features, labels)
    trainable, optimizer_variables = optimizer.stateless_apply(optimizer_variables, grads,
                                                               trainable)
    return trainable, non_trainable, optimizer_variables, loss

  return jax.jit(step, donate_argnums=(0, 1, 2))


class Runner:
  """One model's state and compiled step for one batch shape."""

  def __init__(self, model, features, labels):
    optimizer = keras.optimizers.AdamW(learning_rate=1e-4, weight_decay=0.01)
    optimizer.build(model.trainable_variables)
    self.state = ([v.value for v in model.trainable_variables],
                  [v.value for v in model.non_trainable_variables],
                  [v.value for v in optimizer.variables])
    self.features, self.labels = features, labels
    step = make_train_step(model, optimizer)
    start = time.perf_counter()
    lowered = step.lower(*self.state, features, labels)
    self.compiled = lowered.compile()
    self.compile_seconds = time.perf_counter() - start
    analysis = self.compiled.memory_analysis()
    self.memory_bytes = None if analysis is None else int(
        analysis.argument_size_in_bytes + analysis.output_size_in_bytes
        + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)
    self.run(1)   # the first run allocates; not timed

  def run(self, steps: int) -> float:
    """Runs `steps` steps; returns their wall time in seconds (the last loss awaited)."""
    start = time.perf_counter()
    loss = None
    for _ in range(steps):
      *self.state, loss = self.compiled(*self.state, self.features, self.labels)
    loss = float(jax.block_until_ready(loss))
    if not np.isfinite(loss):
      raise FloatingPointError(f"loss {loss} after a step")
    return time.perf_counter() - start


def matmul_rate(size: int, repeats: int = 10) -> float:
  """Achieved FLOP/s of a jitted `size x size` bfloat16 matmul (float32 accumulation)."""
  keys = jax.random.split(jax.random.PRNGKey(0))
  a, b = (jax.random.normal(key, (size, size), "bfloat16") for key in keys)
  matmul = jax.jit(lambda x, y: jax.numpy.matmul(x, y, preferred_element_type="float32"))
  jax.block_until_ready(matmul(a, b))
  start = time.perf_counter()
  for _ in range(repeats):
    out = matmul(a, b)
  jax.block_until_ready(out)
  return 2.0 * size ** 3 * repeats / (time.perf_counter() - start)


def peak_memory_bytes():
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def main(argv=None) -> dict:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  if keras.backend.backend() != "jax":
    raise SystemExit(f"KERAS_BACKEND={keras.backend.backend()}: this benchmark runs on jax")
  began = time.perf_counter()
  device = jax.devices()[0]
  log = lambda text: print(f"[{time.perf_counter() - began:6.1f}s] {text}", flush=True)  # noqa: E731
  log(f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}, keras "
      f"{keras.__version__}, policy {args.precision}")
  keras.mixed_precision.set_global_policy(args.precision)
  compute_dtype = keras.mixed_precision.global_policy().compute_dtype
  peak = flops.peak_flops(device.device_kind, compute_dtype, tf32=False)
  if device.platform == "gpu" and peak is None:
    log(f"no peak known for {device.device_kind}: MFU against the H200 bf16 peak")
    peak = H200_BF16_PEAK

  rate = matmul_rate(args.matmul_size)
  log(f"bf16 matmul {args.matmul_size}^3: {rate / 1e12:.1f} TFLOP/s")

  config = gpt_small_model_section(args.quick)
  length = args.sequence_length or config.data.sequence_length
  keras.utils.set_random_seed(0)
  lms = build_models(config)
  per_token = {name: flops_per_token(lm, config, length) for name, lm in lms.items()}
  for name, lm in lms.items():
    log(f"{name}: {lm.count_params():,} parameters, {per_token[name] / 1e9:.3f} GFLOP/token")

  rng = np.random.default_rng(0)
  rows = []
  for batch in args.batch_sizes:
    tokens = rng.integers(0, config.model.vocab_size, (batch, length + 1), "int32")
    features = {"token_ids": jax.device_put(tokens[:, :-1]),
                "padding_mask": jax.device_put(np.ones((batch, length), bool))}
    labels = jax.device_put(tokens[:, 1:])
    runners = {}
    for name, lm in lms.items():
      runners[name] = Runner(lm, features, labels)
      log(f"batch {batch} {name}: compiled in {runners[name].compile_seconds:.1f}s")
    seconds = {name: [] for name in runners}
    for round_index in range(args.rounds):
      order = list(runners) if round_index % 2 == 0 else list(reversed(runners))
      for name in order:
        seconds[name].append(runners[name].run(args.steps))
    for name, runner in runners.items():
      step_seconds = statistics.median(seconds[name]) / args.steps
      tokens_per_second = batch * length / step_seconds
      rows.append(dict(
          model=name, batch=batch, sequence_length=length, step_ms=1e3 * step_seconds,
          tokens_per_second=tokens_per_second,
          mfu=None if peak is None else flops.model_flops_utilization(
              tokens_per_second, per_token[name], peak, 1),
          step_memory_gib=None if runner.memory_bytes is None else runner.memory_bytes / 2**30,
          compile_seconds=runner.compile_seconds, rounds_seconds=seconds[name]))
    del runners
  peak_bytes = peak_memory_bytes()
  result = dict(device=device.device_kind, platform=device.platform, policy=args.precision,
                peak_flops=peak, matmul_flops=rate, matmul_size=args.matmul_size,
                flops_per_token=per_token, peak_memory_gib=None if peak_bytes is None
                else peak_bytes / 2**30, steps=args.steps, rounds=args.rounds, rows=rows,
                quick=args.quick, seconds=time.perf_counter() - began)
  if args.output:
    pathlib.Path(args.output).write_text(json.dumps(result, indent=1))
  print_table(result)
  return result


def print_table(result) -> None:
  fmt = lambda value, spec: "-" if value is None else format(value, spec)  # noqa: E731
  print(f"\n{result['device']} ({result['platform']}), {result['policy']}, "
        f"{result['steps']} steps x {result['rounds']} alternating rounds; bf16 matmul "
        f"{result['matmul_size']}^3: {result['matmul_flops'] / 1e12:.1f} TFLOP/s; peak "
        f"{fmt(result['peak_flops'] and result['peak_flops'] / 1e12, '.0f')} TFLOP/s; device "
        f"memory peak {fmt(result['peak_memory_gib'], '.1f')} GiB; {result['seconds']:.0f} s")
  print(f"{'model':<10} {'batch':>5} {'seq':>5} {'tokens/s':>10} {'step ms':>8} {'MFU':>6} "
        f"{'step GiB':>8}")
  for row in result["rows"]:
    print(f"{row['model']:<10} {row['batch']:>5} {row['sequence_length']:>5} "
          f"{row['tokens_per_second']:>10,.0f} {row['step_ms']:>8.1f} "
          f"{'-' if row['mfu'] is None else format(100 * row['mfu'], '.1f') + '%':>6} "
          f"{fmt(row['step_memory_gib'], '8.2f'):>8}")


if __name__ == "__main__":
  main()

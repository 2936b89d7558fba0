"""Where a CPU step's time goes, by XLA:CPU thunk, and XLA's GEMM rate against PyTorch's.

  python tools/cpu_step_profile.py train [--config=shakespeare_lm] [--batch_size=6]
  python tools/cpu_step_profile.py generate [--batch_size=32]
  python tools/cpu_step_profile.py gemm [--torch_python=/path/to/python-with-torch]

`train` compiles the `--config`'s train step (forward, loss, gradients, AdamW; XLA) on
synthetic tokens, times 100 steps, then traces 20 with `tf.profiler` and sums XLA:CPU's own
per-thunk events (one a fusion, matmul or copy of the compiled program) by kind: the matmul
share of a step is what bounds it against a peer whose matmuls are faster.
`generate` times gpt_tiny's greedy decoding (16-token prompts, 64 new tokens): tfllm's
`Generator` and KerasHub's `GPT2CausalLM.generate` each at 64 and at 1 new token, alternately
(a decoding step = the difference / 63), the same step's dense matmuls alone in an XLA loop
(the "matmul floor"), then the thunks of one tfllm call.
`gemm` times the default job's matmul shapes (fp32, 200 in a row) under XLA and, with
`--torch_python`, under PyTorch in another process (its `torch.set_num_threads` is the
cores this process may use). Run it with a venv that has tfllm installed; run nothing else
beside it. docs/learning_quality.md and docs/benchmarks.md quote its output.
"""

import argparse
import collections
import glob
import json
import re
import subprocess
import sys
import tempfile
import time

# The default job's (M, K, N): tokens a step (6 x 128) by the dense kernels' shapes, and two
# of the backward pass's weight-gradient products.
GEMM_SHAPES = [(768, 128, 384), (768, 128, 128), (768, 128, 512), (768, 512, 128),
               (768, 128, 260), (128, 768, 384), (512, 768, 128)]
GEMM_REPEATS = 200
# A thunk is named after its HLO instruction, which ends in `.N`; the events around the
# thunks (the tf.function, the executable, the executor) do not.
HLO_NAME = re.compile(r"^[A-Za-z][\w.-]*\.\d+$")
# Control-flow thunks contain the thunks of their bodies: counted through those.
CONTAINERS = {"while", "cond", "conditional", "call"}


def thunk_times(run, calls):
  """Seconds a call of each XLA thunk kind (`MatMul.12` -> `MatMul`) over `calls` runs."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=import-outside-toplevel
  logdir = tempfile.mkdtemp(prefix="cpu_step_profile-")
  tf.profiler.experimental.start(logdir)
  for _ in range(calls):
    run()
  tf.profiler.experimental.stop()
  space = xplane_pb2.XSpace()
  with open(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[0], "rb") as f:
    space.ParseFromString(f.read())
  plane = next(p for p in space.planes if p.name == "/host:CPU")
  kinds, counts = collections.Counter(), collections.Counter()
  for line in plane.lines:
    for event in line.events:
      name = plane.event_metadata[event.metadata_id].name
      if not HLO_NAME.match(name):
        continue
      kind = re.sub(r"(\.\d+)+$", "", re.sub(r"_\d+$", "", name))
      if kind in CONTAINERS:
        continue
      kinds[kind] += event.duration_ps / 1e12 / calls
      counts[kind] += 1 / calls
  return kinds, counts


def print_kinds(kinds, counts, per_call_seconds, top=20):
  total = sum(kinds.values())
  matmul = sum(v for k, v in kinds.items() if k.startswith(("MatMul", "dot")))
  print(f"wall per call {per_call_seconds * 1e3:.2f} ms; thunks {total * 1e3:.2f} ms, of which "
        f"matmuls {matmul * 1e3:.2f} ms ({matmul / total:.0%})")
  for kind, seconds in kinds.most_common(top):
    print(f"  {seconds * 1e3:9.3f} ms  {counts[kind]:7.1f} a call  {kind}")
  return dict(per_call_ms=per_call_seconds * 1e3, thunks_ms=total * 1e3,
              matmul_ms=matmul * 1e3,
              kinds={k: v * 1e3 for k, v in kinds.most_common(top)})


def shipped_config(name):
  """The validated config of a shipped config's name (or a config file's path)."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  from tfllm import config as config_lib  # pylint: disable=import-outside-toplevel
  from tfllm.cli import flags as cli_flags  # pylint: disable=import-outside-toplevel
  spec = importlib.util.spec_from_file_location("profiled_config",
                                                cli_flags.resolve_config(name))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return config_lib.validate(module.get_config())


def profile_train(args):
  from tfllm.bench import train as bench_train  # pylint: disable=import-outside-toplevel
  config = shipped_config(args.config)
  sequence_length = config.data.sequence_length
  batch_size = args.batch_size or config.train.global_batch_size
  token_ids, labels = bench_train.synthetic_tokens(config.model.vocab_size, batch_size,
                                                   sequence_length)
  candidate = bench_train.tfllm_candidate(config, token_ids)
  step = bench_train.make_train_step(candidate, labels, True,
                                     optimizer=bench_train.adamw(candidate))
  for _ in range(20):
    step().numpy()
  start = time.perf_counter()
  for _ in range(100):
    step()
  step().numpy()
  per_step = (time.perf_counter() - start) / 101
  print(f"{args.config}: batch {batch_size} x {sequence_length}, "
        f"{batch_size * sequence_length / per_step:,.0f} tokens/s")
  return print_kinds(*thunk_times(lambda: step().numpy(), 20), per_step)


def decode_matmul_floor(model_config, batch_size, steps):
  """A function running `steps` decoding steps' dense matmuls alone (QKV, output, the
  feed-forward pair a layer, the logits head), chained in one XLA while loop."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  hidden, inner = model_config.hidden_dim, model_config.intermediate_dim
  shapes = [(hidden, 3 * hidden), (hidden, hidden), (hidden, inner), (inner, hidden)]
  weights = [tf.constant(rng.standard_normal(shape).astype("float32") * 0.02)
             for _ in range(model_config.num_layers) for shape in shapes]
  head = tf.constant(rng.standard_normal((hidden, model_config.vocab_size)).astype("float32"))
  x0 = tf.constant(rng.standard_normal((batch_size, hidden)).astype("float32"))

  @tf.function(jit_compile=True)
  def loop(x):
    def body(i, x):
      for layer in range(model_config.num_layers):
        qkv, out, up, down = weights[4 * layer:4 * layer + 4]
        x = x + tf.matmul(tf.matmul(x, qkv)[:, :hidden], out)
        x = x + tf.matmul(tf.matmul(x, up), down)
      return i + 1, x + tf.matmul(x, head)[:, :hidden] * 1e-6
    return tf.while_loop(lambda i, _: i < steps, body, (0, x))[1]

  return lambda: loop(x0).numpy()


def profile_generate(args):
  """Per new token: tfllm's decoding step, KerasHub's, and the matmul floor; then the
  thunks of one tfllm call."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from tfllm.bench import keras_hub_models, measure  # pylint: disable=import-outside-toplevel
  from tfllm.models import build  # pylint: disable=import-outside-toplevel
  from tfllm.models.generation import Generator  # pylint: disable=import-outside-toplevel
  config = shipped_config("gpt_tiny")
  batch_size, prompt_length, new_tokens = args.batch_size or 32, 16, 64
  generator = Generator(build(config), stop_token_ids=(), pad_token_id=0,
                        max_length=prompt_length + new_tokens)
  keras_hub_lm = keras_hub_models.gpt2_causal_lm(config.model)
  prompts = np.random.default_rng(0).integers(1, config.model.vocab_size,
                                              size=(batch_size, prompt_length))
  runners = {}
  for new in (new_tokens, 1):
    runners[f"tfllm {new}"] = (
        lambda new=new: generator.generate(prompts.tolist(), max_new_tokens=new))
    # KerasHub fills its buffer: a buffer of prompt + `new` tokens decodes exactly `new`.
    buffer = np.zeros((batch_size, prompt_length + new_tokens), "int32")
    buffer[:, :prompt_length] = prompts
    inputs = {"token_ids": buffer[:, :prompt_length + new],
              "padding_mask": np.arange(prompt_length + new)[None] < prompt_length}
    inputs["padding_mask"] = inputs["padding_mask"].repeat(batch_size, 0)
    runners[f"keras_hub {new}"] = (lambda inputs=inputs: np.asarray(
        keras_hub_lm.generate(inputs, stop_token_ids=None)["token_ids"]))
  runners["matmul floor"] = decode_matmul_floor(config.model, batch_size, new_tokens)
  for run in runners.values():
    run()
    run()
  timings = measure.time_alternately(runners, 7)
  cpu_ms = {name: float(np.median(t["cpu_seconds"])) * 1e3 for name, t in timings.items()}
  per_token = {name: (cpu_ms[f"{name} {new_tokens}"] - cpu_ms[f"{name} 1"]) / (new_tokens - 1)
               for name in ("tfllm", "keras_hub")}
  per_token["matmul floor"] = cpu_ms["matmul floor"] / new_tokens
  print(f"gpt_tiny, batch {batch_size}, {prompt_length}-token prompts: CPU ms a call "
        + ", ".join(f"{name} {ms:.1f}" for name, ms in cpu_ms.items()))
  print("CPU ms a decoding step (64-token call - 1-token call) / 63: "
        + ", ".join(f"{name} {ms:.2f}" for name, ms in per_token.items()))
  run = runners[f"tfllm {new_tokens}"]
  start = time.perf_counter()
  for _ in range(3):
    run()
  thunks = print_kinds(*thunk_times(run, 3), (time.perf_counter() - start) / 3)
  return dict(cpu_ms_per_call=cpu_ms, cpu_ms_per_step=per_token, tfllm_thunks=thunks)


def xla_gemm_rates():
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  tf.get_logger().setLevel("ERROR")  # one trace a shape is the point, not a retracing bug
  rates = {}
  for m, k, n in GEMM_SHAPES:
    a = tf.constant(np.random.randn(m, k).astype("float32"))
    b = tf.constant(np.random.randn(k, n).astype("float32"))

    @tf.function(jit_compile=True)
    def chain(a, b):
      # Each product feeds the next iteration's input, so XLA cannot hoist the matmul.
      def body(i, carry):
        return i + 1, carry + tf.matmul(a + carry[0, 0] * 0.0, b)[:1, :1]
      return tf.while_loop(lambda i, _: i < GEMM_REPEATS, body, (0, tf.zeros([1, 1])))[1]

    chain(a, b).numpy()
    start = time.perf_counter()
    chain(a, b).numpy()
    rates[f"{m}x{k}x{n}"] = 2 * m * k * n * GEMM_REPEATS / (time.perf_counter() - start) / 1e9
  return rates


TORCH_GEMM = """
import json, os, sys, time, torch
torch.set_num_threads(len(os.sched_getaffinity(0)))
rates = {}
for m, k, n in json.loads(sys.argv[1]):
  a, b = torch.randn(m, k), torch.randn(k, n)
  for _ in range(20): a @ b
  start = time.perf_counter()
  for _ in range(int(sys.argv[2])): a @ b
  rates[f"{m}x{k}x{n}"] = 2 * m * k * n * int(sys.argv[2]) / (time.perf_counter() - start) / 1e9
print(json.dumps(rates))
"""


def profile_gemm(args):
  result = {"xla": xla_gemm_rates()}
  if args.torch_python:
    output = subprocess.run([args.torch_python, "-c", TORCH_GEMM, json.dumps(GEMM_SHAPES),
                             str(GEMM_REPEATS)], check=True, capture_output=True, text=True)
    result["torch"] = json.loads(output.stdout.strip().splitlines()[-1])
  print("GFLOP/s (fp32)    " + "  ".join(f"{name:>8}" for name in result))
  for shape in result["xla"]:
    print(f"{shape:>16}  " + "  ".join(f"{rates[shape]:8.1f}" for rates in result.values()))
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("what", choices=["train", "generate", "gemm"])
  parser.add_argument("--config", default="shakespeare_lm")
  parser.add_argument("--batch_size", type=int, default=0)
  parser.add_argument("--torch_python", default=None)
  parser.add_argument("--output", default=None, help="JSON file for the figures")
  args = parser.parse_args()
  from tfllm.bench import machine as machine_lib  # pylint: disable=import-outside-toplevel
  print(machine_lib.summary(machine_lib.describe()))
  result = {"train": profile_train, "generate": profile_generate, "gemm": profile_gemm}[
      args.what](args)
  if args.output:
    with open(args.output, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  sys.exit(main())

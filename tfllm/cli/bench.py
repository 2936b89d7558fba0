"""tfllm-bench: throughput, MFU and memory of tfllm models, side by side with KerasHub.

  tfllm-bench --mode=train --config=gpt_tiny --compare=keras_hub --output=train.json
  tfllm-bench --mode=generate --compare=keras_hub --sweep=batch_size=1,8
  tfllm-bench --mode=train --sweep=seq_len=128,256,512 --sweep=num_layers=2,4,8 --output=s.json
  tfllm-bench --mode=attention --sweep=seq_len=4096,8192 --attention_block_size=512
  tfllm-bench --mode=train --config=gpt_small --sweep=model_parallel=1,2,4 --cpu_devices=4
  tfllm-bench --mode=hlo --config=gpt_small --mixed_precision=mixed_bfloat16 --compare=keras_hub

Prints a table (values are median [min..max] over rounds; compared models alternate within
each round) and writes JSON with --output (and a PNG of each sweep next to it).
Exit codes: 0 done; 1 an error (one line on stderr); 2 bad flags or config.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from tfllm.cli import flags as tfllm_flags  # noqa: E402

FLAGS = flags.FLAGS
PROGRAM = "tfllm-bench"
MODES = ("train", "generate", "attention", "pipeline", "serve", "hlo")  # tfllm.bench.run.MODES


def define_flags():
  tfllm_flags.define_config_flag("gpt_tiny")
  flags.DEFINE_enum("mode", "train", list(MODES), "What to measure.")
  tfllm_flags.define_cpu_devices_flag()
  flags.DEFINE_enum("compare", None, ["keras_hub"],
                    "Also time KerasHub's model of the same shape (train, generate, hlo).")
  flags.DEFINE_string("output", None, "JSON file for the results (sweeps: a PNG beside it).")
  flags.DEFINE_string("plot", None, "PNG path of the sweep plot (default: --output's .png).")
  flags.DEFINE_multi_string("sweep", [], "NAME=V1,V2,... with NAME seq_len, num_layers, "
                            "batch_size or model_parallel (tensor-parallel degree; on CPU "
                            "with --cpu_devices); repeat the flag for several sweeps.")
  flags.DEFINE_integer("repeats", 5, "Timed rounds (compared models alternate).", lower_bound=1)
  flags.DEFINE_integer("steps", 10, "Train steps per timed round.", lower_bound=1)
  flags.DEFINE_integer("batch_size", 0, "Train: examples per step (0 = the config's global "
                       "batch size); generate: one batch size (0 = 1 and 8).", lower_bound=0)
  flags.DEFINE_boolean("jit_compile", True, "XLA-compile every measured function.")
  flags.DEFINE_string("mixed_precision", "float32",
                      "Keras dtype policy: float32, mixed_bfloat16, mixed_float16.")
  flags.DEFINE_float("peak_flops", 0.0, "Peak FLOP/s per device for MFU (0 = table, or a "
                     "matmul measured on CPU).", lower_bound=0.0)
  flags.DEFINE_integer("prompt_length", 16, "Generate: prompt tokens.", lower_bound=1)
  flags.DEFINE_integer("new_tokens", 64, "Generate: new tokens per call.", lower_bound=1)
  flags.DEFINE_integer("attention_block_size", 512, "Attention mode: keys per block of the "
                       "block-wise variant.", lower_bound=1)
  flags.DEFINE_string("export_dir", None, "Serve mode: directory to export the --config "
                      "model (random weights) to and serve from.")
  flags.DEFINE_string("saved_model", None, "Serve mode: an exported classifier (a "
                      "tfllm-export version directory) to time as it is, e.g. a fine-tuned "
                      "model; --config is then not used.")
  flags.DEFINE_string("litert", None, "Serve mode: a LiteRT export (a tfllm-export "
                      "--format=litert version directory) to time in tf.lite.Interpreter "
                      "(text in -> labels out, and the interpreter alone), with "
                      "--config.runtime.intra_op_threads threads; --config is otherwise "
                      "not used.")


def main(argv):
  """Runs the benchmark the parsed flags describe; returns the exit code."""
  if len(argv) > 1:
    print(f"{PROGRAM}: error: unexpected arguments {argv[1:]}; flags look like --name=value",
          file=sys.stderr)
    return 2
  # Imported here so that `--help` and flag errors answer before TensorFlow loads.
  from tfllm.bench import sweep  # loads TF: after the flag checks
  try:
    for text in FLAGS.sweep:
      sweep.parse_sweep(text)
  except ValueError as error:
    print(f"{PROGRAM}: error: {error}", file=sys.stderr)
    return 2
  from tfllm import config as config_lib  # loads TF: after the flag checks
  from tfllm.bench import run as bench  # loads TF: after the flag checks
  if FLAGS.mixed_precision not in ("float32", "mixed_bfloat16", "mixed_float16"):
    print(f"{PROGRAM}: error: --mixed_precision={FLAGS.mixed_precision!r} is not accepted; "
          "use float32, mixed_bfloat16 or mixed_float16", file=sys.stderr)
    return 2
  try:
    if FLAGS.cpu_devices:
      from tfllm import distribute  # loads TF: after the flag checks
      distribute.split_cpu(FLAGS.cpu_devices)
    config = tfllm_flags.load_config()
    bench.run(config, mode=FLAGS.mode, compare=FLAGS.compare, sweeps=FLAGS.sweep,
              batch_size=FLAGS.batch_size, steps=FLAGS.steps, repeats=FLAGS.repeats,
              jit_compile=FLAGS.jit_compile, mixed_precision=FLAGS.mixed_precision,
              peak_flops=FLAGS.peak_flops, prompt_length=FLAGS.prompt_length,
              new_tokens=FLAGS.new_tokens, attention_block_size=FLAGS.attention_block_size,
              output=FLAGS.output, plot=FLAGS.plot, export_dir=FLAGS.export_dir,
              saved_model=FLAGS.saved_model, litert=FLAGS.litert,
              log=lambda line: print(line, flush=True))
    return 0
  except config_lib.ConfigError as error:
    print(f"{PROGRAM}: error: {tfllm_flags.one_line(error)}", file=sys.stderr)
    return 2
  except Exception as error:  # pylint: disable=broad-except
    logging.debug("%s failed", PROGRAM, exc_info=True)
    print(f"{PROGRAM}: error: {tfllm_flags.one_line(error)}", file=sys.stderr)
    return 1


def run_main():
  """Console script `tfllm-bench`."""
  tfllm_flags.define_flags_one_line_errors(PROGRAM, define_flags)
  app.run(main, flags_parser=tfllm_flags.flags_parser(PROGRAM))


if __name__ == "__main__":
  run_main()

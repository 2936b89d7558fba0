"""tfllm-train: train and evaluate a model under a tf.distribute strategy.

With no flags it runs the default job, the shipped config `shakespeare_lm`: a character-level
GPT on the Shakespeare plays for 10 minutes, validation loss per token and per character, a
sample. `--list_configs` lists the shipped configs; `--config` takes one's name or the path
of a config file of your own.

  tfllm-train --config=gpt_tiny --config.train.steps=2000
      --model_dir=/tmp/gpt_tiny --distribution_strategy=mirrored
  tfllm-train --config=gpt_tiny_shakespeare --config.train.model_parallel=2 --cpu_devices=2
      --model_dir=/tmp/gpt_tp2   (tensor parallel over 2 devices: docs/distributed.md;
      --cpu_devices=4: 2 data-parallel groups of 2)
  tfllm-train --config=/path/my_config.py --model_dir=/tmp/mine

Exit codes: 0 done; 1 an error (one line on stderr); 2 bad flags or config; 143 stopped by
SIGTERM after saving a checkpoint (rerun with the same --model_dir to resume).
"""

from __future__ import annotations

import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from tfllm.cli import flags as tfllm_flags  # noqa: E402

FLAGS = flags.FLAGS
PROGRAM = "tfllm-train"

EXIT_ERROR, EXIT_SIGTERM = 1, 143


def define_flags():
  tfllm_flags.define_config_flag("shakespeare_lm")
  flags.DEFINE_boolean("list_configs", False, "Print the shipped configs (name and summary, "
                       "one a line) and exit.")
  tfllm_flags.define_model_dir_flag("Directory for checkpoints, summaries, tokenizer and "
                                    "config.json; an existing one resumes. Default: a new "
                                    "temporary directory.")
  flags.DEFINE_enum("mode", "train_and_eval", ["train", "eval", "train_and_eval"],
                    "train, eval (newest checkpoint) or train_and_eval.")
  tfllm_flags.define_strategy_flags()
  tfllm_flags.define_cpu_devices_flag()


def main(argv):
  """Runs the job the parsed flags describe; returns the exit code."""
  if len(argv) > 1:
    print(f"{PROGRAM}: error: unexpected arguments {argv[1:]}; flags look like --name=value",
          file=sys.stderr)
    return 2
  if FLAGS.list_configs:
    print(tfllm_flags.shipped_configs_listing())
    return 0
  if not FLAGS["verbosity"].present:
    # Library INFO logs (TFDS, tokenizer training) only with --verbosity=0 or more.
    logging.set_verbosity(logging.WARNING)
  from tfllm import runtime  # loads TF: after the flag checks
  startup = runtime.StartupTimer()
  # Imported here so that `--help` and flag errors answer before TensorFlow loads.
  from tfllm import config as config_lib  # loads TF: after the flag checks
  from tfllm import distribute, training  # loads TF: after the flag checks
  startup.mark("import")
  multi_worker = FLAGS.distribution_strategy == "multi_worker_mirrored"
  try:
    if FLAGS.cpu_devices:
      distribute.split_cpu(FLAGS.cpu_devices)
    config = tfllm_flags.load_config()
    model_dir = FLAGS.model_dir or tempfile.mkdtemp(prefix="tfllm-train-")
    if not FLAGS.model_dir:
      print(f"{PROGRAM}: model_dir: {model_dir}", flush=True)
    training.run(config, model_dir=model_dir, mode=FLAGS.mode,
                 strategy_name=FLAGS.distribution_strategy, tpu=FLAGS.tpu,
                 num_gpus=FLAGS.num_gpus, mixed_precision=FLAGS.mixed_precision,
                 log=lambda line: print(line, flush=True), startup=startup)
    code = 0
  except config_lib.ConfigError as error:
    print(f"{PROGRAM}: error: {tfllm_flags.one_line(error)}", file=sys.stderr)
    code = 2
  except training.StopRequested as error:
    print(f"{PROGRAM}: {tfllm_flags.one_line(error)}", file=sys.stderr)
    code = EXIT_SIGTERM
  except Exception as error:  # pylint: disable=broad-except
    # Every failure is one line: the library's messages name the bad value and the fix
    # (`--verbosity=1` also logs the traceback).
    logging.debug("%s failed", PROGRAM, exc_info=True)
    print(f"{PROGRAM}: error: {tfllm_flags.one_line(error)}", file=sys.stderr)
    code = EXIT_ERROR
  if multi_worker and code:
    # A MWMS worker can block at exit waiting for a lost peer (docs/stack.md): leave now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # pylint: disable=protected-access
  return code


def run_main():
  """Console script `tfllm-train`."""
  tfllm_flags.define_flags_one_line_errors(PROGRAM, define_flags)
  app.run(main, flags_parser=tfllm_flags.flags_parser(PROGRAM))


if __name__ == "__main__":
  run_main()

"""`tfllm-summary`: build the model a config describes and print its layers and size.

    tfllm-summary --config=gpt_small --config.model.num_layers=6
    tfllm-summary --config=/path/my_config.py
    tfllm-summary --config=llama_tiny --config.train.model_parallel=2 --cpu_devices=2

With `config.train.model_parallel=N > 1` it builds the tensor-parallel model over N local
devices and prints the parameter and AdamW bytes each device holds, read from the devices the
variables were created on (`--cpu_devices=N` splits the CPU when there are no GPUs).
"""

from __future__ import annotations

import sys

from absl import app, flags

from tfllm import config as config_lib
from tfllm.cli import flags as tfllm_flags

PROGRAM = "tfllm-summary"
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from tfllm import distribute, models  # after flag parsing: keeps --help fast
  from tfllm.models import tensor_parallel  # after flag parsing, as above
  from tfllm.training import tensor_parallel as tp_training  # after flag parsing, as above
  try:
    if FLAGS.cpu_devices:
      distribute.split_cpu(FLAGS.cpu_devices)
    config = tfllm_flags.load_config()
    if config_lib.validate(config).train.model_parallel > 1:
      model = tensor_parallel.build_tensor_parallel(config)
    else:
      model = models.build(config)
  except config_lib.ConfigError as error:
    print(f"{PROGRAM}: error: {tfllm_flags.one_line(error)}", file=sys.stderr)
    sys.exit(2)
  model.summary(expand_nested=True)
  print(f"{config.task.name}: {model.count_params():,} parameters")
  if config.train.model_parallel > 1:
    print(tp_training.device_bytes_report(config, model))


def _define_flags():
  tfllm_flags.define_config_flag(None)
  tfllm_flags.define_cpu_devices_flag()


def run_main():
  tfllm_flags.define_flags_one_line_errors(PROGRAM, _define_flags)
  app.run(main, flags_parser=tfllm_flags.flags_parser(PROGRAM))


if __name__ == "__main__":
  run_main()

"""`tfllm-summary`: build the model a config describes and print its layers and size.

    tfllm-summary --config=gpt_small --config.model.num_layers=6
    tfllm-summary --config=/path/my_config.py
"""

from __future__ import annotations

import sys

from absl import app

from tfllm import config as config_lib
from tfllm.cli import flags as tfllm_flags

PROGRAM = "tfllm-summary"


def main(argv):
  del argv
  from tfllm import models  # after flag parsing: keeps --help fast
  try:
    config = tfllm_flags.load_config()
    model = models.build(config)
  except config_lib.ConfigError as error:
    print(f"{PROGRAM}: error: {tfllm_flags.one_line(error)}", file=sys.stderr)
    sys.exit(2)
  model.summary(expand_nested=True)
  print(f"{config.task.name}: {model.count_params():,} parameters")


def run_main():
  tfllm_flags.define_flags_one_line_errors(PROGRAM, lambda: tfllm_flags.define_config_flag(None))
  app.run(main, flags_parser=tfllm_flags.flags_parser(PROGRAM))


if __name__ == "__main__":
  run_main()

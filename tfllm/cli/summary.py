"""`tfllm-summary`: build the model a config describes and print its layers and size.

    tfllm-summary --config=configs/gpt_small.py --config.model.num_layers=6
"""

from __future__ import annotations

import sys

from absl import app
from ml_collections import config_flags

from tfllm import config as config_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "tfllm config file (configs/*.py).",
                                          lock_config=True)


def main(argv):
  del argv
  from tfllm import models  # after flag parsing: keeps --help fast
  config = _CONFIG.value
  if config is None:
    sys.exit("tfllm-summary: --config is required, e.g. --config=configs/gpt_tiny.py")
  try:
    model = models.build(config)
  except config_lib.ConfigError as error:
    sys.exit(f"tfllm-summary: {error}")
  model.summary(expand_nested=True)
  print(f"{config.task.name}: {model.count_params():,} parameters")


def run_main():
  app.run(main)


if __name__ == "__main__":
  run_main()

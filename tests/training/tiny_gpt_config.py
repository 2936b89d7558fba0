"""Config file for the CLI tests: a 2-layer, width-32 GPT on CPython's pydoc topics (bytes).

Seconds per run on a 2-core CPU; no TFDS preparation, no tokenizer training.
"""

import os

import pydoc_data

from tfllm import config as config_lib
from tfllm.models.config import model_preset


def get_config():
  config = config_lib.default_config()
  config.model.update(model_preset("gpt2"))
  config.model.update(num_layers=2, hidden_dim=32, num_heads=2, intermediate_dim=64,
                      max_sequence_length=16)
  config.task.name = "causal_lm"
  config.tokenizer.type = "byte"
  config.data.update(dataset="text_files", sequence_length=16, shuffle_buffer=64,
                     files=os.path.join(os.path.dirname(pydoc_data.__file__), "topics.py"))
  config.train.update(global_batch_size=8, steps=20, steps_per_loop=5, eval_steps=2,
                      checkpoint_every_steps=10, sample_new_tokens=8)
  config.train.optimizer.warmup_steps = 2
  return config

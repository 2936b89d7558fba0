"""Every shipped model config builds, runs forward and has the parameter count we expect."""

import importlib.util
import pathlib

import numpy as np
import pytest

from tfllm import models

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[2] / "configs"

# Counted by hand: GPT-2 small is 124,439,808 (tied embeddings, no LM-head bias).
EXPECTED_PARAMETERS = {
    "gpt_tiny": 5_240_320,
    "gpt_small": 124_439_808,
    "bert_tiny": 1_511_360,
    "llama_tiny": 6_867_200,
    "shakespeare_lm": 843_008,         # the default job (byte-level, context 128)
    "gpt_tiny_shakespeare": 5_240_320,  # vocabulary set from the trained tokenizer at run time
}


def load_config(name):
  spec = importlib.util.spec_from_file_location(name, CONFIG_DIR / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_gpt_tiny_count_by_hand():
  v, l, d, f, t = 8000, 4, 256, 1024, 128
  per_block = 4 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d)
  assert v * d + t * d + l * per_block + 2 * d == EXPECTED_PARAMETERS["gpt_tiny"]


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMETERS))
def test_config_builds_runs_and_counts_parameters(name):
  config = load_config(name)
  model = models.build(config)
  features = models.example_features(config.task.name, config.model, batch_size=2,
                                     sequence_length=8)
  logits = np.asarray(model(features))
  assert logits.shape[0] == 2 and np.all(np.isfinite(logits))
  assert model.count_params() == EXPECTED_PARAMETERS[name]
  print(f"{name}: {model.count_params():,} parameters")

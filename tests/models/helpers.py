"""Small configs for model tests."""

from tfllm import config as config_lib
from tfllm.models.config import model_preset

STYLES = ("gpt2", "bert", "llama")


def tiny_config(style="gpt2", task="causal_lm", **model_overrides):
  """A 2-layer, width-32 config of the given style and task."""
  config = config_lib.default_config()
  config.model.update(model_preset(style))
  config.model.update(vocab_size=97, num_layers=2, hidden_dim=32, num_heads=4,
                      intermediate_dim=64, max_sequence_length=32)
  if style == "llama":
    config.model.num_kv_heads = 2
  config.model.update(model_overrides)
  config.task.name = task
  if task in ("sequence_classification", "token_classification"):
    config.task.labels = ["a", "b", "c"]
  return config

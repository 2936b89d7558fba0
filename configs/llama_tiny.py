"""Llama style decoder (RoPE, RMSNorm, SwiGLU, grouped KV heads, untied output):
4 layers, width 256, 8 query heads sharing 2 KV heads."""

from tfllm import config as config_lib
from tfllm.models.config import model_preset


def get_config():
  config = config_lib.default_config()
  config.model.update(model_preset("llama"))
  config.model.update(vocab_size=8000, num_layers=4, hidden_dim=256, num_heads=8,
                      num_kv_heads=2, intermediate_dim=688, max_sequence_length=256)
  config.task.name = "causal_lm"
  config.data.sequence_length = 256
  config.tokenizer.vocab_size = 8000
  return config

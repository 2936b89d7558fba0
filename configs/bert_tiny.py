"""BERT style encoder (post-norm, bidirectional, token types) for masked-LM pretraining:
2 layers, width 128, 2 heads (the shape of Google's BERT-Tiny)."""

from tfllm import config as config_lib
from tfllm.models.config import model_preset


def get_config():
  config = config_lib.default_config()
  config.model.update(model_preset("bert"))
  config.model.update(vocab_size=8000, num_layers=2, hidden_dim=128, num_heads=2,
                      intermediate_dim=512, max_sequence_length=512, dropout=0.1,
                      attention_dropout=0.1)
  config.task.name = "masked_lm"
  config.data.sequence_length = 128
  config.tokenizer.vocab_size = 8000
  return config

"""GPT-2 small (124M): vocab 50,257, 12 layers, width 768, 12 heads, 1,024 positions, tied
embeddings, biases everywhere; 124,439,808 parameters as a `CausalLM`."""

from tfllm import config as config_lib
from tfllm.models.config import model_preset


def get_config():
  config = config_lib.default_config()
  config.model.update(model_preset("gpt2"))
  config.model.update(vocab_size=50257, num_layers=12, hidden_dim=768, num_heads=12,
                      intermediate_dim=3072, max_sequence_length=1024, dropout=0.1)
  config.task.name = "causal_lm"
  config.data.sequence_length = 1024
  config.tokenizer.vocab_size = 50257
  return config

"""GPT-2 style decoder small enough to train on a laptop CPU (the benchmarks' shape).

4 layers, width 256, 4 heads, 8,000-token WordPiece vocabulary trained on the corpus,
context 128; causal LM on the Shakespeare plays (`tfllm_shakespeare`).
"""

from tfllm import config as config_lib
from tfllm.models.config import model_preset


def get_config():
  config = config_lib.default_config()
  config.model.update(model_preset("gpt2"))
  config.model.update(vocab_size=8000, num_layers=4, hidden_dim=256, num_heads=4,
                      intermediate_dim=1024, max_sequence_length=128)
  config.task.name = "causal_lm"
  config.data.dataset = "tfllm_shakespeare"
  config.data.sequence_length = 128
  config.tokenizer.vocab_size = 8000
  return config

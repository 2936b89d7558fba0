"""`gpt_tiny` on the Shakespeare plays with a WordPiece tokenizer, in ~10 minutes of CPU.

`configs/gpt_tiny.py`'s model (4 layers, width 256, WordPiece 8,000, context 128) with the
training recipe sized for a 2-core CPU: at most 7 minutes of training (`time_budget_minutes`;
tokenizer training, compilation, evaluation and the sample take the rest of the 10), then
validation perplexity on 20 batches and a sampled continuation.

  tfllm-train                       # this job
  tfllm-train --config=gpt_tiny_shakespeare --config.train.time_budget_minutes=0
"""

import importlib.util
import os


def _gpt_tiny():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpt_tiny.py")
  spec = importlib.util.spec_from_file_location("tfllm_configs_gpt_tiny", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config():
  config = _gpt_tiny()
  config.train.update(
      global_batch_size=16, steps=800, steps_per_loop=50, eval_steps=20,
      checkpoint_every_steps=200, keep_checkpoints=2, time_budget_minutes=7.0,
      sample_new_tokens=48, sample_temperature=0.8, sample_prompt="")
  config.train.optimizer.update(learning_rate=1e-3, warmup_steps=50, decay="cosine",
                                min_learning_rate_ratio=0.1, weight_decay=0.1, clip_norm=1.0)
  return config

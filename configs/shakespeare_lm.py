"""Character-level GPT on the Shakespeare plays: the job that learns most in 9 minutes on 2 CPUs.

Byte-level tokens (the plays are ASCII: one token a character, nothing normalized away, so
validation nats/char compare with any character-level model of the same text); GPT-2 style,
4 layers, width 128, 4 heads, context 128, batch 6 (843,008 parameters); AdamW at 6e-3,
warmup 100 steps, linear decay to 0 laid over a 9-minute budget, then evaluation on the
whole validation split (3 plays: macbeth, twelfth-night, richard-ii; 369,508 characters).
9 minutes, not 10, so that the whole job (data, compilation, training, evaluation, sample)
stays under 10 minutes.

Why this shape (docs/learning_quality.md has the runs): on a 2-core CPU many small steps beat
a larger model or batch (768 tokens a step learned most at equal time among the shapes
tried; a 1e-3 learning rate learned more slowly and 1e-2 was unstable), and at 768 tokens a
step a context of 128 (batch 6) beat 64 (batch 12): 1.416 nats/char in 9 minutes against
1.422 in 10; 256 (batch 3) ran at 0.58x the tokens/s and was stopped. Decaying linearly to 0
rather than by a cosine to a tenth of the peak gave 1.385 against 1.416 in the same 9 minutes;
dropout 0.1 cost 22% of the tokens/s and gave 1.466.

The learning-rate decay is laid over the budget (`tfllm.training.Trainer` sets the
schedule's budget progress before each host call), so it reaches its floor when the budget
ends on any machine; `train.steps` is only a cap.
"""

from tfllm import config as config_lib
from tfllm.models.config import model_preset


def get_config():
  config = config_lib.default_config()
  config.model.update(model_preset("gpt2"))
  config.model.update(vocab_size=260, num_layers=4, hidden_dim=128, num_heads=4,
                      intermediate_dim=512, max_sequence_length=128, dropout=0.0)
  config.task.name = "causal_lm"
  config.task.dropout = 0.0
  config.tokenizer.type = "byte"
  config.data.dataset = "tfllm_shakespeare"
  config.data.sequence_length = 128
  config.train.update(
      global_batch_size=6, steps=1_000_000, steps_per_loop=50, time_budget_minutes=9.0,
      eval_steps=100_000,            # more than the split has: the whole validation split
      checkpoint_every_steps=2000,   # ~0.1 s each; SIGTERM also saves
      sample_new_tokens=300)
  config.train.optimizer.update(learning_rate=6e-3, warmup_steps=100, decay="linear",
                                min_learning_rate_ratio=0.0, weight_decay=0.1)
  return config

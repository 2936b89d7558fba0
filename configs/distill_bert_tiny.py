"""Distillation: a BERT-Tiny-shaped student (2 layers, width 128, 2 heads, randomly
initialized, MiniLM's vocabulary) learns movie sentiment from a fine-tuned MiniLM teacher.

  tfllm-train --config=minilm_movie_sentiment --model_dir=/tmp/minilm_sentiment
  tfllm-train --config=distill_bert_tiny --model_dir=/tmp/tiny_sentiment \
      --config.finetune.distill.teacher_model_dir=/tmp/minilm_sentiment

The loss is alpha * T^2 * KL(teacher || student at temperature T) + (1 - alpha) * hard-label
cross-entropy (`tfllm.finetune.distillation`). For CoNLL-2003 NER, name the task after the
file (the teacher: a model_dir of configs/minilm_conll2003_ner.py):

  tfllm-train --config=distill_bert_tiny:ner --model_dir=/tmp/tiny_ner \
      --config.finetune.distill.teacher_model_dir=/tmp/minilm_ner
"""

from tfllm.finetune import recipes


TASKS = {"sentiment": recipes.movie_sentiment, "ner": recipes.conll2003_ner}


def get_config(task="sentiment"):
  if task not in TASKS:
    raise ValueError(f"configs/distill_bert_tiny.py:{task} is not known; accepted tasks: "
                     f"{', '.join(TASKS)}")
  config = TASKS[task](recipes.minilm_config(steps=1500, global_batch_size=32))
  # The student: BERT-Tiny's shape (configs/bert_tiny.py) on the teacher's tokenizer.
  config.model.update(num_layers=2, hidden_dim=128, num_heads=2, intermediate_dim=512,
                      head_dim=0, num_kv_heads=0, max_sequence_length=512)
  config.finetune.init_checkpoint = ""          # random student; the teacher brings the knowledge
  config.finetune.distill.update(temperature=2.0, alpha=0.5)
  config.train.optimizer.update(learning_rate=1e-3, warmup_steps=100)
  return config

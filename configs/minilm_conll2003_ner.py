"""CoNLL-2003 NER: the pretrained MiniLM-L6 (BERT, 6 x 384, uncased) with a tagging head.

  tfllm-train --config=minilm_conll2003_ner --model_dir=/tmp/minilm_ner
  tfllm-train --config=minilm_conll2003_ner --model_dir=/tmp/minilm_ner \
      --mode=eval --config.data.eval_split=test

Tags are decoded as the best valid IOB2 sequence (config.task.decoding="iob2_viterbi"). The
final model of docs/finetuning.md (test entity F1 0.8833) trains on train+validation:
--config.data.train_split=train+validation --config.train.steps=2700
--config.train.optimizer.warmup_steps=270 (train alone: 0.8796).

Strategies: --config.finetune.strategy=top_layers (--config.finetune.train_top_layers=2) or
lora (--config.finetune.lora_rank=8, with a higher learning rate, e.g. 1e-3).
"""

from tfllm.finetune import recipes


def get_config():
  # 5 epochs of the 14,041 training sentences at batch 32. A small model takes a higher rate
  # than BERT-base's 5e-5: 1e-4 for 5 epochs gave validation entity F1 0.911 (5e-5 for 3
  # epochs: 0.901; docs/finetuning.md).
  config = recipes.conll2003_ner(recipes.minilm_config(steps=2200))
  config.train.optimizer.learning_rate = 1e-4
  return config

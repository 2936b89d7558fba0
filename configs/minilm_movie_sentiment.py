"""Movie-snippet sentiment (positive / negative): the pretrained MiniLM-L6 with a mean-pooled
classification head.

  tfllm-train --config=minilm_movie_sentiment --model_dir=/tmp/minilm_sentiment
"""

from tfllm.finetune import recipes


def get_config():
  # About 3 epochs of the ~8,500 training snippets at batch 32.
  return recipes.movie_sentiment(recipes.minilm_config(steps=800))

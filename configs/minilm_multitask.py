"""One MiniLM-L6 backbone, two heads trained together: CoNLL-2003 NER (`ner`) and movie
sentiment (`sentiment`); batches alternate between the two datasets at random, in
proportion to `config.finetune.head_data.<head>.weight`.

  tfllm-train --config=minilm_multitask --model_dir=/tmp/minilm_multitask
"""

from tfllm.finetune import recipes


def get_config():
  config = recipes.minilm_config(steps=2000)
  config.task.name = "multi_task"
  config.task.heads = {
      "ner": dict(task="token_classification", labels=list(recipes.CONLL_TAGS), dropout=0.1,
                  decoding="iob2_viterbi"),
      "sentiment": dict(task="sequence_classification", labels=list(recipes.SENTIMENT_LABELS),
                        pooling="mean", dropout=0.1),
  }
  config.data.update(sequence_length=128, bucket_lengths=recipes.NER_BUCKETS)
  config.finetune.head_data = {
      "ner": dict(dataset="tfllm_conll2003", text_feature="tokens", label_feature="ner",
                  weight=14041 / (14041 + 8500)),
      "sentiment": dict(dataset="tfllm_movie_sentiment", text_feature="text",
                        label_feature="label", weight=8500 / (14041 + 8500)),
  }
  return config

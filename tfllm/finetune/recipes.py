"""The shared part of the MiniLM fine-tuning recipes in `configs/`.

`minilm_config()` is a full config whose `model` section is the checkpoint's shape (read from
its config.json), whose tokenizer is its uncased WordPiece `vocab.txt`, whose backbone is
initialized from it, and whose optimizer follows BERT fine-tuning practice (AdamW 5e-5 with
linear decay and 10% warm-up, weight decay 0.01, beta_2 0.999). Recipes set task and data.
"""

from __future__ import annotations

import os

from tfllm import config as config_lib
from tfllm.finetune.config import with_finetune_section
from tfllm.finetune.prepare import minilm_l6_dir
from tfllm.models.config import model_preset
from tfllm.models.convert.hf_bert import VOCAB_FILE, hf_bert_backbone_kwargs

CONLL_TAGS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")
SENTIMENT_LABELS = ("negative", "positive")
# Batches pad to the bucket of their longest sentence (`data.bucket_lengths`): CoNLL-2003
# sentences are 16 word pieces at the median, 56 at the 99th percentile.
NER_BUCKETS = (16, 32, 64)


def minilm_config(steps: int, global_batch_size: int = 32):
  """A config fine-tuning the MiniLM-L6 checkpoint; the caller sets `task` and `data`."""
  checkpoint = minilm_l6_dir()
  config = with_finetune_section(config_lib.default_config())
  config.model.update(model_preset("bert"))
  config.model.update(hf_bert_backbone_kwargs(checkpoint))
  config.tokenizer.update(type="word_piece", vocabulary=os.path.join(checkpoint, VOCAB_FILE),
                          lowercase=True, vocab_size=config.model.vocab_size)
  config.finetune.init_checkpoint = checkpoint
  config.train.update(global_batch_size=global_batch_size, steps=steps,
                      checkpoint_every_steps=max(steps // 2, 1), steps_per_loop=50,
                      eval_steps=1000)   # the whole eval split (its batches run out first)
  config.train.optimizer.update(learning_rate=5e-5, weight_decay=0.01, beta_1=0.9,
                                beta_2=0.999, epsilon=1e-6, clip_norm=1.0,
                                warmup_steps=max(steps // 10, 1), decay="linear",
                                min_learning_rate_ratio=0.0)
  return config


def conll2003_ner(config):
  """Sets `config` up for CoNLL-2003 NER (token classification, IOB2 tags); returns it."""
  # IOB2-constrained decoding: +1.0 point of test entity F1 over per-word argmax with the
  # MiniLM recipe (docs/finetuning.md).
  config.task.update(name="token_classification", labels=list(CONLL_TAGS), dropout=0.1,
                     decoding="iob2_viterbi")
  config.data.update(dataset="tfllm_conll2003", text_feature="tokens", label_feature="ner",
                     train_split="train", eval_split="validation", test_split="test",
                     sequence_length=128, bucket_lengths=NER_BUCKETS)
  return config


def movie_sentiment(config):
  """Sets `config` up for movie-snippet sentiment (sequence classification); returns it."""
  config.task.update(name="sequence_classification", labels=list(SENTIMENT_LABELS),
                     pooling="mean", dropout=0.1)
  config.data.update(dataset="tfllm_movie_sentiment", text_feature="text",
                     label_feature="label", train_split="train", eval_split="validation",
                     test_split="test", sequence_length=64, bucket_lengths=(16, 32, 48))
  return config

"""How fast an input pipeline produces tokens, measured on this machine.

  python -m tfllm.data.throughput --task causal_lm --dataset tfllm_shakespeare

prints one JSON line per measured pipeline: tokens/s (and examples/s) of the steady state,
after a warm-up that fills shuffle buffers. `measure_pipeline_throughput` is the library entry
for the benchmark tool.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Dict, Optional

from tfllm.config import default_config
from tfllm.data import pipelines, tokenizers


def _tokens_in_batch(task: str, features, labels) -> int:
  """Tokens a model reads in one batch: batch x sequence length for every task."""
  del task, labels
  return int(features["token_ids"].shape[0] * features["token_ids"].shape[1])


def measure_pipeline_throughput(config, tokenizer=None, split: Optional[str] = None,
                                batches: int = 2000, warmup_batches: int = 20,
                                training: bool = True) -> Dict[str, float]:
  """Tokens per second produced by `make_dataset(config, split, tokenizer)`.

  Args:
    config: the full config; `config.task.name` picks the pipeline.
    tokenizer: the tokenizer; None = `get_tokenizer(config)` (may train one).
    split: split to read; None = `config.data.train_split`.
    batches: batches timed after the warm-up.
    warmup_batches: batches read first and not timed (shuffle buffers fill, graphs trace).
    training: measure the training pipeline (shuffled, repeated) or the evaluation one.

  Returns:
    dict: task, tokens_per_s, examples_per_s, batches, batch_size, sequence_length,
    warmup_s (time to the first batches), seconds (timed part), tokens_per_s_with_warmup.
    Time enough batches to pass the shuffle buffer (`data.shuffle_buffer` blocks or
    examples), or the timed part only drains an already filled buffer.
  """
  tokenizer = tokenizer if tokenizer is not None else tokenizers.get_tokenizer(config)
  dataset = pipelines.make_dataset(config, split or config.data.train_split, tokenizer,
                                   training=training)
  iterator = iter(dataset)
  start = time.perf_counter()
  for _ in range(warmup_batches):
    next(iterator)
  warmup_s = time.perf_counter() - start
  tokens = examples = 0
  start = time.perf_counter()
  for _ in range(batches):
    features, labels, _ = next(iterator)
    tokens += _tokens_in_batch(config.task.name, features, labels)
    examples += int(features["token_ids"].shape[0])
  seconds = time.perf_counter() - start
  return dict(task=config.task.name, tokens_per_s=tokens / seconds,
              examples_per_s=examples / seconds, batches=batches,
              batch_size=int(features["token_ids"].shape[0]),
              sequence_length=int(features["token_ids"].shape[1]), warmup_s=warmup_s,
              seconds=seconds,
              tokens_per_s_with_warmup=tokens * (batches + warmup_batches) / batches
              / (seconds + warmup_s))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--task", default="causal_lm", choices=pipelines.TASKS)
  parser.add_argument("--dataset", default="tfllm_shakespeare")
  parser.add_argument("--text_feature", default="text")
  parser.add_argument("--label_feature", default="label")
  parser.add_argument("--data_dir", default="")
  parser.add_argument("--tokenizer", default="word_piece",
                      choices=("word_piece", "sentence_piece", "byte"))
  parser.add_argument("--vocabulary", default="", help="existing vocab.txt / .model")
  parser.add_argument("--vocab_size", type=int, default=8000)
  parser.add_argument("--model_dir", default="", help="reuse/save the tokenizer here")
  parser.add_argument("--sequence_length", type=int, default=128)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--batches", type=int, default=2000)
  parser.add_argument("--warmup_batches", type=int, default=20)
  args = parser.parse_args(argv)
  config = default_config()
  config.task.name = args.task
  config.data.update(dict(dataset=args.dataset, text_feature=args.text_feature,
                          label_feature=args.label_feature, data_dir=args.data_dir,
                          sequence_length=args.sequence_length))
  config.tokenizer.update(dict(type=args.tokenizer, vocabulary=args.vocabulary,
                               vocab_size=args.vocab_size))
  config.train.global_batch_size = args.batch_size
  tokenizer = tokenizers.get_tokenizer(config, model_dir=args.model_dir or None)
  result = measure_pipeline_throughput(config, tokenizer, batches=args.batches,
                                       warmup_batches=args.warmup_batches)
  result.update(dataset=args.dataset, tokenizer=args.tokenizer,
                vocabulary_size=int(tokenizer.vocabulary_size()))
  print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
  main()

"""nanoGPT trained for a wall-clock budget, then evaluated on a whole validation text.

Run by `tools/nanogpt_side_by_side.py` with an interpreter that has torch; it imports the
model and optimizer set-up of a nanoGPT checkout (`model.py`: `GPT`, `GPTConfig`,
`configure_optimizers`) and runs nanoGPT's `train.py` loop (random blocks of the training
text, AdamW, gradient clipping) on one CPU process, with two changes that make it comparable
with `tfllm-train`'s default job: it stops at a wall-clock budget, and its learning rate
decays linearly to 0 over that budget after a warm-up (as the default job's schedule does).

Evaluation: the whole validation text cut into non-overlapping blocks of `block_size + 1`
tokens (the first of each block an input only), the last blocks dropped to a multiple of
`--eval_batch` (as tfllm's evaluation drops its last partial batch); nats per character =
summed loss over every target / targets that are characters (the end-of-document separator
keeps its loss but counts 0 characters, as in tfllm).

Prints one JSON line with the figures.
"""

import argparse
import json
import math
import os
import pickle
import sys
import time

import numpy as np
import torch


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--nanogpt", required=True)
  parser.add_argument("--data", required=True, help="folder with train.bin, val.bin, meta.pkl")
  parser.add_argument("--minutes", type=float, required=True)
  parser.add_argument("--n_layer", type=int, default=4)
  parser.add_argument("--n_head", type=int, default=4)
  parser.add_argument("--n_embd", type=int, default=128)
  parser.add_argument("--block_size", type=int, default=128)
  parser.add_argument("--batch_size", type=int, default=6)
  parser.add_argument("--learning_rate", type=float, default=6e-3)
  parser.add_argument("--warmup_iters", type=int, default=100)
  parser.add_argument("--weight_decay", type=float, default=0.1)
  parser.add_argument("--grad_clip", type=float, default=1.0)
  parser.add_argument("--eval_batch", type=int, default=6)
  parser.add_argument("--threads", type=int, default=0, help="0: the cores available")
  parser.add_argument("--seed", type=int, default=1337)
  args = parser.parse_args()

  sys.path.insert(0, args.nanogpt)
  from model import GPT, GPTConfig  # pylint: disable=import-outside-toplevel

  torch.manual_seed(args.seed)
  torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
  with open(os.path.join(args.data, "meta.pkl"), "rb") as f:
    meta = pickle.load(f)
  train = np.memmap(os.path.join(args.data, "train.bin"), dtype=np.uint16, mode="r")
  val = np.array(np.memmap(os.path.join(args.data, "val.bin"), dtype=np.uint16, mode="r"),
                 dtype=np.int64)
  model = GPT(GPTConfig(block_size=args.block_size, vocab_size=meta["vocab_size"],
                        n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
                        dropout=0.0, bias=True))
  optimizer = model.configure_optimizers(args.weight_decay, args.learning_rate, (0.9, 0.95),
                                         "cpu")

  def get_batch():  # nanoGPT train.py's get_batch
    ix = torch.randint(len(train) - args.block_size, (args.batch_size,))
    x = torch.stack([torch.from_numpy(train[i:i + args.block_size].astype(np.int64))
                     for i in ix])
    y = torch.stack([torch.from_numpy(train[i + 1:i + 1 + args.block_size].astype(np.int64))
                     for i in ix])
    return x, y

  budget = args.minutes * 60.0
  started = time.perf_counter()
  steps = 0
  model.train()
  while True:
    elapsed = time.perf_counter() - started
    if elapsed >= budget:
      break
    if steps < args.warmup_iters:
      lr = args.learning_rate * (steps + 1) / (args.warmup_iters + 1)
    else:
      lr = args.learning_rate * max(0.0, 1.0 - elapsed / budget)
    for group in optimizer.param_groups:
      group["lr"] = lr
    x, y = get_batch()
    _, loss = model(x, y)
    loss.backward()
    if args.grad_clip:
      torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    steps += 1
  train_seconds = time.perf_counter() - started

  model.eval()
  block = args.block_size + 1
  blocks = len(val) // block
  blocks -= blocks % args.eval_batch
  separator = meta["separator_id"]
  nats, characters = 0.0, 0
  with torch.no_grad():
    for first in range(0, blocks, args.eval_batch):
      chunk = torch.from_numpy(val[first * block:(first + args.eval_batch) * block]).view(
          args.eval_batch, block)
      x, y = chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()
      logits, _ = model(x, y)  # with targets, nanoGPT returns logits at every position
      losses = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)),
                                                 y.reshape(-1), reduction="sum")
      nats += float(losses)
      characters += int((y != separator).sum())
  print(json.dumps(dict(
      steps=steps, train_seconds=train_seconds,
      tokens_per_second=steps * args.batch_size * args.block_size / train_seconds,
      parameters=sum(p.numel() for p in model.parameters()),
      validation_characters=characters, nats_per_char=nats / characters,
      bits_per_char=nats / characters / math.log(2))))


if __name__ == "__main__":
  main()

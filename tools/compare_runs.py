"""Are two training runs the same, bit for bit? (a refactor's behaviour check)

Compares two runs of `tfllm-train`: the figure lines of their logs (losses, learning rates,
evaluation and early-stopping lines, the sample; timings and tokens/s left out), their
`eval_metrics.json`, and every tensor of their newest checkpoints (`budget_seconds` left out:
it records wall-clock time). Exits 0 when all are equal, 1 otherwise.

Usage (the default job at 300 steps from two checkouts, e.g. before and after a refactor):

  for tree in before after; do
    (cd /path/to/$tree && .venv/bin/tfllm-train --model_dir=/tmp/run_$tree \
       --config.train.time_budget_minutes=0 --config.train.steps=300 \
       --config.train.log_every_steps=50 > /tmp/run_$tree.log 2>&1)
  done
  .venv/bin/python tools/compare_runs.py /tmp/run_before /tmp/run_after \
      --logs /tmp/run_before.log /tmp/run_after.log
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import List

import numpy as np

_NOISE = re.compile(r"^[IEW]\d{4} |^WARNING: All log|^To enable|^time to first step|^CPU time|"
                    r"^threads:|^XLA:|^MFU")


def figure_lines(path: str, model_dir: str) -> List[str]:
  """The log's lines that carry results, with timings and the run's own path masked."""
  lines = []
  with open(path, errors="replace") as f:
    for line in f:
      line = line.rstrip("\n")
      if _NOISE.search(line):
        continue
      line = re.sub(r"  tokens/s [\d,]+  ETA \S+", "", line)
      line = re.sub(r"in [\d.]+ s of steps, [\d,]+ tokens/s", "in <t> s of steps, <n> tokens/s",
                    line)
      lines.append(line.replace(model_dir.rstrip("/"), "<model_dir>"))
  return lines


def newest_checkpoint(model_dir: str) -> str:
  import tensorflow as tf  # only this check needs TensorFlow
  return tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))


def same_checkpoints(a: str, b: str) -> List[str]:
  """Names of the tensors that differ (bitwise) between checkpoints `a` and `b`."""
  import tensorflow as tf  # only this check needs TensorFlow
  ra, rb = tf.train.load_checkpoint(a), tf.train.load_checkpoint(b)
  names_a, names_b = set(ra.get_variable_to_shape_map()), set(rb.get_variable_to_shape_map())
  if names_a != names_b:
    return sorted(names_a ^ names_b)
  names = sorted(n for n in names_a if not n.startswith("budget_seconds"))
  return [n for n in names
          if np.asarray(ra.get_tensor(n)).tobytes() != np.asarray(rb.get_tensor(n)).tobytes()]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("run_a")
  parser.add_argument("run_b")
  parser.add_argument("--logs", nargs=2, metavar=("LOG_A", "LOG_B"))
  args = parser.parse_args(argv)
  same = True
  if args.logs:
    a, b = (figure_lines(log, run) for log, run in zip(args.logs, (args.run_a, args.run_b)))
    print(f"log figure lines: {'identical' if a == b else 'DIFFER'} ({len(a)} vs {len(b)})")
    for line_a, line_b in zip(a, b):
      if line_a != line_b:
        print(f"  a: {line_a}\n  b: {line_b}")
    same &= a == b
  metrics = [os.path.join(run, "eval_metrics.json") for run in (args.run_a, args.run_b)]
  if all(os.path.exists(path) for path in metrics):
    a, b = (json.load(open(path)) for path in metrics)
    print(f"eval_metrics.json: {'identical' if a == b else 'DIFFER'}: {a if a == b else (a, b)}")
    same &= a == b
  a, b = newest_checkpoint(args.run_a), newest_checkpoint(args.run_b)
  if a and b:
    differ = same_checkpoints(a, b)
    print(f"checkpoints {os.path.basename(a)} / {os.path.basename(b)}: "
          f"{'bitwise equal' if not differ else 'DIFFER in ' + ', '.join(differ[:5])}")
    same &= not differ
  print("SAME" if same else "DIFFERENT")
  return 0 if same else 1


if __name__ == "__main__":
  sys.exit(main())

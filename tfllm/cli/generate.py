"""tfllm-generate: continue prompts with a trained causal LM (KV cache, one XLA program).

  tfllm-generate --model_dir=/tmp/gpt_tiny --prompt="ROMEO:" --prompt="To be"
      [--max_new_tokens=64] [--temperature=0.8] [--top_k=40] [--top_p=0.95] [--seed=1]

Prints one continuation per prompt, in order, separated by blank lines.
Exit codes: 0 done; 1 an error (one line on stderr); 2 bad flags.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from tfllm.cli import flags as tfllm_flags  # noqa: E402

FLAGS = flags.FLAGS
PROGRAM = "tfllm-generate"


def define_flags():
  tfllm_flags.define_model_dir_flag("Directory a causal-LM training run wrote.")
  flags.DEFINE_multi_string("prompt", None, "A prompt (repeat the flag for a batch).")
  flags.DEFINE_integer("max_new_tokens", 64, "Tokens to add at most.", lower_bound=0)
  flags.DEFINE_float("temperature", 0.0, "0 = greedy.", lower_bound=0.0)
  flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens; 0 = all.",
                       lower_bound=0)
  flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass; 1 = off.")
  flags.DEFINE_integer("seed", 0, "Sampling seed.")
  flags.DEFINE_bool("jit_compile", True, "Compile the generation loop with XLA.")


def main(argv):
  if len(argv) > 1:
    print(f"{PROGRAM}: error: unexpected arguments {argv[1:]}; flags look like --name=value",
          file=sys.stderr)
    return 2
  if not FLAGS.model_dir or not FLAGS.prompt:
    print(f"{PROGRAM}: error: --model_dir and at least one --prompt are required",
          file=sys.stderr)
    return 2
  from tfllm.export import load_trained  # loads TF: after the flag checks
  from tfllm.models import generation  # loads TF: after the flag checks
  try:
    model, tokenizer, config = load_trained(FLAGS.model_dir)
    if config.task.name != "causal_lm":
      raise ValueError(f"{FLAGS.model_dir} holds a {config.task.name} model; generation needs "
                       "a causal_lm")
    output = generation.generate(
        model, list(FLAGS.prompt), tokenizer=tokenizer, max_new_tokens=FLAGS.max_new_tokens,
        temperature=FLAGS.temperature, top_k=FLAGS.top_k, top_p=FLAGS.top_p, seed=FLAGS.seed,
        jit_compile=FLAGS.jit_compile)
  except Exception as error:  # pylint: disable=broad-except
    logging.debug("%s failed", PROGRAM, exc_info=True)
    print(f"{PROGRAM}: error: {tfllm_flags.one_line(error)}", file=sys.stderr)
    return 1
  print("\n\n".join(output.text), flush=True)
  return 0


def run_main():
  """Console script `tfllm-generate`."""
  tfllm_flags.define_flags_one_line_errors(PROGRAM, define_flags)
  app.run(main, flags_parser=tfllm_flags.flags_parser(PROGRAM))


if __name__ == "__main__":
  run_main()

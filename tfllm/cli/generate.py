"""tfllm-generate: continue prompts with a trained causal LM (KV cache, one XLA program).

  tfllm-generate --model_dir=/tmp/gpt_tiny --prompt="ROMEO:" --prompt="To be"
      [--max_new_tokens=64] [--temperature=0.8] [--top_k=40] [--top_p=0.95] [--seed=1]
      [--model_parallel=2 [--cpu_devices=2]]

`--model_parallel=N` decodes tensor-parallel: the trained model sharded over N local devices
(the KV cache with the heads), without XLA (docs/distributed.md).

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
  flags.DEFINE_bool("jit_compile", True, "Compile the generation loop with XLA (one device "
                    "only: off with --model_parallel > 1).")
  flags.DEFINE_integer("model_parallel", 1, "Decode tensor-parallel over this many local "
                       "devices.", lower_bound=1)
  tfllm_flags.define_cpu_devices_flag()


def main(argv):
  if len(argv) > 1:
    print(f"{PROGRAM}: error: unexpected arguments {argv[1:]}; flags look like --name=value",
          file=sys.stderr)
    return 2
  if not FLAGS.model_dir or not FLAGS.prompt:
    print(f"{PROGRAM}: error: --model_dir and at least one --prompt are required",
          file=sys.stderr)
    return 2
  degree = FLAGS.model_parallel
  if degree > 1 and FLAGS["jit_compile"].present and FLAGS.jit_compile:
    print(f"{PROGRAM}: error: --jit_compile with --model_parallel={degree}: one program over "
          f"{degree} devices is not one XLA cluster; drop --jit_compile", file=sys.stderr)
    return 2
  from tfllm import distribute  # loads TF: after the flag checks
  from tfllm.config import ConfigError  # loads TF: after the flag checks
  from tfllm.export import load_trained  # loads TF: after the flag checks
  from tfllm.models import generation  # loads TF: after the flag checks
  from tfllm.models import tensor_parallel  # loads TF: after the flag checks
  try:
    if FLAGS.cpu_devices:
      distribute.split_cpu(FLAGS.cpu_devices)
    model, tokenizer, config = load_trained(FLAGS.model_dir)
    if config.task.name != "causal_lm":
      raise ValueError(f"{FLAGS.model_dir} holds a {config.task.name} model; generation needs "
                       "a causal_lm")
    if degree > 1:
      if config.finetune.quantize:
        raise ConfigError(f"--model_parallel={degree}: {FLAGS.model_dir} holds an "
                          f"{config.finetune.quantize}-quantized model, which decodes on one "
                          "device; use --model_parallel=1")
      try:
        model = tensor_parallel.shard_trained(model, config, degree)
      except ConfigError as error:   # the shared check names the config key: name the flag
        raise ConfigError(str(error).replace("config.train.model_parallel=",
                                             "--model_parallel=")) from None
    output = generation.generate(
        model, list(FLAGS.prompt), tokenizer=tokenizer, max_new_tokens=FLAGS.max_new_tokens,
        temperature=FLAGS.temperature, top_k=FLAGS.top_k, top_p=FLAGS.top_p, seed=FLAGS.seed,
        jit_compile=FLAGS.jit_compile and degree == 1)
  except ConfigError as error:
    print(f"{PROGRAM}: error: {tfllm_flags.one_line(error)}", file=sys.stderr)
    return 2
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

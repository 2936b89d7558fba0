"""tfllm-export: a trained model directory -> a TF Serving model version.

  tfllm-export --model_dir=/tmp/gpt_tiny --export_dir=/tmp/serving/gpt_tiny
      [--version=3] [--overwrite] [--jit_compile] [--max_new_tokens=64 --temperature=0.8 ...]

Writes `<export_dir>/<version>/` (default version: one more than the newest there) with
string-in signatures, the tokenizer inside, and warm-up requests; see docs/serving.md. The
weights are the run's best checkpoint when it ran with early stopping, else its newest (a
line before the path says which; the line after it gives the size of the SavedModel's
variables, plain and gzipped: a pruned model's zeros compress, its dense kernels do not shrink).
The model's `config.json` supplies the `export` section; the flags below override it.

Exit codes: 0 written (its path is printed); 2 bad flags, a bad config value or a model_dir or
export_dir that cannot be used as asked (one line on stderr); 1 a runtime failure.
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
PROGRAM = "tfllm-export"
# Flags that override `config.export` keys of the same name when given.
OVERRIDES = ("max_new_tokens", "temperature", "top_k", "top_p", "seed", "max_length",
             "sequence_length", "jit_compile", "format", "litert_quantize", "soup_metric",
             "soup_split")


def define_flags():
  tfllm_flags.define_model_dir_flag("Directory a training run wrote (config.json, tokenizer/, "
                                    "checkpoints/).")
  flags.DEFINE_string("export_dir", None, "TF Serving model base path; the version is written "
                      "in a subdirectory.")
  flags.DEFINE_integer("version", None, "Integer version; default: newest present + 1.",
                       lower_bound=0)
  flags.DEFINE_bool("overwrite", False, "Replace an existing --version.")
  flags.DEFINE_bool("jit_compile", None, "XLA inside the served graph (TF Serving then needs "
                    "--xla_cpu_compilation_enabled on CPU).")
  flags.DEFINE_integer("max_new_tokens", None, "Causal LM serving_default: tokens to add.")
  flags.DEFINE_float("temperature", None, "Causal LM serving_default: 0 = greedy.")
  flags.DEFINE_integer("top_k", None, "Causal LM serving_default: 0 = off.")
  flags.DEFINE_float("top_p", None, "Causal LM serving_default: 1 = off.")
  flags.DEFINE_integer("seed", None, "Causal LM serving_default: sampling seed.")
  flags.DEFINE_integer("max_length", None, "Causal LM: prompt + continuation buffer.")
  flags.DEFINE_integer("sequence_length", None, "Classifiers, masked LM: tokens per text.")
  flags.DEFINE_list("ensemble", None, "Model dirs (comma-separated, instead of --model_dir) "
                    "served as one model: their averaged probabilities, or with --soup their "
                    "averaged weights.")
  flags.DEFINE_string("soup", "", "With --ensemble: uniform | greedy weight soup instead of "
                      "an ensemble.")
  flags.DEFINE_string("soup_split", None, "Greedy soup: the split members are compared on "
                      "(default: validation, whatever split they were last evaluated on).")
  flags.DEFINE_string("soup_metric", None, "Greedy soup: validation metric (default: "
                      "accuracy / entity/micro/f1).")
  flags.DEFINE_string("format", None, "saved_model (TF Serving) | litert (classifiers: a "
                      ".tflite taking token ids, docs/serving.md).")
  flags.DEFINE_string("litert_quantize", None, "LiteRT weights: none | dynamic_int8 | int8 "
                      "(full integer, calibrated on the training split).")


def main(argv):
  if len(argv) > 1:
    print(f"{PROGRAM}: error: unexpected arguments {argv[1:]}; flags look like --name=value",
          file=sys.stderr)
    return 2
  for name in ("model_dir", "export_dir"):
    if not FLAGS[name].value and not (name == "model_dir" and FLAGS.ensemble):
      print(f"{PROGRAM}: error: --{name} is required", file=sys.stderr)
      return 2
  if FLAGS.model_dir and FLAGS.ensemble:
    print(f"{PROGRAM}: error: --model_dir and --ensemble exclude each other", file=sys.stderr)
    return 2
  if not FLAGS["verbosity"].present:
    # TensorFlow's INFO logs of saving (a line per signature listing its renamed inputs,
    # sharding, assets) only with --verbosity=0; tfllm-export prints what it did itself.
    logging.set_verbosity(logging.WARNING)
  from tfllm import config as config_lib  # loads TF: after the flag checks
  from tfllm import export  # loads TF: after the flag checks
  overrides = {name: FLAGS[name].value for name in OVERRIDES if FLAGS[name].value is not None}
  try:
    if FLAGS.ensemble:
      from tfllm.export import ensemble  # loads TF: after the flag checks
      from tfllm.training import evaluation  # loads TF: after the flag checks
      path = ensemble.export_members(FLAGS.ensemble, FLAGS.export_dir, soup=FLAGS.soup,
                                     version=FLAGS.version, overwrite=FLAGS.overwrite,
                                     overrides=overrides, evaluator=evaluation.evaluator,
                                     log=print)
    elif FLAGS.soup:
      raise config_lib.ConfigError(f"--soup={FLAGS.soup} needs --ensemble=DIR1,DIR2,...")
    else:
      path = export.export_model_dir(FLAGS.model_dir, FLAGS.export_dir, version=FLAGS.version,
                                     overwrite=FLAGS.overwrite, overrides=overrides)
  except Exception as error:  # pylint: disable=broad-except
    logging.debug("%s failed", PROGRAM, exc_info=True)
    print(f"{PROGRAM}: error: {tfllm_flags.one_line(error)}", file=sys.stderr)
    return 2 if isinstance(error, config_lib.ConfigError) else 1
  from tfllm.export import litert, sizes  # loads TF: after the flag checks
  from tfllm.artifacts import checkpoints  # loads TF: after the flag checks
  for model_dir in FLAGS.ensemble or [FLAGS.model_dir]:
    print(f"exported {checkpoints.checkpoint_to_use(model_dir)[1]}"
          + (f" of {model_dir}" if FLAGS.ensemble else ""), flush=True)
  print(sizes.export_size(path, litert.MODEL_FILE).describe(), flush=True)
  print(path, flush=True)
  return 0


def run_main():
  """Console script `tfllm-export`."""
  tfllm_flags.define_flags_one_line_errors(PROGRAM, define_flags)
  app.run(main, flags_parser=tfllm_flags.flags_parser(PROGRAM))


if __name__ == "__main__":
  run_main()

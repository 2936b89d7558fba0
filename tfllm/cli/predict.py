"""tfllm-predict: batch inference through the served signatures, JSONL out.

  tfllm-predict --model_dir=/tmp/tfllm_default --input=prompts.txt --output=out.jsonl
  tfllm-predict --saved_model=/tmp/tfllm_serving/shakespeare/1 --input=prompts.jsonl
      --output=out.jsonl [--text_field=text] [--max_new_tokens=64 --temperature=0.8 ...]
  tfllm-predict --model_dir=/tmp/minilm_sentiment --input=tfds:tfllm_movie_sentiment/test
      --data_dir=~/tensorflow_datasets --output=test.jsonl
  tfllm-predict --saved_model=/tmp/minilm_serving/sentiment/1 \
      --input=tfds:tfllm_movie_sentiment/test --output=test.jsonl --score
  tfllm-predict --litert=/tmp/litert/sentiment/1 --input=tfds:tfllm_movie_sentiment/test \
      --output=test.jsonl --score

Exactly one of `--model_dir` (a training run; its signatures are built in memory),
`--saved_model` (a version directory tfllm-export wrote) and `--litert` (a LiteRT version
directory; a classifier's or tagger's `serving_default` outputs, run by `tf.lite.Interpreter`). Input: a text file (one input a
line), a `.jsonl` file (the text in `--text_field`) or `tfds:NAME/SPLIT`; `--input_format`
overrides the guess. One JSON object a line per input, in order; empty and invalid UTF-8
inputs are skipped and counted. `--score` (a classifier or tagger on a labelled TFDS split)
also prints the evaluation report's metrics computed from the served predictions. See
docs/serving.md.

Exit codes: 0 written (a summary line is printed); 1 a runtime error; 2 bad flags or input
(one line on stderr); 143 stopped by SIGTERM (the output is left as it was).
"""

from __future__ import annotations

import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from tfllm.cli import flags as tfllm_flags  # noqa: E402

FLAGS = flags.FLAGS
PROGRAM = "tfllm-predict"
EXIT_ERROR, EXIT_USAGE, EXIT_SIGTERM = 1, 2, 143
GENERATION_FLAGS = ("max_new_tokens", "temperature", "top_k", "top_p", "seed")


class Terminated(Exception):
  """SIGTERM arrived; raised in the main thread so the temporary output is removed."""


def define_flags():
  tfllm_flags.define_model_dir_flag("Directory a training run wrote (config.json, "
                                    "tokenizer/, checkpoints/); or give --saved_model.")
  flags.DEFINE_string("saved_model", None, "An exported TF Serving version directory (holding "
                      "saved_model.pb), e.g. /tmp/tfllm_serving/shakespeare/1.")
  flags.DEFINE_string("litert", None, "A LiteRT version directory (tfllm-export "
                      "--format=litert), e.g. /tmp/litert/sentiment/1.")
  flags.DEFINE_string("input", None, "A text file (one input a line), a .jsonl file, or "
                      "tfds:NAME/SPLIT (e.g. tfds:tfllm_movie_sentiment/test[:100]).")
  flags.DEFINE_string("output", None, "The JSONL file to write (replaced only when complete).")
  flags.DEFINE_string("input_format", "auto", "auto, text, jsonl or tfds; auto: the tfds: "
                      "prefix -> tfds, .jsonl/.ndjson -> jsonl, anything else -> text.")
  flags.DEFINE_string("text_field", "text", "JSONL field holding the text; for TFDS the "
                      "feature (default there: the model's config.data.text_feature).")
  flags.DEFINE_string("id_field", "id", "JSONL field or TFDS feature copied to each output "
                      "line as `id` when present.")
  flags.DEFINE_string("data_dir", None, "TFDS data directory for tfds: inputs.")
  flags.DEFINE_integer("batch_size", 32, "Inputs per signature call.", lower_bound=1)
  flags.DEFINE_bool("progress", True, "Progress bar on stderr (only when it is a terminal).")
  flags.DEFINE_integer("max_new_tokens", None, "Causal LM: tokens to add (any generation "
                       "flag calls the `generate` signature; unset ones keep the model's "
                       "config.export values).", lower_bound=0)
  flags.DEFINE_float("temperature", None, "Causal LM: 0 = greedy.", lower_bound=0.0)
  flags.DEFINE_integer("top_k", None, "Causal LM: sample among the k most likely; 0 = off.",
                       lower_bound=0)
  flags.DEFINE_float("top_p", None, "Causal LM: nucleus mass; 1 = off.", lower_bound=0.0,
                     upper_bound=1.0)
  flags.DEFINE_integer("seed", None, "Causal LM: sampling seed.")
  flags.DEFINE_bool("score", False, "Classifiers and taggers on a tfds: input: compare the "
                    "predictions with the split's labels and print accuracy / entity F1 "
                    "(the eval report's metrics, from the served outputs).")
  flags.DEFINE_string("label_field", None, "With --score: the split's label feature "
                      "(default: the model's config.data.label_feature).")
  flags.DEFINE_string("metrics_output", None, "With --score: a JSON file for the metrics.")


def _terminate(signum, frame):  # pylint: disable=unused-argument
  raise Terminated("stopped by SIGTERM; the output was not written")


def _error(message: str) -> None:
  print(f"{PROGRAM}: error: {message}", file=sys.stderr)


def main(argv):
  if len(argv) > 1:
    _error(f"unexpected arguments {argv[1:]}; flags look like --name=value")
    return EXIT_USAGE
  for name in ("input", "output"):
    if not FLAGS[name].value:
      _error(f"--{name} is required")
      return EXIT_USAGE
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # TFDS INFO logs only with --verbosity=0
  # Imported here so that `--help` and flag errors answer before TensorFlow loads.
  from tfllm import config as config_lib  # loads TF: after the flag checks
  from tfllm.export import predict as predict_lib  # loads TF: after the flag checks
  signal.signal(signal.SIGTERM, _terminate)
  try:
    summary = predict_lib.predict_to_file(
        FLAGS.output, FLAGS.input, model_dir=FLAGS.model_dir, saved_model=FLAGS.saved_model,
        input_format=FLAGS.input_format,
        # Unset, TFDS inputs read the model's text feature; JSONL reads "text".
        text_field=FLAGS.text_field if FLAGS["text_field"].present else None,
        id_field=FLAGS.id_field, data_dir=FLAGS.data_dir, batch_size=FLAGS.batch_size,
        settings={name: FLAGS[name].value for name in GENERATION_FLAGS},
        progress=predict_lib.progress_wanted(FLAGS.progress), score=FLAGS.score,
        label_field=FLAGS.label_field, metrics_output=FLAGS.metrics_output,
        litert=FLAGS.litert)
  except config_lib.ConfigError as error:
    _error(tfllm_flags.one_line(error))
    return EXIT_USAGE
  except Terminated as error:
    print(f"{PROGRAM}: {error}", file=sys.stderr)
    return EXIT_SIGTERM
  except Exception as error:  # pylint: disable=broad-except
    logging.debug("%s failed", PROGRAM, exc_info=True)
    _error(tfllm_flags.one_line(error))
    return EXIT_ERROR
  print(summary.line(), flush=True)
  if summary.metrics is not None:
    print(summary.score_line(), flush=True)
    if summary.report:
      print(f"entity report:\n{summary.report}", flush=True)
  return 0


def run_main():
  """Console script `tfllm-predict`."""
  tfllm_flags.define_flags_one_line_errors(PROGRAM, define_flags)
  app.run(main, flags_parser=tfllm_flags.flags_parser(PROGRAM))


if __name__ == "__main__":
  run_main()

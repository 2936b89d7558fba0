"""absl flags shared by the tfllm apps, and the config they resolve to.

`--config` is an ml-collections config file (`configs/*.py` defining `get_config()`); any
value is overridden with `--config.section.key=value`. The apps parse flags here and pass
plain values to the library (which never reads FLAGS).
"""

from __future__ import annotations

import os
import re
import sys
from typing import Callable, List, Optional

from absl import flags
from ml_collections import config_flags

FLAGS = flags.FLAGS

STRATEGIES_HELP = "off, one_device, mirrored, multi_worker_mirrored, tpu"
PRECISIONS_HELP = "float32, mixed_bfloat16, mixed_float16, auto"


def repo_config_path(name: str) -> str:
  """Path of `configs/<name>.py` next to the package (a source checkout or editable install)."""
  package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return os.path.join(os.path.dirname(package_dir), "configs", f"{name}.py")


def define_config_flag(default: Optional[str]) -> None:
  """`--config` (a config file) with `--config.x.y=` overrides; unknown keys are refused."""
  config_flags.DEFINE_config_file(
      "config", default, "ml-collections config file (defines get_config()); override values "
      "with --config.section.key=value.", lock_config=True)


def define_model_dir_flag(help_text: str) -> None:
  """`--model_dir` (no default: each app says what it does without one)."""
  flags.DEFINE_string("model_dir", None, help_text)


def define_strategy_flags() -> None:
  """--distribution_strategy, --tpu, --num_gpus, --mixed_precision."""
  flags.DEFINE_string("distribution_strategy", "mirrored",
                      f"tf.distribute strategy: {STRATEGIES_HELP}.")
  flags.DEFINE_string("tpu", None, "TPU name or grpc:// address (or 'local' on a TPU VM) for "
                      "--distribution_strategy=tpu.")
  flags.DEFINE_integer("num_gpus", None, "GPUs for mirrored (default: all visible).",
                       lower_bound=0)
  flags.DEFINE_string("mixed_precision", "float32", f"Keras dtype policy: {PRECISIONS_HELP}.")


def load_config():
  """The validated ConfigDict of `--config` and its overrides (raises `ConfigError`)."""
  from tfllm import config as config_lib  # pylint: disable=g-import-not-at-top
  path = config_flags.get_config_filename(FLAGS["config"])
  if not path:
    raise config_lib.ConfigError("--config is required")
  if not os.path.exists(path.split(":")[0]):
    raise config_lib.ConfigError(f"--config={path}: no such file")
  try:
    config = FLAGS.config
  except Exception as error:  # pylint: disable=broad-except
    raise config_lib.ConfigError(f"--config={path} could not be loaded: {one_line(error)}")
  if config is None:
    raise config_lib.ConfigError(f"--config={path}: get_config() returned None")
  return config_lib.validate(config)


def define_flags_one_line_errors(program: str, define: Callable[[], None]) -> None:
  """Runs `define()`; a failure is one line on stderr and exit code 2.

  ml-collections applies `--config.x.y=` overrides while the flag is defined (it reads
  `sys.argv`), so an unknown or mistyped key fails here, not at parse time.
  """
  try:
    define()
  except Exception as error:  # pylint: disable=broad-except
    print(f"{program}: error: bad --config override: {_did_you_mean(error)}", file=sys.stderr)
    sys.exit(2)


def flags_parser(program: str) -> Callable[[List[str]], List[str]]:
  """absl `flags_parser` for `app.run`: a bad flag is one line on stderr and exit code 2."""

  def parse(argv: List[str]) -> List[str]:
    try:
      return FLAGS(argv)
    except flags.Error as error:
      print(f"{program}: error: {one_line(error)}", file=sys.stderr)
      sys.exit(2)
    except Exception as error:  # pylint: disable=broad-except
      print(f"{program}: error: bad --config: {_did_you_mean(error)}", file=sys.stderr)
      sys.exit(2)

  return parse


def _did_you_mean(error: BaseException) -> str:
  text = str(error)
  match = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', text)
  if match:
    return f"unknown config key {match.group(2)!r}; did you mean {match.group(1)!r}?"
  return f"unknown config key or bad value: {one_line(error)}"



def one_line(error: BaseException) -> str:
  """An exception as one line: its message's first line (TF op errors carry long traces).

  An error raised while AutoGraph traces a `tf.function` reads "in user code:", then the
  stack, then the error itself: that last line is the one that says what went wrong.
  """
  text = getattr(error, "message", None) or str(error) or type(error).__name__
  lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
  if not lines:
    return type(error).__name__
  return lines[-1] if lines[0] == "in user code:" else lines[0]

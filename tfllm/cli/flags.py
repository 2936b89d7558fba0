"""absl flags shared by the tfllm apps, and the config they resolve to.

`--config` names a config shipped with the package (`--config=shakespeare_lm`, or
`--config=distill_bert_tiny:ner` for a config whose `get_config` takes an argument; the
checkout's `configs/*.py`, installed as `tfllm.configs`) or is the path of any ml-collections
config file defining `get_config()` (`--config=/path/my.py`). Any value is overridden with
`--config.section.key=value`. The apps parse flags here and pass plain values to the library
(which never reads FLAGS).
"""

from __future__ import annotations

import ast
import os
import re
import sys
from typing import Callable, List, Optional, Tuple

from absl import flags
from ml_collections import config_flags

from tfllm import config as config_lib

FLAGS = flags.FLAGS

# A shipped config is named like its module: no folder, no `.py`. Anything else is a path.
_CONFIG_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

STRATEGIES_HELP = "off, one_device, mirrored, multi_worker_mirrored, tpu"
PRECISIONS_HELP = "float32, mixed_bfloat16, mixed_float16, auto"


def shipped_configs_dir() -> str:
  """The folder of the configs shipped with the imported tfllm.

  An installed wheel holds them in the subpackage folder `tfllm/configs` (setup.py maps the
  checkout's top-level `configs/` there); a source checkout or an editable install keeps them
  in the checkout's `configs/`, beside the `tfllm` folder.
  """
  package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  installed = os.path.join(package_dir, "configs")
  if os.path.isdir(installed):
    return installed
  return os.path.join(os.path.dirname(package_dir), "configs")


def shipped_config_names() -> List[str]:
  """The names of the shipped configs (their module names), sorted."""
  return sorted(file_name[:-len(".py")] for file_name in os.listdir(shipped_configs_dir())
                if file_name.endswith(".py") and not file_name.startswith("_"))


def shipped_config_summaries() -> List[Tuple[str, str]]:
  """(name, summary) of every shipped config, sorted by name.

  The summary is the first paragraph of the config's docstring as one line (the configs wrap
  their summary sentence at 96 columns). Docstrings are read from the source (`ast`), so
  listing runs no config's imports.
  """
  summaries = []
  for name in shipped_config_names():
    with open(os.path.join(shipped_configs_dir(), f"{name}.py"), encoding="utf-8") as f:
      docstring = ast.get_docstring(ast.parse(f.read())) or ""
    summaries.append((name, " ".join(docstring.strip().split("\n\n")[0].split())))
  return summaries


def shipped_configs_listing() -> str:
  """What `--list_configs` prints: one line per shipped config, its name then its summary."""
  summaries = shipped_config_summaries()
  width = max(len(name) for name, _ in summaries)
  return "\n".join(f"{name:<{width}}  {summary}".rstrip() for name, summary in summaries)


def resolve_config(argument: str) -> str:
  """The config file `--config=argument` loads, with its `:arg` kept.

  Args:
    argument: a shipped config's name, optionally with ml-collections' `get_config`
      argument (`shakespeare_lm`, `distill_bert_tiny:ner`), or the path of a config file,
      optionally with the argument (`/path/my.py`, `configs/distill_bert_tiny.py:ner`).

  Returns:
    The path of the file, followed by `:arg` when `argument` has one.

  Raises:
    ConfigError: no shipped config has that name, or no file has that path (one line, with
      the accepted names).
  """
  target, colon, arg = argument.partition(":")
  names = shipped_config_names()
  if _CONFIG_NAME.match(target):
    if target not in names:
      raise config_lib.ConfigError(
          f"no shipped config is named {target!r}; accepted names: {', '.join(names)} "
          "(or the path of a config file, e.g. --config=/path/my_config.py)")
    return os.path.join(shipped_configs_dir(), f"{target}.py") + colon + arg
  if not os.path.isfile(target):
    stem = os.path.splitext(os.path.basename(target))[0]
    if stem in names:  # e.g. `configs/gpt_tiny.py` run outside the checkout
      hint = f"; the shipped config is named without a path: --config={stem}{colon}{arg}"
    else:
      hint = f"; shipped configs are named without a path: {', '.join(names)}"
    raise config_lib.ConfigError(f"{target}: no such file{hint}")
  return argument


class _ConfigNameOrFileParser(flags.ArgumentParser):
  """ml-collections' config-file parser, given the file a shipped config's name resolves to.

  A failure inside `get_config` becomes one line with the config's own message
  (ml-collections re-raises it with a traceback as its text).
  """

  def __init__(self, file_parser: flags.ArgumentParser):
    self._file_parser = file_parser

  def parse(self, argument):
    path = resolve_config(argument)
    try:
      return self._file_parser.parse(path)
    except (TypeError, ValueError) as error:
      raise config_lib.ConfigError(f"get_config failed: {one_line(error.__context__ or error)}")

  def flag_type(self):
    return self._file_parser.flag_type()


def define_config_flag(default: Optional[str], flag_values: flags.FlagValues = FLAGS,
                       sys_argv: Optional[List[str]] = None) -> None:
  """`--config` (a shipped config's name or a file) with `--config.x.y=` overrides.

  Args:
    default: the shipped config's name used without `--config`, or None (then
      `load_config` says that `--config` is required).
    flag_values: where to define the flag (tests use their own `flags.FlagValues`).
    sys_argv: the command line ml-collections reads overrides from (default: `sys.argv`).

  ml-collections parses the default (and applies the overrides) while the flag is defined,
  with its own file parser: the flag is defined with the default's file, then given the
  parser that also accepts names for `--config=` on the command line.
  """
  config_flags.DEFINE_config_file(
      "config", default and resolve_config(default),
      "The name of a config shipped with tfllm (tfllm-train --list_configs), e.g. "
      f"{default or 'gpt_tiny'} or distill_bert_tiny:ner, or the path of an ml-collections "
      "config file (defines get_config()); override values with --config.section.key=value.",
      flag_values=flag_values, lock_config=True, sys_argv=sys_argv)
  config_flag = flag_values["config"]
  config_flag.parser = _ConfigNameOrFileParser(config_flag.parser)


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


def define_cpu_devices_flag() -> None:
  """--cpu_devices: split the CPU into logical devices (tensor parallelism without GPUs)."""
  flags.DEFINE_integer("cpu_devices", 0, "Split the CPU into this many logical devices first "
                       "(tensor parallelism without GPUs); 0 = leave it whole.", lower_bound=0)


def load_config():
  """The validated ConfigDict of `--config` and its overrides (raises `ConfigError`).

  A name or path that resolves to no file already failed while flags were parsed.
  """
  try:
    argument = config_flags.get_config_filename(FLAGS["config"])
  except flags.Error:  # never parsed: no default and no --config
    raise config_lib.ConfigError(
        "--config is required: a shipped config's name (tfllm-train --list_configs), e.g. "
        "--config=gpt_tiny, or the path of a config file") from None
  config = FLAGS.config
  if config is None:
    raise config_lib.ConfigError(f"--config={argument}: get_config() returned None")
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

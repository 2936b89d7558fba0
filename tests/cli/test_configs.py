"""Named configs: `--config=NAME[:ARG]` runs a config shipped with the package, a path runs any
file, `--list_configs` lists the shipped ones, and a wheel installed outside the checkout
carries them (slow).

The command-line tests run from a temporary directory: a name must not depend on the
working directory (the checkout's `configs/` is not there).
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import sysconfig

import pydoc_data
import pytest
from absl import flags

from tests.cli.test_train import _env, assert_one_line_error
from tests.models.test_convert import minilm_dir
from tfllm.cli import flags as tfllm_flags
from tfllm.config import ConfigError
from tfllm.finetune.prepare import MINILM_PACKAGE

REPO = pathlib.Path(__file__).resolve().parents[2]
CHECKOUT_CONFIGS = REPO / "configs"
SHIPPED = sorted(p.stem for p in CHECKOUT_CONFIGS.glob("*.py") if not p.name.startswith("_"))
# What setup.py and setup.cfg package (the wheel test builds from a copy of these).
PACKAGING = ("setup.py", "setup.cfg", "pyproject.toml", "README.md", "tfllm", "configs")
PYDOC_TOPICS = os.path.join(os.path.dirname(pydoc_data.__file__), "topics.py")
# The default job cut to 2 steps of a 1-layer model on a small local text (no TFDS, no XLA).
TWO_STEPS = ("--config=shakespeare_lm", "--config.train.time_budget_minutes=0",
             "--config.train.steps=2", "--config.train.steps_per_loop=1",
             "--config.train.eval_steps=1", "--config.train.sample_new_tokens=0",
             "--config.train.global_batch_size=2", "--config.train.jit_compile=off",
             "--config.model.num_layers=1", "--config.data.sequence_length=16",
             "--config.data.dataset=text_files", f"--config.data.files={PYDOC_TOPICS}",
             "--distribution_strategy=one_device")


def parse_config_flag(argv, default="shakespeare_lm"):
  """The config `--config` holds after parsing `argv` (flags of its own, not absl's FLAGS)."""
  flag_values = flags.FlagValues()
  tfllm_flags.define_config_flag(default, flag_values=flag_values, sys_argv=argv)
  flag_values(argv)
  return flag_values.config


def run_app(module, *flag_args, cwd):
  return subprocess.run([sys.executable, "-m", module, *flag_args], cwd=cwd, env=_env(),
                        capture_output=True, text=True, timeout=300)


def test_a_name_resolves_to_its_shipped_file_and_keeps_its_argument():
  path = tfllm_flags.resolve_config("shakespeare_lm")
  assert os.path.samefile(path, CHECKOUT_CONFIGS / "shakespeare_lm.py")
  path, arg = tfllm_flags.resolve_config("distill_bert_tiny:ner").split(":")
  assert os.path.samefile(path, CHECKOUT_CONFIGS / "distill_bert_tiny.py") and arg == "ner"
  assert tfllm_flags.shipped_config_names() == SHIPPED


def test_a_path_is_loaded_as_given(tmp_path, monkeypatch):
  own = tmp_path / "my_config.py"
  own.write_text("def get_config():\n  return None\n")
  assert tfllm_flags.resolve_config(str(own)) == str(own)
  monkeypatch.chdir(REPO)
  for argument in ("configs/gpt_tiny.py", "configs/distill_bert_tiny.py:ner"):
    assert tfllm_flags.resolve_config(argument) == argument


def test_an_unknown_name_or_a_missing_file_is_one_line_naming_what_is_accepted(
    tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(ConfigError) as error:
    tfllm_flags.resolve_config("shakespeare")
  message = str(error.value)
  assert "\n" not in message and "'shakespeare'" in message
  assert f"accepted names: {', '.join(SHIPPED)}" in message
  # The form the docs used to show, run outside the checkout: the error names the fix.
  with pytest.raises(ConfigError, match=r"configs/gpt_tiny.py: no such file; .*--config=gpt_tiny"
                     r"$"):
    tfllm_flags.resolve_config("configs/gpt_tiny.py")
  with pytest.raises(ConfigError, match=r"no such file; shipped configs .*shakespeare_lm"):
    tfllm_flags.resolve_config("mine.py")


def test_overrides_apply_to_a_named_config_the_default_and_a_path():
  named = parse_config_flag(["prog", "--config=gpt_tiny", "--config.train.steps=3"])
  assert (named.train.steps, named.model.hidden_dim) == (3, 256)
  default = parse_config_flag(["prog", "--config.train.steps=4"])
  assert (default.train.steps, default.model.hidden_dim) == (4, 128)  # shakespeare_lm
  path = parse_config_flag(["prog", f"--config={CHECKOUT_CONFIGS / 'llama_tiny.py'}",
                            "--config.model.num_layers=1"])
  assert (path.model.num_layers, path.model.num_kv_heads) == (1, 2)


def test_a_named_config_takes_its_get_config_argument():
  minilm_dir()
  config = parse_config_flag(["prog", "--config=distill_bert_tiny:ner",
                              "--config.train.steps=5"])
  assert (config.task.name, config.train.steps) == ("token_classification", 5)
  with pytest.raises(flags.Error, match=r"^flag --config=distill_bert_tiny:bogus: get_config "
                     r"failed: .*:bogus is not known; accepted tasks: sentiment, ner$"):
    parse_config_flag(["prog", "--config=distill_bert_tiny:bogus"])


def test_list_configs_prints_each_shipped_config_on_one_line_sorted(tmp_path):
  result = run_app("tfllm.cli.train", "--list_configs", cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert [line.split()[0] for line in lines] == SHIPPED
  assert all(len(line.split(maxsplit=1)) == 2 for line in lines)  # a name, then a summary
  assert ("Character-level GPT on the Shakespeare plays: the job that learns most in 9 "
          "minutes on 2 CPUs.") in lines[SHIPPED.index("shakespeare_lm")]
  assert not list(tmp_path.iterdir())  # listing trains nothing, writes nothing


@pytest.mark.parametrize("flag_args, pattern", [
    (["--config=shakespeare"],
     r"^tfllm-train: error: flag --config=shakespeare: no shipped config is named "
     r"'shakespeare'; accepted names: bert_tiny, .*, shakespeare_lm \(or the path"),
    (["--config=shakespeare_lm", "--config.train.stpes=5"],
     r"unknown config key 'stpes'; did you mean 'steps'"),
])
def test_a_bad_name_or_override_exits_2_with_one_line(tmp_path, flag_args, pattern):
  result = run_app("tfllm.cli.train", *flag_args, cwd=tmp_path)
  assert result.returncode == 2
  assert_one_line_error(result, pattern)


def test_tfllm_summary_takes_a_name_and_overrides(tmp_path):
  result = run_app("tfllm.cli.summary", "--config=bert_tiny", "--config.model.num_layers=1",
                   cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  # bert_tiny is 1,511,360 parameters with 2 layers (tests/models/test_configs.py); one
  # layer of width 128 and feed-forward 512 is 198,272 of them.
  assert "masked_lm: 1,313,088 parameters" in result.stdout


def test_tfllm_summary_reports_tensor_parallel_bytes_per_device(tmp_path):
  result = run_app("tfllm.cli.summary", "--config=llama_tiny", "--config.model.num_layers=1",
                   "--config.train.model_parallel=2", "--cpu_devices=2", cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  parameters = int(re.search(r"causal_lm: ([\d,]+) parameters", result.stdout)
                   .group(1).replace(",", ""))
  per_device = {int(device): (int(p.replace(",", "")), int(a.replace(",", ""))) for device, p, a
                in re.findall(r"CPU:(\d): parameters ([\d,]+)  AdamW ([\d,]+)", result.stdout)}
  assert sorted(per_device) == [0, 1]
  assert per_device[0][0] + per_device[1][0] == 4 * parameters  # float32, nothing duplicated
  # Device 0 also holds the unsplit weights: 1 layer's 2 RMSNorm scales + the final one.
  assert per_device[0][0] - per_device[1][0] == 4 * 3 * 256
  assert per_device[1][1] == 2 * per_device[1][0]  # AdamW's momentum and velocity


def _check(command, **kwargs):
  """Runs `command`; a failure shows its output."""
  result = subprocess.run([str(c) for c in command], capture_output=True, text=True,
                          timeout=300, **kwargs)
  assert result.returncode == 0, result.stdout + result.stderr
  return result


def _copy_packaging(destination: pathlib.Path):
  destination.mkdir()
  for name in PACKAGING:
    source = REPO / name
    if not source.exists():
      continue  # (setup.py: only where setup.cfg cannot say it all)
    if source.is_dir():
      shutil.copytree(source, destination / name,
                      ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    else:
      shutil.copy2(source, destination / name)


def _fresh_venv(directory: pathlib.Path) -> pathlib.Path:
  """A venv whose dependencies resolve to this interpreter's site-packages, tfllm excluded.

  A `.pth` file of plain paths: Python runs no `.pth` file found in those folders, so an
  editable tfllm installed there (its finder is started by a `.pth`) stays out.
  """
  _check([sys.executable, "-m", "venv", "--without-pip", directory])
  python = directory / "bin" / "python"
  purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
  site_packages = _check([python, "-c", purelib], env=_without_pythonpath()).stdout.strip()
  ours = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
  pathlib.Path(site_packages, "tfllm_test_dependencies.pth").write_text("\n".join(ours) + "\n")
  return python


def _without_pythonpath():
  env = _env()
  env.pop("PYTHONPATH", None)  # which tfllm is imported must depend on the venv alone
  return env


@pytest.mark.slow
def test_a_wheel_in_a_fresh_venv_runs_shipped_configs_by_name(tmp_path):
  source, wheels, elsewhere = tmp_path / "src", tmp_path / "wheels", tmp_path / "elsewhere"
  _copy_packaging(source)
  _check([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
          "--no-index", "--disable-pip-version-check", "-q", "-w", wheels, source])
  wheel, = wheels.glob("tfllm-*.whl")
  venv = tmp_path / "venv"
  python = _fresh_venv(venv)
  # pip comes from the dependencies' folder; it installs into the venv running it, and
  # --ignore-installed leaves the tfllm installed in the dependencies' folder alone.
  _check([python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed",
          "--disable-pip-version-check", "-q", wheel], env=_without_pythonpath())
  elsewhere.mkdir()

  def run(*command):
    return _check(command, cwd=elsewhere, env=_without_pythonpath())

  # Every shipped config loads from the wheel (they import tfllm and each other), and
  # tfllm and its configs come from the venv, not from the checkout.
  loaded = run(python, "-c", """if True:
      import json, tfllm, tfllm.configs
      from absl import flags
      from tfllm.cli import flags as tfllm_flags
      tasks = {}
      for name in tfllm_flags.shipped_config_names():
        flag_values = flags.FlagValues()
        try:
          tfllm_flags.define_config_flag(name, flag_values=flag_values, sys_argv=["prog"])
          flag_values(["prog"])
          tasks[name] = flag_values.config.task.name
        except Exception as error:
          tasks[name] = f"error: {error}"
      print(json.dumps(dict(tfllm=tfllm.__file__, configs=tfllm.configs.__file__,
                            shipped=tfllm_flags.shipped_configs_dir(), tasks=tasks)))""")
  where = json.loads(loaded.stdout.splitlines()[-1])
  for key in ("tfllm", "configs", "shipped"):
    assert pathlib.Path(where[key]).is_relative_to(venv / "lib"), where
  assert sorted(where["tasks"]) == SHIPPED and where["tasks"]["shakespeare_lm"] == "causal_lm"
  minilm_installed = importlib.util.find_spec(MINILM_PACKAGE) is not None
  for name, task in where["tasks"].items():
    # The MiniLM recipes need the checkpoint's package (installed by .ci/run).
    assert not task.startswith("error") or (
        not minilm_installed and "MiniLM checkpoint is not installed" in task), (name, task)

  listed = run(venv / "bin" / "tfllm-train", "--list_configs")
  assert [line.split()[0] for line in listed.stdout.splitlines()] == SHIPPED

  trained = run(venv / "bin" / "tfllm-train", *TWO_STEPS, f"--model_dir={tmp_path / 'run'}")
  assert "validation at step 2" in trained.stdout
  assert (tmp_path / "run" / "config.json").exists()

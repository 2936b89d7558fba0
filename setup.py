"""Packages of tfllm; everything else is in setup.cfg.

The shipped configs live in the checkout's top-level `configs/` (users' layout) and are
installed as the subpackage `tfllm.configs`, so that a wheel or `pip install .` carries
them. setup.cfg cannot list found packages plus a mapped one, hence this file.
"""

from setuptools import find_packages, setup

setup(packages=find_packages(include=["tfllm", "tfllm.*"]) + ["tfllm.configs"],
      package_dir={"tfllm.configs": "configs"})

#!/usr/bin/env bash
# Packs into wheels/ what tools/jax_train_bench.py needs on a machine that has JAX (with CUDA)
# but neither TensorFlow nor Keras: Keras, KerasHub, ml-collections, absl and what they
# import, at the versions installed in .venv, without their dependencies (KerasHub's
# tensorflow-text is left out on purpose: GPT2CausalLM does not need it, docs/stack.md).
# Compiled wheels are fetched for each Python version given (default 3.11 3.12 3.13: Keras
# 3.15 needs 3.11 or later), so the target's version need not be known;
# wheels/requirements.txt lists the pins. Install there:
#   python -m pip install --no-deps --no-index --find-links wheels -r wheels/requirements.txt
# See docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(3.11 3.12 3.13)
packages=(keras keras-hub ml-collections absl-py namex optree h5py rich markdown-it-py mdurl
          pygments regex kagglehub kagglesdk sentencepiece tokenizers pyyaml requests tqdm idna
          certifi urllib3 charset-normalizer protobuf packaging typing-extensions)
mkdir -p wheels
.venv/bin/python -c 'import sys, importlib.metadata as m
print("\n".join(f"{p}=={m.version(p)}" for p in sys.argv[1:]))' "${packages[@]}" \
  > wheels/requirements.txt
for version in "${versions[@]}"; do
  .venv/bin/python -m pip download -q --no-deps --only-binary=:all: \
    --python-version "$version" -d wheels -r wheels/requirements.txt
done
echo "$(ls wheels/*.whl | wc -l) wheels, $(du -sh wheels | cut -f1)"

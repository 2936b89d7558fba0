"""tfllm-export --ensemble / --soup / --format=litert as a user runs them, on tiny sentiment
model dirs whose data are TFRecord files (train and validation splits)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tests.cli.test_export import error_line, run_cli
from tests.export.conftest import make_model_dir, export_config
from tfllm import export
from tfllm.export import ensemble, litert
from tfllm.training import evaluation

pytestmark = pytest.mark.slow  # every test starts tfllm-export processes

_TEXTS = ["the film was good", "an awful movie , bad", "a great movie", "the bad film",
          "hello world", "mary lives in london", "that is the question !", "to be or not"]


def _write_split(path, seed):
  rng = np.random.default_rng(seed)
  with tf.io.TFRecordWriter(path) as writer:
    for i in range(24):
      text = _TEXTS[i % len(_TEXTS)]
      feature = {"text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[text.encode()])),
                 "label": tf.train.Feature(int64_list=tf.train.Int64List(
                     value=[int(rng.integers(2))]))}
      writer.write(tf.train.Example(features=tf.train.Features(feature=feature))
                   .SerializeToString())


@pytest.fixture(scope="module")
def members(tmp_path_factory):
  root = tmp_path_factory.mktemp("soup")
  for seed, split in enumerate(("train", "validation")):
    _write_split(str(root / f"{split}.tfrecord"), seed)
  dirs = []
  for seed in range(3):
    config = export_config("sequence_classification")
    config.data.update(dataset="tfrecord", files=str(root / "{split}.tfrecord"))
    config.train.update(global_batch_size=8, eval_steps=3, jit_compile="off")
    path = str(root / f"member{seed}")
    make_model_dir(path, "sequence_classification", seed=20 + seed, config=config)
    dirs.append(path)
  return dirs


def test_greedy_soup_from_the_cli(members, tmp_path):
  done = run_cli("tfllm.cli.export", f"--ensemble={','.join(members)}", "--soup=greedy",
                 f"--export_dir={tmp_path / 'soup'}")
  assert done.returncode == 0, done.stderr
  path = done.stdout.strip().splitlines()[-1]
  record = ensemble.read_members(path)
  assert record["kind"] == "greedy_soup" and record["metric"] == "accuracy"
  # The members' metrics are the trainer's evaluation of each member on validation.
  model, tokenizer, config = export.load_trained(members[0])
  evaluate = evaluation.evaluator(config, tokenizer)
  expected = {d: evaluate(export.load_trained(d)[0])["accuracy"] for d in members}
  assert record["member_metrics"] == pytest.approx(expected)
  best = max(members, key=lambda d: (expected[d], -members.index(d)))
  assert record["ingredients"][0] == best
  assert f"greedy soup of {len(record['ingredients'])} of 3 members" in done.stdout


def test_ensemble_and_litert_from_the_cli(members, tmp_path):
  done = run_cli("tfllm.cli.export", f"--ensemble={members[0]},{members[1]}",
                 f"--export_dir={tmp_path / 'ens'}")
  assert done.returncode == 0, done.stderr
  assert ensemble.read_members(done.stdout.strip().splitlines()[-1])["kind"] == "ensemble"
  lite = run_cli("tfllm.cli.export", f"--model_dir={members[0]}", "--format=litert",
                 "--litert_quantize=int8", f"--export_dir={tmp_path / 'lite'}")
  assert lite.returncode == 0, lite.stderr
  *_, size_line, path = lite.stdout.strip().splitlines()
  assert size_line.startswith(f"{litert.MODEL_FILE}: ") and "gzipped" in size_line
  assert litert.LiteRTClassifier(path)(["a great movie"])["probabilities"].shape == (1, 2)
  bad = run_cli("tfllm.cli.export", f"--ensemble={members[0]},{members[1]}", "--soup=average",
                f"--export_dir={tmp_path / 'x'}")
  assert bad.returncode == 2 and "--soup='average' is not accepted" in error_line(bad)
  bad = run_cli("tfllm.cli.export", f"--model_dir={members[0]}", "--litert_quantize=int4",
                "--format=litert", f"--export_dir={tmp_path / 'x'}")
  assert bad.returncode == 2 and "litert_quantize" in error_line(bad)

"""Ensembles and weight soups (`tfllm.export.ensemble`): the served outputs really average the
members, members that cannot be combined are refused in one line, and the greedy soup keeps
exactly the members that do not hurt the metric."""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfllm import config as config_lib
from tfllm import export
from tfllm.export import ensemble, latency
from tfllm.export import signatures as signatures_lib
from tfllm.tagging.decoding import decode_word_tags
from tests.export.conftest import make_model_dir, strings, export_config

TEXTS = [b"the film was good", b"an awful movie , bad", b"hello"]
SENTENCES = [b"john lives in paris", b"mary and john to london", b"the film"]


@pytest.fixture(scope="module")
def member_dirs(tmp_path_factory):
  """task -> three tiny model dirs of that task, different seeds (different weights)."""
  root = tmp_path_factory.mktemp("members")
  dirs = {}
  for task in ("sequence_classification", "token_classification"):
    dirs[task] = []
    for seed in range(3):
      path = str(root / f"{task}-{seed}")
      make_model_dir(path, task, seed=seed + 10)
      dirs[task].append(path)
  return dirs


def _in_process(model_dir, texts):
  """The member's own served `serving_default`, in process."""
  model, tokenizer, config = export.load_trained(model_dir)
  serving = signatures_lib.signatures_for(model, tokenizer, config)
  return serving.functions()["serving_default"](tf.constant(texts))


def _loaded(path, texts):
  return tf.saved_model.load(path).signatures["serving_default"](text=tf.constant(texts))


@pytest.mark.slow   # served in a fresh TensorFlow-only process, as a model server runs it
def test_ensemble_probabilities_are_the_members_mean(member_dirs, tmp_path):
  dirs = member_dirs["sequence_classification"][:2]
  path = ensemble.export_members(dirs, str(tmp_path / "ens"))
  result = latency.run_tf_only(path, calls=[("serving_default", {"text": strings(TEXTS)})],
                               timeout=300)
  assert not isinstance(result["outputs"][0], str), result["outputs"][0]
  served = result["outputs"][0]
  members = [_in_process(d, TEXTS)["probabilities"].numpy() for d in dirs]
  assert not np.allclose(members[0], members[1], atol=1e-3)   # the members really differ
  mean = np.mean(members, axis=0)
  np.testing.assert_allclose(served["probabilities"], mean, atol=1e-6)
  labels = np.array(["negative", "positive"])[np.argmax(mean, axis=-1)]
  assert [l.decode() for l in served["label"]] == list(labels)
  assert sorted(served) == ["label", "label_id", "probabilities"]   # a single model's keys
  with open(os.path.join(path, "assets.extra", ensemble.MEMBERS_FILE)) as f:
    assert json.load(f) == {"kind": "ensemble", "members": dirs}


def test_ensemble_tags_decode_the_mean_log_probabilities(member_dirs, tmp_path):
  dirs = member_dirs["token_classification"]
  path = ensemble.export_members(dirs, str(tmp_path / "ens"))
  served = _loaded(path, SENTENCES)
  # Reference: each member's logits on the served features, log-softmax in NumPy, mean, then
  # the head's decoding once.
  model, tokenizer, config = export.load_trained(dirs[0])
  serving = signatures_lib.signatures_for(model, tokenizer, config)
  features, encoded = serving.encoder(tf.constant(SENTENCES))
  log_probabilities = []
  for d in dirs:
    logits = export.load_trained(d)[0](features, training=False).numpy().astype(np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    log_probabilities.append(shifted - np.log(np.exp(shifted).sum(-1, keepdims=True)))
  mean = np.mean(log_probabilities, axis=0).astype(np.float32)
  tags = decode_word_tags(tf.constant(mean), encoded["first"], config.task.labels,
                          config.task.decoding)
  first = encoded["first"].numpy()
  names = np.array(config.task.labels)
  for row in range(len(SENTENCES)):
    expected = list(names[tags.numpy()[row][first[row]]])
    got = [t.decode() for t in served["tags"].numpy()[row][:served["num_words"][row]]]
    assert got == expected
  # Not just one member's answer: the averaged scores differ from each member's.
  for member in log_probabilities:
    assert not np.allclose(member, mean, atol=1e-3)


def test_members_that_differ_are_refused_in_one_line(member_dirs, tmp_path):
  other = export_config("sequence_classification")
  other.task.labels = ["bad", "good"]
  odd = str(tmp_path / "other_labels")
  make_model_dir(odd, "sequence_classification", config=other)
  with pytest.raises(config_lib.ConfigError) as error:
    ensemble.export_members([member_dirs["sequence_classification"][0], odd],
                            str(tmp_path / "out"))
  message = str(error.value)
  assert "\n" not in message and odd in message and "config.task.labels" in message
  with pytest.raises(config_lib.ConfigError, match="two or more"):
    ensemble.export_members([odd], str(tmp_path / "out"))
  with pytest.raises(config_lib.ConfigError, match="--soup='mean' is not accepted"):
    ensemble.export_members([odd, odd], str(tmp_path / "out"), soup="mean")
  wider = export_config("sequence_classification")
  wider.model.intermediate_dim = 128
  wide = str(tmp_path / "wider")
  make_model_dir(wide, "sequence_classification", config=wider)
  with pytest.raises(config_lib.ConfigError, match="intermediate_dim; a weight soup needs"):
    ensemble.export_members([member_dirs["sequence_classification"][0], wide],
                            str(tmp_path / "out"), soup="uniform")


def test_uniform_soup_serves_the_mean_weights(member_dirs, tmp_path):
  dirs = member_dirs["sequence_classification"]
  path = ensemble.export_members(dirs, str(tmp_path / "soup"), soup="uniform")
  # Independent reference: NumPy mean of every member's weights in a fresh model.
  models = [export.load_trained(d)[0] for d in dirs]
  reference, tokenizer, config = export.load_trained(dirs[0])
  reference.set_weights([np.mean([m.get_weights()[i] for m in models], axis=0)
                         for i in range(len(reference.weights))])
  expected = signatures_lib.signatures_for(reference, tokenizer, config).functions()[
      "serving_default"](tf.constant(TEXTS))["probabilities"].numpy()
  served = _loaded(path, TEXTS)["probabilities"].numpy()
  np.testing.assert_allclose(served, expected, atol=1e-6)
  member = _in_process(dirs[0], TEXTS)["probabilities"].numpy()
  assert not np.allclose(served, member, atol=1e-3)


def _scalar_models(values):
  """A one-weight model and the weight lists of members whose weight is each of `values`."""
  model = keras.Sequential([keras.Input([1]), keras.layers.Dense(1, use_bias=False)])
  return model, [[np.full([1, 1], v, np.float32)] for v in values]


def _distance_to(target):
  return lambda model: -abs(float(model.get_weights()[0][0, 0]) - target)


def test_greedy_soup_keeps_members_that_do_not_hurt():
  model, weights = _scalar_models([1.0, 3.0, 10.0, 2.5])
  # Metric: closeness to 2. Members alone: -1, -1, -8, -0.5 -> order 3, 0, 1, 2.
  # {3}: -0.5; +0 -> mean 1.75, -0.25 kept; +1 -> mean 2.1667, -0.1667 kept;
  # +2 -> mean 4.125, worse: left out.
  soup = ensemble.greedy_soup(model, weights, _distance_to(2.0))
  assert soup.ingredients == [3, 0, 1]
  assert soup.member_metrics == [-1.0, -1.0, -8.0, -0.5]
  assert model.get_weights()[0][0, 0] == pytest.approx((2.5 + 1.0 + 3.0) / 3)
  assert soup.soup_metric == pytest.approx(-abs(6.5 / 3 - 2.0))
  # A lower-is-better metric: the same choices with the sign flipped.
  negated = lambda m: -_distance_to(2.0)(m)  # noqa: E731
  assert ensemble.greedy_soup(model, weights, negated,
                              higher_is_better=False).ingredients == [3, 0, 1]


def test_greedy_soup_of_one_good_member_is_that_member():
  model, weights = _scalar_models([5.0, 0.0, 9.0])
  soup = ensemble.greedy_soup(model, weights, _distance_to(5.0))
  assert soup.ingredients == [0]
  assert model.get_weights()[0][0, 0] == 5.0


def test_soup_metric_defaults_by_task():
  config = config_lib.validate(export_config("token_classification"))
  assert ensemble.soup_metric(config) == ("entity/micro/f1", True)
  config.export.update(soup_metric="loss", soup_mode="min")
  assert ensemble.soup_metric(config) == ("loss", False)
  config.export.soup_mode = "up"
  with pytest.raises(config_lib.ConfigError, match="soup_mode"):
    config_lib.validate(config)


def test_served_strings_pass_through(member_dirs, tmp_path):
  """Bad inputs the single model survives, the ensemble survives too (same encoder)."""
  dirs = member_dirs["token_classification"][:2]
  path = ensemble.export_members(dirs, str(tmp_path / "ens"))
  served = _loaded(path, strings([b"", b"\xff\xfe john", b"paris " * 100]))
  assert list(served["num_words"].numpy())[:2] == [0, 2]


def test_a_model_dir_from_before_the_new_export_keys_loads_with_their_defaults(member_dirs,
                                                                               tmp_path):
  old = tmp_path / "old"
  make_model_dir(str(old), "sequence_classification")
  saved = json.loads((old / "config.json").read_text())
  for key in ("format", "litert_quantize", "soup_metric", "soup_mode"):
    del saved["export"][key]
  (old / "config.json").write_text(json.dumps(saved))
  config = export.load_trained(str(old))[2]
  assert (config.export.format, config.export.soup_mode) == ("saved_model", "max")


def test_greedy_soup_compares_members_on_validation_whatever_they_were_last_evaluated_on():
  from tests.export.conftest import export_config   # pylint: disable=g-import-not-at-top
  config = export_config("sequence_classification")
  config.data.eval_split = "test"   # what --mode=eval --config.data.eval_split=test leaves
  assert ensemble.soup_eval_config(config).data.eval_split == "validation"
  assert config.data.eval_split == "test"   # a copy: the member's config is unchanged
  config.export.soup_split = "validation[:50%]"
  assert ensemble.soup_eval_config(config).data.eval_split == "validation[:50%]"
  assert ensemble.soup_eval_config(config, {"soup_split": "dev"}).data.eval_split == "dev"


def test_a_soup_says_when_its_members_drew_their_own_heads(tmp_path):
  def members(name, seeds, init_seed):
    dirs = []
    for seed in seeds:
      config = export_config("sequence_classification")
      config.train.update(seed=seed, init_seed=init_seed)
      dirs.append(str(tmp_path / f"{name}{seed}"))
      make_model_dir(dirs[-1], "sequence_classification", seed=seed, config=config)
    return dirs

  lines = []
  ensemble.export_members(members("own", (1, 2), -1), str(tmp_path / "own_soup"),
                          soup="uniform", log=lines.append)
  assert any("built from different seeds (1, 2)" in line for line in lines), lines
  lines = []
  ensemble.export_members(members("shared", (1, 2), 0), str(tmp_path / "shared_soup"),
                          soup="uniform", log=lines.append)
  assert not any("different seeds" in line for line in lines), lines

"""The linear-chain CRF (`tfllm.tagging.crf`) against brute-force enumeration, its decoding,
and a CRF tagging head end to end (loss, metrics, serving, LiteRT, ensembles)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import tensorflow as tf

from tests.tagging.test_decoding import LABELS, _brute_force, _tagger_batch, valid_iob2
from tfllm.metrics import losses
from tfllm.tagging.crf import crf_log_likelihood, crf_negative_log_likelihood_sums
from tfllm.tagging.decoding import decode_word_tags, iob2_transitions
from tfllm.tagging.scores import TagScores


def brute_log_likelihood(emissions, tags, transitions, start):
  """log p(tags) of one sentence by summing exp(score) over every tag sequence."""
  num_steps, num_tags = emissions.shape

  def score(sequence):
    return (start[sequence[0]] + sum(emissions[i, t] for i, t in enumerate(sequence))
            + sum(transitions[a, b] for a, b in zip(sequence, sequence[1:])))

  all_scores = [score(s) for s in itertools.product(range(num_tags), repeat=num_steps)]
  return score(tags) - np.logaddexp.reduce(all_scores)


def random_crf(seed, batch=4, steps=4, num_tags=3):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(batch, steps, num_tags)).astype(np.float32),
          rng.integers(0, num_tags, size=(batch, steps)).astype(np.int32),
          rng.normal(size=(num_tags, num_tags)).astype(np.float32),
          rng.normal(size=(num_tags,)).astype(np.float32))


@pytest.mark.parametrize("jit_compile", [False, True])
def test_log_likelihood_equals_brute_force_over_each_rows_length(jit_compile):
  emissions, tags, transitions, start = random_crf(0)
  lengths = np.array([4, 2, 1, 0], np.int32)
  got = tf.function(crf_log_likelihood, jit_compile=jit_compile)(
      emissions, tags, lengths, transitions, start).numpy()
  for row, length in enumerate(lengths):
    expected = (brute_log_likelihood(emissions[row, :length], tags[row, :length],
                                     transitions, start) if length else 0.0)
    assert got[row] == pytest.approx(expected, abs=1e-4), row
  assert (got <= 1e-6).all()


def test_likelihoods_of_all_sequences_sum_to_one_and_gradients_match_brute_force():
  emissions, _, transitions, start = random_crf(1, batch=1, steps=3)
  sequences = np.array(list(itertools.product(range(3), repeat=3)), np.int32)
  batch = len(sequences)
  tiled = np.repeat(emissions, batch, axis=0)
  log_p = crf_log_likelihood(tiled, sequences, np.full([batch], 3), transitions, start)
  assert float(tf.reduce_sum(tf.exp(log_p))) == pytest.approx(1.0, abs=1e-5)
  # d log p(y) / d transitions = [pairs in y] - E[pairs]: against the brute-force sum.
  variable = tf.Variable(transitions)
  with tf.GradientTape() as tape:
    value = crf_log_likelihood(emissions, sequences[5:6], [3], variable, start)[0]
  gradient = tape.gradient(value, variable).numpy()
  probabilities = np.exp(log_p.numpy())
  expected_pairs = np.zeros((3, 3))
  for p, sequence in zip(probabilities, sequences):
    for a, b in zip(sequence, sequence[1:]):
      expected_pairs[a, b] += p
  observed = np.zeros((3, 3))
  for a, b in zip(sequences[5], sequences[5][1:]):
    observed[a, b] += 1
  np.testing.assert_allclose(gradient, observed - expected_pairs, atol=1e-5)


def test_loss_sums_read_the_words_wherever_they_sit():
  logits, mask = _tagger_batch(3, batch=4, length=8)
  rng = np.random.default_rng(3)
  labels = rng.integers(0, len(LABELS), size=mask.shape).astype(np.int32)
  transitions = rng.normal(size=(len(LABELS),) * 2).astype(np.float32)
  start = rng.normal(size=len(LABELS)).astype(np.float32)
  scores = TagScores(tf.constant(logits), tf.constant(transitions), tf.constant(start))
  weights = mask.astype(np.float32)
  total, weight = crf_negative_log_likelihood_sums(scores, labels, weights)
  expected = -sum(brute_log_likelihood(logits[r, mask[r]], labels[r, mask[r]], transitions,
                                       start) for r in range(4) if mask[r].any())
  assert float(total) == pytest.approx(expected, rel=1e-5)
  assert float(weight) == mask.sum()
  # The trainer's loss entry point dispatches on TagScores.
  assert float(losses.cross_entropy_sums(scores, labels, weights)[0]) == float(total)
  np.testing.assert_array_equal(losses.predictions(scores), logits.argmax(-1))


def test_the_loss_gradient_reads_the_words_in_place_without_a_sort():
  # Under XLA on CPU a sort (and the gather by its result) on the differentiable path made
  # the MiniLM NER training step 3.3x slower (docs/finetuning.md, CRF tagging).
  logits, mask = _tagger_batch(3, batch=4, length=8)
  labels = np.zeros(mask.shape, np.int32)
  emissions = tf.Variable(logits)
  transitions = tf.Variable(tf.zeros([len(LABELS)] * 2))
  start = tf.Variable(tf.zeros([len(LABELS)]))

  @tf.function(jit_compile=True)
  def gradients():
    with tf.GradientTape() as tape:
      total, _ = crf_negative_log_likelihood_sums(TagScores(emissions, transitions, start),
                                                  labels, mask.astype(np.float32))
    return tape.gradient(total, [emissions, transitions, start])

  graph = gradients.get_concrete_function().graph.as_graph_def()
  op_types = {node.op for node in graph.node}
  op_types |= {node.op for function in graph.library.function for node in function.node_def}
  assert not op_types & {"TopKV2", "Sort", "XlaSort", "XlaVariadicSort"}, op_types
  assert all(g is not None for g in gradients())


def test_crf_decoding_is_the_best_valid_sequence_under_the_learned_scores():
  logits, mask = _tagger_batch(4)
  rng = np.random.default_rng(4)
  learned = rng.normal(scale=2.0, size=(len(LABELS),) * 2).astype(np.float32)
  learned_start = rng.normal(size=len(LABELS)).astype(np.float32)
  scores = TagScores(tf.constant(logits), tf.constant(learned), tf.constant(learned_start))
  decoded = tf.function(decode_word_tags, jit_compile=True)(scores, mask, LABELS,
                                                           "crf").numpy()
  forbidden, forbidden_start = iob2_transitions(LABELS)
  for row in range(len(logits)):
    words = np.flatnonzero(mask[row])
    if len(words) == 0 or len(words) > 6:   # brute force stays small
      continue
    expected = _brute_force(logits[row, words], learned + forbidden,
                            learned_start + forbidden_start)
    assert decoded[row, words].tolist() == expected
    assert valid_iob2([LABELS[t] for t in expected])


# A CRF tagging head end to end ---------------------------------------------------------------

def crf_trainer_config(**train):
  from tests.training.helpers import trainer_config   # pylint: disable=g-import-not-at-top
  config = trainer_config("token_classification", **train)
  config.task.update(labels=["O", "B-X", "I-X"], num_classes=0, decoding="crf")
  return config


@pytest.mark.slow
def test_a_crf_tagger_trains_the_same_on_one_device_mirrored_and_under_xla(tmp_path):
  from tests.training.helpers import make_trainer, two_cpu_mirrored  # pylint: disable=g-import-not-at-top
  runs = {}
  for name, strategy, jit in (("one", None, "off"), ("mirrored", two_cpu_mirrored(), "off"),
                              ("xla", None, "on")):
    trainer = make_trainer(crf_trainer_config(jit_compile=jit), tmp_path / name,
                           strategy=strategy)
    result = trainer.train()
    runs[name] = (result.losses, trainer.model.head.transitions.numpy(), trainer.evaluate())
  losses_one, transitions, metrics = runs["one"]
  assert losses_one[-1] < 0.7 * losses_one[0]          # the CRF loss is learned
  assert np.abs(transitions).max() > 1e-3              # and so are the transitions
  assert "entity/micro/f1" in metrics and np.isfinite(metrics["loss"])
  for name in ("mirrored", "xla"):
    np.testing.assert_allclose(runs[name][0], losses_one, rtol=1e-4, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(runs[name][1], transitions, atol=1e-4, err_msg=name)
    assert runs[name][2]["entity/micro/f1"] == pytest.approx(metrics["entity/micro/f1"])


def test_ensembles_of_crf_taggers_average_emissions_and_transitions():
  from tfllm.export.ensemble import EnsembleForward   # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(5)

  def member(seed):
    scores = [rng.normal(size=shape).astype(np.float32) for shape in ((2, 4, 3), (3, 3), (3,))]
    return lambda features, training=False: TagScores(*map(tf.constant, scores)), scores

  (first, a), (second, b) = member(0), member(1)
  for model in (first, second):
    model.backbone = type("Backbone", (), {"max_sequence_length": 16})()
  averaged = EnsembleForward([first, second], "token_classification")({})
  assert isinstance(averaged, TagScores)
  for got, x, y in zip((averaged.emissions, averaged.transitions, averaged.start), a, b):
    np.testing.assert_allclose(got.numpy(), (x + y) / 2, rtol=1e-6)


@pytest.mark.slow
def test_served_and_litert_crf_tags_are_the_best_sequence_under_the_learned_scores(tmp_path):
  from tests.export.conftest import (NER_TAGS, export_config, make_model_dir,  # pylint: disable=g-import-not-at-top
                                     strings)
  from tfllm import export   # pylint: disable=g-import-not-at-top
  from tfllm.export import latency, litert   # pylint: disable=g-import-not-at-top
  from tfllm.export.heads import WordEncoder   # pylint: disable=g-import-not-at-top
  config = export_config("token_classification")
  config.task.decoding = "crf"
  rng = np.random.default_rng(6)

  def learned(model):   # transitions that change the best path: decoding must read them
    model.head.transitions.assign(rng.normal(scale=3.0, size=(len(NER_TAGS),) * 2))
    model.head.start.assign(rng.normal(scale=3.0, size=len(NER_TAGS)))

  model_dir = str(tmp_path / "crf")
  model, config = make_model_dir(model_dir, "token_classification", config=config,
                                 change=learned)
  texts = [b"john lives in paris", b"mary and john to london the film", b"hello"]
  version = export.export_model_dir(model_dir, str(tmp_path / "serving"))
  served = latency.run_tf_only(version, calls=[("serving_default", {"text": strings(texts)})],
                               timeout=300)["outputs"][0]
  features, encoded = WordEncoder(export.load_trained(model_dir)[1],
                                  config.data.sequence_length)(tf.constant(texts))
  scores = model(features)
  forbidden, forbidden_start = iob2_transitions(NER_TAGS)
  transitions = scores.transitions.numpy() + forbidden
  start = scores.start.numpy() + forbidden_start
  lite = litert.LiteRTClassifier(litert.export_litert(*export.load_trained(model_dir),
                                                      str(tmp_path / "litert")))(texts)
  differs = False
  for row in range(len(texts)):
    words = np.flatnonzero(encoded["first"][row].numpy())
    emissions = scores.emissions[row].numpy()[words]
    expected = [NER_TAGS[t] for t in _brute_force(emissions, transitions, start)]
    n = served["num_words"][row]
    assert [t.decode() for t in served["tags"][row][:n]] == expected
    assert [t.decode() for t in lite["tags"][row][:n]] == expected
    viterbi = decode_word_tags(scores.emissions[row:row + 1], encoded["first"][row:row + 1],
                               NER_TAGS, "iob2_viterbi").numpy()[0, words]
    differs |= [NER_TAGS[t] for t in viterbi] != expected
  assert differs   # the learned transitions changed some path


def test_distillation_refuses_crf_taggers_in_one_line():
  from tfllm import config as config_lib   # pylint: disable=g-import-not-at-top
  from tfllm.finetune.distillation import check_student   # pylint: disable=g-import-not-at-top
  with pytest.raises(config_lib.ConfigError, match="the student's config.task.decoding='crf' "
                                                   "\\(a sentence-level CRF\\) is not supported"):
    check_student(crf_trainer_config())

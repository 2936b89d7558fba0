"""IOB2-constrained Viterbi decoding against brute force and an independent NumPy Viterbi."""

import itertools
import json

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from tfllm import config as config_lib
from tfllm.metrics.entity_f1 import EntityF1
from tfllm.tagging.decoding import decode_word_tags, iob2_transitions, viterbi_decode
from tfllm.models.config import tag_decoding
from tfllm.training import saved_config

LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG"]


def valid_iob2(tags):
  """True when no `I-X` starts the sequence or follows `O` or a tag of another type."""
  previous = "O"
  for tag in tags:
    if tag.startswith("I-") and previous[2:] != tag[2:]:
      return False
    previous = tag
  return True


def reference_viterbi(log_probs, labels):
  """The best valid IOB2 tag ids of one sentence, `[words, tags]` log-probabilities in."""
  allowed = np.array([[not b.startswith("I-") or a[2:] == b[2:] for b in labels]
                      for a in labels])
  start = np.array([not b.startswith("I-") for b in labels])
  score = np.where(start, log_probs[0], -np.inf)
  back = []
  for row in log_probs[1:]:
    candidates = np.where(allowed, score[:, None], -np.inf)
    back.append(candidates.argmax(0))
    score = candidates.max(0) + row
  best = [int(score.argmax())]
  for pointers in reversed(back):
    best.append(int(pointers[best[-1]]))
  return best[::-1]


def _brute_force(scores, transitions, start):
  num_steps, num_tags = scores.shape
  def total(tags):
    return (start[tags[0]] + sum(scores[i, t] for i, t in enumerate(tags))
            + sum(transitions[a, b] for a, b in zip(tags, tags[1:])))
  return list(max(itertools.product(range(num_tags), repeat=num_steps), key=total))


def test_transitions_allow_i_only_after_its_own_type():
  transitions, start = iob2_transitions(LABELS)
  allowed = {(a, b) for a, b in itertools.product(LABELS, LABELS)
             if transitions[LABELS.index(a), LABELS.index(b)] == 0}
  assert {b for a, b in allowed if a == "O"} == {"O", "B-PER", "B-ORG"}
  assert {a for a, b in allowed if b == "I-PER"} == {"B-PER", "I-PER"}
  assert [label for label, s in zip(LABELS, start) if s == 0] == ["O", "B-PER", "B-ORG"]
  with pytest.raises(ValueError, match="'PER' is not an IOB2 tag"):
    iob2_transitions(["O", "PER"])


@pytest.mark.parametrize("jit_compile", [False, True])
def test_viterbi_equals_brute_force_over_each_rows_length(jit_compile):
  rng = np.random.default_rng(0)
  transitions, start = iob2_transitions(LABELS)
  scores = rng.normal(size=(6, 5, len(LABELS))).astype(np.float32)
  lengths = np.array([5, 3, 1, 0, 4, 2], np.int32)
  decode = tf.function(viterbi_decode, jit_compile=jit_compile)
  decoded = decode(scores, lengths, transitions, start).numpy()
  assert decoded.shape == (6, 5)
  for row, length in enumerate(lengths):
    if length:
      expected = _brute_force(scores[row, :length], transitions, start)
      assert decoded[row, :length].tolist() == expected


def test_a_one_word_sentence_does_not_start_inside_an_entity():
  transitions, start = iob2_transitions(LABELS)
  scores = np.log(np.array([[[0.1, 0.2, 0.5, 0.1, 0.1]]], np.float32))  # I-PER most likely
  assert viterbi_decode(scores, np.array([1]), transitions, start).numpy().tolist() == [[1]]


def _tagger_batch(seed, batch=8, length=20):
  """Random logits with first-piece masks scattered among continuation and padding pieces."""
  rng = np.random.default_rng(seed)
  logits = rng.normal(scale=2.0, size=(batch, length, len(LABELS))).astype(np.float32)
  mask = np.zeros((batch, length), bool)
  for row in range(batch):
    words = int(rng.integers(0, length - 2))
    mask[row, 1 + np.sort(rng.choice(length - 2, words, replace=False))] = True
  return logits, mask


@pytest.mark.parametrize("trim", [False, True])
def test_decoded_word_tags_are_the_best_valid_sequence_at_the_word_positions(trim):
  logits, mask = _tagger_batch(1)
  # XLA needs static shapes (the eval step); trimming to the longest row is for serving.
  decode = tf.function(decode_word_tags, jit_compile=not trim)
  decoded = decode(logits, mask, LABELS, "iob2_viterbi", trim=trim).numpy()
  argmax = logits.argmax(-1)
  some_argmax_invalid = False
  for row in range(len(logits)):
    words = np.flatnonzero(mask[row])
    log_probs = tf.nn.log_softmax(logits[row, words]).numpy()
    expected = reference_viterbi(log_probs, LABELS) if len(words) else []
    assert decoded[row, words].tolist() == expected
    assert valid_iob2([LABELS[t] for t in expected])
    argmax_tags = [LABELS[t] for t in argmax[row, words]]
    some_argmax_invalid |= not valid_iob2(argmax_tags)
    if valid_iob2(argmax_tags):   # nothing to fix: the constrained best is the argmax
      assert decoded[row, words].tolist() == argmax[row, words].tolist()
    np.testing.assert_array_equal(decoded[row, ~mask[row]], argmax[row, ~mask[row]])
  assert some_argmax_invalid   # the batch exercises the constraint
  assert mask.sum(1).max() < mask.shape[1] - 2   # and trimming drops steps
  np.testing.assert_array_equal(decode_word_tags(logits, mask, LABELS, "argmax"), argmax)
  with pytest.raises(ValueError, match="decoding 'beam' is not known; accepted: argmax, "
                     "iob2_viterbi, crf"):
    decode_word_tags(logits, mask, LABELS, "beam")
  with pytest.raises(ValueError, match="decoding 'crf' needs a CRF head's TagScores"):
    decode_word_tags(logits, mask, LABELS, "crf")


def test_reference_viterbi_equals_brute_force():
  rng = np.random.default_rng(3)
  transitions, start = iob2_transitions(LABELS)
  for _ in range(5):
    log_probs = tf.nn.log_softmax(rng.normal(size=(4, len(LABELS)))).numpy()
    assert reference_viterbi(log_probs, LABELS) == _brute_force(log_probs, transitions, start)


def test_entity_f1_scores_the_decoded_tags():
  # Words: "John Smith lives": the head's argmax says O I-PER O (no valid entity start), and
  # B-PER is a close second at the first word.
  probabilities = np.array([[[0.50, 0.45, 0.01, 0.02, 0.02],
                             [0.05, 0.05, 0.80, 0.05, 0.05],
                             [0.90, 0.02, 0.04, 0.02, 0.02]]], np.float32)
  labels = np.array([[1, 2, 0]])
  weights = np.ones((1, 3), np.float32)
  results = {}
  for decoding in ("argmax", "iob2_viterbi"):
    task = ml_collections.ConfigDict(dict(name="token_classification", labels=LABELS,
                                          decoding=decoding))
    metric = EntityF1(task)
    sums = metric.sums({}, np.log(probabilities), labels, weights)
    results[decoding] = metric.result({k: float(v) for k, v in sums.items()})
  # seqeval reads argmax's "O I-PER" as an entity starting at "Smith": wrong span.
  assert results["argmax"]["entity/micro/f1"] == 0.0
  assert results["iob2_viterbi"]["entity/micro/f1"] == 1.0


def test_config_accepts_viterbi_only_on_iob2_tagging_heads():
  def task(**kwargs):
    config = config_lib.default_config()
    config.task.update(kwargs)
    return config

  config_lib.validate(task(name="token_classification", labels=LABELS, decoding="iob2_viterbi"))
  config_lib.validate(task(name="token_classification", labels=LABELS, decoding="crf"))
  bad = [
      (dict(name="token_classification", labels=LABELS, decoding="beam"),
       "config.task.decoding='beam' is not accepted; use one of: 'argmax', 'iob2_viterbi', "
       "'crf'"),
      (dict(name="token_classification", labels=["O", "PER"], decoding="crf"),
       "config.task.decoding='crf' needs IOB2 tags: tag 'PER' is not an IOB2 tag"),
      (dict(name="token_classification", labels=["O", "PER"], decoding="iob2_viterbi"),
       "config.task.decoding='iob2_viterbi' needs IOB2 tags: tag 'PER' is not an IOB2 tag"),
      (dict(name="token_classification", num_classes=3, decoding="iob2_viterbi"),
       "config.task.decoding='iob2_viterbi' needs IOB2 tag names in config.task.labels"),
      (dict(name="sequence_classification", labels=["a", "b"], decoding="iob2_viterbi"),
       "config.task.decoding='iob2_viterbi' decodes tags; a sequence_classification head "
       "takes only 'argmax'"),
      (dict(name="multi_task", heads={"s": dict(labels=["a", "b"], decoding="iob2_viterbi")}),
       "config.task.heads.s.decoding='iob2_viterbi' decodes tags"),
  ]
  for kwargs, message in bad:
    with pytest.raises(config_lib.ConfigError, match=message.replace("(", r"\(")
                       .replace(")", r"\)").replace("[", r"\[")):
      config_lib.validate(task(**kwargs))


def test_decoding_is_not_part_of_a_model_dirs_shape(tmp_path):
  config = config_lib.default_config()
  config.task.update(name="token_classification", labels=LABELS)
  saved = json.loads(config_lib.to_json(config))
  del saved["task"]["decoding"]   # a model dir written before the key existed
  (tmp_path / "config.json").write_text(json.dumps(saved))
  assert tag_decoding(config_lib.from_json(json.dumps(saved)).task) == "argmax"
  config.task.decoding = "iob2_viterbi"
  assert saved_config.compare_with_model_dir(config, str(tmp_path)) == [
      "config.task.decoding='iob2_viterbi' (model_dir has None)"]
  config.task.labels = LABELS[:3]
  with pytest.raises(ValueError, match="holds a different model: config.task.labels"):
    saved_config.compare_with_model_dir(config, str(tmp_path))


@pytest.mark.parametrize("trim", [False, True])
def test_batches_of_unknown_size_with_one_word_or_no_row_decode(trim):
  # A serving signature: the batch size is unknown when traced, and a request may hold only
  # one-word texts (one Viterbi step when trimmed) or no text at all.
  decode = tf.function(
      lambda logits, mask: decode_word_tags(logits, mask, LABELS, "iob2_viterbi", trim=trim),
      input_signature=[tf.TensorSpec([None, 6, len(LABELS)]), tf.TensorSpec([None, 6], tf.bool)])
  logits = np.log(np.full((2, 6, len(LABELS)), 0.1, np.float32))
  logits[:, 1, 2] = np.log(0.5)   # I-PER most likely, B-PER next: a sentence starts with B-PER
  logits[:, 1, 1] = np.log(0.3)
  mask = np.zeros((2, 6), bool)
  mask[:, 1] = True
  assert decode(logits, mask).numpy()[:, 1].tolist() == [1, 1]
  assert decode(logits[:0], mask[:0]).shape == (0, 6)

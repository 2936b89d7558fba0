"""Input pipelines: packing, masking, label alignment, sharding, static shapes, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tests.data.conftest import make_config, pydoc_topics, write_text_files, write_tfrecord
from tfllm.data import pipelines, sources, tokenizers

BYTE = tokenizers.ByteLevelTokenizer()
SPECIAL = tokenizers.special_token_ids(BYTE)


def _numpy(dataset, limit=None):
  batches = dataset.take(limit) if limit else dataset
  return [tf.nest.map_structure(lambda t: t.numpy(), batch) for batch in batches]


def _byte_stream(texts, separator):
  ids = []
  for text in texts:
    ids.extend(text.encode("utf-8"))
    ids.append(separator)
  return ids


@pytest.fixture(scope="module")
def lm_config(tmp_path_factory):
  files = write_text_files(tmp_path_factory.mktemp("lm"), pydoc_topics(12))
  config = make_config(dataset="text_files", files=files, sequence_length=32)
  config.task.name = "causal_lm"
  return config


def test_causal_lm_packing_loses_and_repeats_no_token(lm_config):
  batches = _numpy(pipelines.make_dataset(lm_config, "train", BYTE, training=False))
  blocks = []
  for features, labels, weights in batches:
    assert features["token_ids"].shape == labels.shape == weights.shape == (4, 32)
    assert features["padding_mask"].all() and (weights == 1.0).all()
    np.testing.assert_array_equal(features["token_ids"][:, 1:], labels[:, :-1])
    blocks.extend(np.concatenate([features["token_ids"], labels[:, -1:]], axis=1))
  packed = np.concatenate(blocks).tolist()
  files = sorted(tf.io.gfile.glob(lm_config.data.files.replace("{split}", "train")))
  texts = [open(path, encoding="utf-8").read() for path in files]
  expected = _byte_stream(texts, SPECIAL["eos"])
  # Every block is the next 33 tokens of the document stream; only the tail that does not
  # fill a whole batch of blocks is left out.
  assert packed == expected[:len(packed)]
  assert len(expected) - len(packed) < 4 * 33


def test_training_pipelines_have_static_shapes_and_repeat(lm_config):
  dataset = pipelines.make_dataset(lm_config, "train", BYTE, training=True)
  features, labels, weights = dataset.element_spec
  for spec in (*features.values(), labels, weights):
    assert spec.shape.is_fully_defined() and spec.shape[0] == 4
  eval_batches = len(_numpy(pipelines.make_dataset(lm_config, "train", BYTE, training=False)))
  assert len(_numpy(dataset, 3 * eval_batches)) == 3 * eval_batches


def test_seeded_deterministic_pipeline_repeats_itself_and_a_new_seed_changes_it(lm_config):
  config = make_config(**lm_config.data.to_dict())
  config.task.name = "causal_lm"
  config.data.update(dict(deterministic=True, shuffle_buffer=50, seed=3))
  first = _numpy(pipelines.make_dataset(config, "train", BYTE), 5)
  second = _numpy(pipelines.make_dataset(config, "train", BYTE), 5)
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a[0]["token_ids"], b[0]["token_ids"])
  config.data.seed = 4
  other = _numpy(pipelines.make_dataset(config, "train", BYTE), 5)
  assert any((a[0]["token_ids"] != b[0]["token_ids"]).any() for a, b in zip(first, other))


def test_per_replica_batch_and_two_input_contexts_are_disjoint_and_cover(tmp_path):
  texts = [f"document number {i} " * 3 for i in range(10)]
  files = write_text_files(tmp_path, texts)
  config = make_config(dataset="text_files", files=files, sequence_length=8)
  config.task.name = "causal_lm"
  config.train.global_batch_size = 4
  seen = []
  for pipeline_id in range(2):
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id,
                                         num_replicas_in_sync=2)
    documents = sources.text_documents(config.data, "train", context)
    seen.append({t.decode() for t in documents.as_numpy_iterator()})
    batches = _numpy(pipelines.make_dataset(config, "train", BYTE, context, training=False))
    assert batches and all(b[0]["token_ids"].shape == (2, 8) for b in batches)
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] == set(texts)


def test_masked_lm_masks_15_percent_and_labels_only_masked_positions(lm_config):
  config = make_config(**lm_config.data.to_dict())
  config.task.name = "masked_lm"
  # keras-hub selects ceil(rate x selectable) tokens a sequence: at the default length of 128
  # that is 19 of 126 (15.1%); shorter sequences round further up (10 of 62 is 16.1%).
  config.data.update(dict(sequence_length=128, max_predictions=20))
  config.train.global_batch_size = 16
  masked = _numpy(pipelines.make_dataset(config, "train", BYTE, training=False))
  config.task.name = "causal_lm"
  config.data.sequence_length = 125     # blocks of 126 tokens: what sits between [CLS] and [SEP]
  plain = _numpy(pipelines.make_dataset(config, "train", BYTE, training=False))
  originals = np.concatenate([np.concatenate([f["token_ids"], l[:, -1:]], axis=1)
                              for f, l, _ in plain])
  selected = selectable = replaced_by_mask = 0
  row = 0
  for features, labels, weights in masked:
    assert features["token_ids"].shape == (16, 128)
    assert labels.shape == weights.shape == features["mask_positions"].shape == (16, 20)
    for ids, positions, targets, weight in zip(features["token_ids"],
                                               features["mask_positions"], labels, weights):
      original = np.concatenate([[SPECIAL["cls"]], originals[row], [SPECIAL["sep"]]])
      row += 1
      used = weight > 0
      restored = ids.copy()
      restored[positions[used]] = targets[used]
      np.testing.assert_array_equal(restored, original)          # labels = original ids
      changed = np.flatnonzero(ids != original)
      assert set(changed) <= set(positions[used])                # only masked slots change
      assert not np.isin(original[positions[used]], [SPECIAL["cls"], SPECIAL["sep"]]).any()
      selected += used.sum()
      selectable += np.isin(original, [SPECIAL["cls"], SPECIAL["sep"]], invert=True).sum()
      replaced_by_mask += (ids[positions[used]] == SPECIAL["mask"]).sum()
  assert selectable > 10000
  assert abs(selected / selectable - 0.15) < 0.01
  assert 0.75 < replaced_by_mask / selected < 0.85


def _reviews(tmp_path, labels):
  examples = [{"sentence": f"review {i} " + ("good " if label == "pos" else "bad ") * (i % 7),
               "label": label} for i, label in enumerate(labels)]
  write_tfrecord(tmp_path / "train.tfrecord", examples)
  return examples


def test_sequence_classification_pads_truncates_and_maps_string_labels(tmp_path):
  examples = _reviews(tmp_path, ["pos", "neg"] * 6)
  config = make_config(dataset="tfrecord", files=str(tmp_path / "{split}.tfrecord"),
                       text_feature="sentence", sequence_length=16)
  config.task.update(dict(name="sequence_classification", labels=["neg", "pos"]))
  batches = _numpy(pipelines.make_dataset(config, "train", BYTE, training=False))
  assert len(batches) == 3
  rows = 0
  for features, labels, weights in batches:
    assert features["token_ids"].shape == (4, 16) and labels.shape == weights.shape == (4,)
    for ids, mask, label in zip(features["token_ids"], features["padding_mask"], labels):
      example = examples[rows]
      rows += 1
      text = list(example["sentence"].encode())[:14]
      length = len(text) + 2
      assert ids[:length].tolist() == [SPECIAL["cls"], *text, SPECIAL["sep"]]
      assert (ids[length:] == SPECIAL["pad"]).all()
      assert mask.tolist() == [True] * length + [False] * (16 - length)
      assert label == ["neg", "pos"].index(example["label"])


def test_label_outside_the_label_set_is_a_clear_error(tmp_path):
  _reviews(tmp_path, ["pos", "neg", "meh", "pos"])
  config = make_config(dataset="tfrecord", files=str(tmp_path / "{split}.tfrecord"),
                       text_feature="sentence", sequence_length=16)
  config.task.update(dict(name="sequence_classification", labels=["neg", "pos"]))
  with pytest.raises(tf.errors.InvalidArgumentError, match="outside the label set"):
    _numpy(pipelines.make_dataset(config, "train", BYTE, training=False))
  config.task.labels = []
  with pytest.raises(ValueError, match="holds strings; name the classes in config.task.labels"):
    pipelines.make_dataset(config, "train", BYTE, training=False)


@pytest.fixture(scope="module")
def tagged(tmp_path_factory):
  """Sentences of the pydoc prose with a made-up tag per word (by word length)."""
  rng = np.random.default_rng(0)
  words = " ".join(pydoc_topics(3)).split()
  examples = []
  for _ in range(24):
    start = int(rng.integers(0, len(words) - 12))
    sentence = words[start:start + int(rng.integers(1, 12))]
    examples.append({"tokens": sentence, "ner": [len(w) % 3 for w in sentence]})
  directory = tmp_path_factory.mktemp("ner")
  write_tfrecord(directory / "train.tfrecord", examples)
  config = make_config(dataset="tfrecord", files=str(directory / "{split}.tfrecord"),
                       text_feature="tokens", label_feature="ner", sequence_length=96)
  config.task.update(dict(name="token_classification", labels=["A", "B", "C"]))
  return config, examples


def _words_back(features, labels, weights):
  """Word tags read back from the first pieces: one list per example."""
  out = []
  for word_ids, tags, weight in zip(features["word_ids"], labels, weights):
    first = weight > 0
    assert (word_ids[first] == np.arange(first.sum())).all()   # first pieces, words in order
    out.append(tags[first].tolist())
  return out


@pytest.mark.parametrize("kind", ["word_piece", "byte"])
def test_token_classification_round_trip_words_to_pieces_to_words_is_exact(kind, tagged,
                                                                          tmp_path):
  config, examples = tagged
  if kind == "byte":
    tokenizer = BYTE
  else:
    lines = tf.data.Dataset.from_tensor_slices(pydoc_topics(3))
    tokenizer = tokenizers.train_word_piece(lines, 200)
  ids = tokenizers.special_token_ids(tokenizer)
  batches = _numpy(pipelines.make_dataset(config, "train", tokenizer, training=False))
  recovered = []
  multi_piece_words = 0
  for features, labels, weights in batches:
    recovered.extend(_words_back(features, labels, weights))
    for token_ids, word_ids, mask in zip(features["token_ids"], features["word_ids"],
                                         features["padding_mask"]):
      length = mask.sum()
      assert token_ids[0] == ids["cls"] and token_ids[length - 1] == ids["sep"]
      assert word_ids[0] == -1 and (word_ids[length - 1:] == -1).all()
      multi_piece_words += (np.diff(word_ids[1:length - 1]) == 0).sum()
  assert recovered == [e["ner"] for e in examples]
  assert multi_piece_words > 0          # the alignment was exercised on split words


def test_token_classification_keeps_whole_first_pieces_when_truncating(tagged):
  config, examples = tagged
  config = make_config(**config.data.to_dict())
  config.task.update(dict(name="token_classification", labels=["A", "B", "C"]))
  config.data.sequence_length = 12
  batches = _numpy(pipelines.make_dataset(config, "train", BYTE, training=False))
  recovered = [tags for batch in batches for tags in _words_back(*batch)]
  for tags, example in zip(recovered, examples):
    assert tags == example["ner"][:len(tags)]


def test_evaluation_covers_the_whole_split_filling_the_last_batch_with_weight_0(tmp_path):
  examples = _reviews(tmp_path, ["pos", "neg"] * 5 + ["pos"])   # 11 examples, batches of 4
  config = make_config(dataset="tfrecord", files=str(tmp_path / "{split}.tfrecord"),
                       text_feature="sentence", sequence_length=16)
  config.task.update(dict(name="sequence_classification", labels=["neg", "pos"]))
  dataset = pipelines.make_dataset(config, "train", BYTE, training=False)
  assert dataset.element_spec[0]["token_ids"].shape == (4, 16)   # static for the compiled step
  batches = _numpy(dataset)
  assert len(batches) == 3
  features, labels, weights = batches[-1]
  assert weights.tolist() == [1, 1, 1, 0] and labels[:3].tolist() == [1, 0, 1]
  assert (features["token_ids"][3] == SPECIAL["pad"]).all()
  assert not features["padding_mask"][3].any()
  assert sum(float(b[2].sum()) for b in batches) == len(examples)
  # Training batches stay whole: the partial one is dropped, not padded.
  assert all(b[2].tolist() == [1, 1, 1, 1] for b in _numpy(
      pipelines.make_dataset(config, "train", BYTE, training=True), limit=8))


def _example_rows(batches):
  """Each example of `batches` with weight: (token ids without padding, tags, weights)."""
  rows = []
  for features, labels, weights in batches:
    for ids, mask, tags, weight in zip(features["token_ids"], features["padding_mask"], labels,
                                       weights):
      if weight.any():
        n = mask.sum()
        rows.append((tuple(ids[:n]), tuple(tags[:n]), tuple(weight[:n])))
  return sorted(rows)


@pytest.mark.parametrize("training", [False, True])
def test_bucketing_by_length_pads_each_batch_to_its_bucket_and_keeps_every_example(tagged,
                                                                                   training):
  config, examples = tagged
  config = make_config(**config.data.to_dict())
  config.task.update(dict(name="token_classification", labels=["A", "B", "C"]))
  static = _numpy(pipelines.make_dataset(config, "train", BYTE, training=False))
  config.data.bucket_lengths = (24, 48)
  dataset = pipelines.make_dataset(config, "train", BYTE, training=training)
  batches = _numpy(dataset, limit=20 if training else None)
  lengths = set()
  for features, labels, weights in batches:
    length = features["token_ids"].shape[1]
    lengths.add(length)
    assert length in (24, 48, 96) and labels.shape == weights.shape == (4, length)
    longest = features["padding_mask"].sum(axis=1).max()
    assert longest <= length and (length == 24 or longest > {48: 24, 96: 48}[length])
    assert (features["word_ids"][~features["padding_mask"]] == -1).all()
  assert len(lengths) >= 2                  # the sentences (1-11 words) span two buckets
  if not training:                          # every example once, with its tags
    assert _example_rows(batches) == _example_rows(static)
    assert len(_example_rows(batches)) == len(examples)


def test_bucketed_sequence_classification_keeps_scalar_labels(tmp_path):
  _reviews(tmp_path, ["pos", "neg"] * 6)
  config = make_config(dataset="tfrecord", files=str(tmp_path / "{split}.tfrecord"),
                       text_feature="sentence", sequence_length=64, bucket_lengths=(16, 32))
  config.task.update(dict(name="sequence_classification", labels=["neg", "pos"]))
  batches = _numpy(pipelines.make_dataset(config, "train", BYTE, training=False))
  assert {b[0]["token_ids"].shape[1] for b in batches} <= {16, 32, 64}
  assert all(b[1].shape == b[2].shape == (4,) for b in batches)
  assert sum(float(b[2].sum()) for b in batches) == 12


def _sentences(lengths, documents):
  """`with_document_context` input: sentence i has pieces 100 i, 100 i + 1, ..."""
  rows = [[100 * i + j for j in range(n)] for i, n in enumerate(lengths)]
  return rows, tf.data.Dataset.from_generator(
      lambda: ((np.array(r, np.int32), np.arange(len(r), dtype=np.int32),
                np.full(len(r), 2, np.int32), np.ones(len(r), np.int32), np.int64(d))
               for r, d in zip(rows, documents)),
      output_signature=tuple([tf.TensorSpec([None], tf.int32)] * 4
                             + [tf.TensorSpec([], tf.int64)]))


@pytest.mark.parametrize("context_tokens,max_tokens", [(6, 40), (6, 9), (50, 60), (1, 40)])
def test_document_context_takes_the_nearest_pieces_of_the_same_document(context_tokens,
                                                                       max_tokens):
  lengths = [3, 5, 1, 4, 2, 7, 3, 3, 6, 2, 2, 1, 5]
  documents = [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 2, 3]
  rows, sentences = _sentences(lengths, documents)
  out = list(pipelines.with_document_context(sentences, context_tokens, max_tokens)
             .as_numpy_iterator())
  assert len(out) == len(rows)
  for i, (ids, word_ids, tags, first) in enumerate(out):
    own = (word_ids >= 0)
    start = int(np.argmax(own))
    assert ids[own].tolist() == rows[i] and own[start:start + len(rows[i])].all()
    assert (tags[~own] == 0).all() and (first[~own] == 0).all() and (tags[own] == 2).all()
    before_all = [p for j in range(max(0, i - 8), i) if documents[j] == documents[i]
                  for p in rows[j]]
    after_all = [p for j in range(i + 1, min(len(rows), i + 9)) if documents[j] == documents[i]
                 for p in rows[j]]
    before, after = ids[:start].tolist(), ids[start + len(rows[i]):].tolist()
    assert before == before_all[len(before_all) - len(before):]     # nearest, in order
    assert after == after_all[:len(after)]
    budget = min(context_tokens, max(max_tokens - len(rows[i]), 0))
    assert len(before) + len(after) == min(budget, len(before_all) + len(after_all))
    if len(before) < len(before_all) and len(after) < len(after_all):
      assert abs(len(before) - len(after)) <= 1                     # split evenly
  # A sentence alone in its document gets no context.
  assert (out[11][1] >= 0).all() and (out[12][1] >= 0).all()


def test_token_classification_with_document_context_scores_only_the_sentence(tagged,
                                                                            tmp_path):
  _, examples = tagged
  documents = [i // 5 for i in range(len(examples))]
  write_tfrecord(tmp_path / "train.tfrecord",
                 [dict(e, document=d) for e, d in zip(examples, documents)])
  config = make_config(dataset="tfrecord", files=str(tmp_path / "{split}.tfrecord"),
                       text_feature="tokens", label_feature="ner", sequence_length=96)
  config.task.update(dict(name="token_classification", labels=["A", "B", "C"]))
  alone = _numpy(pipelines.make_dataset(config, "train", BYTE, training=False))
  config.data.context_tokens = 40
  batches = _numpy(pipelines.make_dataset(config, "train", BYTE, training=False))
  recovered = [tags for batch in batches for tags in _words_back(*batch)]
  assert recovered == [e["ner"] for e in examples]      # the same words, tags and weights
  length = lambda batches: sum(int(b[0]["padding_mask"].sum()) for b in batches)  # noqa
  context = sum(int(((b[0]["word_ids"] == -1) & b[0]["padding_mask"]).sum()) for b in batches)
  assert length(batches) - length(alone) == context - 2 * len(examples) > 0
  for features, _, _ in batches:                        # [CLS] context sentence context [SEP]
    assert (features["token_ids"][:, 0] == SPECIAL["cls"]).all()
  config.data.bucket_lengths = (32, 64)
  for features, labels, weights in _numpy(
      pipelines.make_dataset(config, "train", BYTE, training=True), limit=6):
    assert features["token_ids"].shape[1] in (32, 64, 96) and weights.sum() > 0
  config.data.document_feature = "article"
  with pytest.raises(ValueError, match="config.data.document_feature='article' is not a "
                                       "feature of 'tfrecord'"):
    pipelines.make_dataset(config, "train", BYTE)


def test_bad_input_errors(tmp_path, lm_config):
  config = make_config(**lm_config.data.to_dict())
  config.task.name = "causal_lm"
  config.data.sequence_length = 1
  with pytest.raises(ValueError, match="sequence_length=1 is too short"):
    pipelines.make_dataset(config, "train", BYTE)
  config.data.sequence_length = 16
  config.task.name = "multi_task"
  with pytest.raises(ValueError, match="task.name='multi_task' has no single input pipeline"):
    pipelines.make_dataset(config, "train", BYTE)
  config.task.name = "causal_lm"
  config.data.bucket_lengths = (8,)
  with pytest.raises(ValueError, match=r"bucket_lengths=\(8,\) applies to sequence_class"):
    pipelines.make_dataset(config, "train", BYTE)
  config.task.update(dict(name="sequence_classification", labels=["neg", "pos"]))
  for buckets in ((16,), (8, 4), (0, 8)):
    config.data.bucket_lengths = buckets
    with pytest.raises(ValueError, match="give increasing lengths from 1 to below "
                                         "config.data.sequence_length=16"):
      pipelines.make_dataset(config, "train", BYTE)
  config.data.bucket_lengths = ()
  config.data.context_tokens = 32
  with pytest.raises(ValueError, match="context_tokens=32 applies to token_classification, "
                                       "not task sequence_classification"):
    pipelines.make_dataset(config, "train", BYTE)
  config.data.context_tokens = 0
  config.task.name = "masked_lm"
  word_piece_without_mask = tokenizers.load_vocabulary(
      str(_vocab(tmp_path, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a"])))
  with pytest.raises(ValueError, match="has no mask token"):
    pipelines.make_dataset(config, "train", word_piece_without_mask)


def _vocab(tmp_path, tokens):
  path = tmp_path / "vocab.txt"
  path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
  return path

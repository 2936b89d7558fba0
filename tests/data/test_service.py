"""Training input on the tf.data service (`tfllm.data.service`): a dispatcher and two
workers in this process, on loopback.

A finite pass of a real pipeline through the service yields the same multiset of examples as
without it (DYNAMIC sharding: none repeated, none missing), with tensorflow-text's WordPiece
(a lookup table) serialized into the workers; a resumed run reads a fresh, differently
seeded pass in a new job; settings that cannot work are one-line config errors.
"""

from __future__ import annotations

import collections

import numpy as np
import pytest
import tensorflow as tf

from tests.data.conftest import make_config, pydoc_topics, write_tfrecord
from tfllm import config as config_lib
from tfllm.data import pipelines, service, tokenizers
from tfllm.training import devices

BYTE = tokenizers.ByteLevelTokenizer()


def start_service(workers: int = 2):
  """A dispatcher and `workers` workers in this process; returns (servers, grpc address)."""
  api = tf.data.experimental.service
  dispatcher = api.DispatchServer(api.DispatcherConfig(port=0))
  address = dispatcher.target.split("://")[1]
  servers = [dispatcher] + [api.WorkerServer(api.WorkerConfig(dispatcher_address=address,
                                                              port=0))
                            for _ in range(workers)]
  return servers, dispatcher.target


@pytest.fixture(scope="module")
def dispatcher():
  servers, address = start_service()
  yield address
  del servers


def _reviews(directory, count=30):
  examples = [{"sentence": f"review {i} " + ("good film " if i % 2 else "bad plot ") * (i % 7),
               "label": "pos" if i % 2 else "neg"} for i in range(count)]
  # Three files: the dynamic splits are files, so both workers get some.
  for part in range(3):
    write_tfrecord(directory / f"reviews-{part}.tfrecord", examples[part::3])


def _rows(dataset):
  """The multiset of (token ids, label) of every example of weight > 0."""
  rows = collections.Counter()
  for features, labels, weights in dataset:
    for ids, label, weight in zip(features["token_ids"].numpy(), labels.numpy(),
                                  weights.numpy()):
      if np.sum(weight) > 0:
        rows[(tuple(ids.tolist()), int(np.sum(label)))] += 1
  return rows


@pytest.fixture(scope="module")
def reviews_config(tmp_path_factory):
  directory = tmp_path_factory.mktemp("service_reviews")
  _reviews(directory)
  config = make_config(dataset="tfrecord", files=str(directory / "reviews-*.tfrecord"),
                       sequence_length=24, text_feature="sentence", bucket_lengths=(8, 16))
  config.task.update(dict(name="sequence_classification", labels=["neg", "pos"]))
  return config


def test_a_pass_through_the_service_yields_every_example_once(dispatcher, reviews_config):
  # WordPiece runs tensorflow-text ops over a vocabulary lookup table: both are serialized
  # into the graph the workers run.
  word_piece = tokenizers.train_word_piece(
      tf.data.Dataset.from_tensor_slices(pydoc_topics(3)), vocab_size=200)
  local = _rows(pipelines.make_dataset(reviews_config, "train", word_piece, training=False))
  served = _rows(service.distribute(
      pipelines.make_dataset(reviews_config, "train", word_piece, training=False),
      dispatcher, "a-pass"))
  assert sum(local.values()) == 30
  assert served == local


def test_a_pass_of_bucketed_token_classification_yields_every_sentence_once(dispatcher,
                                                                           tmp_path):
  words = " ".join(pydoc_topics(2)).split()
  # 22 sentences of 1 to 11 real words, tagged by word length.
  write_tfrecord(tmp_path / "tagged.tfrecord", [
      {"tokens": words[7 * i:7 * i + 1 + i % 11],
       "ner": [len(w) % 3 for w in words[7 * i:7 * i + 1 + i % 11]]} for i in range(22)])
  config = make_config(dataset="tfrecord", files=str(tmp_path / "tagged.tfrecord"),
                       sequence_length=32, text_feature="tokens", label_feature="ner",
                       bucket_lengths=(8, 16))
  config.task.update(dict(name="token_classification", labels=["A", "B", "C"]))
  local = _rows(pipelines.make_dataset(config, "train", BYTE, training=False))
  served = _rows(service.distribute(
      pipelines.make_dataset(config, "train", BYTE, training=False), dispatcher, "tagged-pass"))
  assert sum(local.values()) == 22
  assert served == local


def test_the_training_pipeline_is_served_in_batches_of_its_shape(dispatcher, reviews_config):
  config = config_lib.validate(reviews_config.copy_and_resolve_references())
  local = pipelines.make_dataset(config, "train", BYTE)
  served = service.distribute(pipelines.make_dataset(config, "train", BYTE), dispatcher,
                              "training-shapes")
  for features, labels, weights in served.take(4):
    assert features["token_ids"].shape[0] == config.train.global_batch_size
    assert features["token_ids"].shape[1] in (8, 16, 24)
    assert labels.shape == weights.shape == (config.train.global_batch_size,)
  assert served.element_spec == local.element_spec


def test_a_resumed_run_reads_a_fresh_differently_seeded_pass_in_a_new_job(dispatcher,
                                                                        reviews_config):
  built = []

  def build(context, seed):
    built.append((context, seed))
    return pipelines.make_dataset(service.with_data_seed(reviews_config, seed), "train", BYTE,
                                  input_context=context)

  served = service.ServiceInput(build, dispatcher, "resume-test", seed=0)
  strategy = tf.distribute.get_strategy()
  first = next(iter(devices.distributed_dataset(strategy, served)))
  resumed = next(iter(devices.distributed_dataset(strategy, served, skip_steps=5)))
  # The step-0 pass, then a fresh pass seeded by the step: nothing skipped.
  assert [seed for _, seed in built] == [0, service.resumed_seed(0, 5)]
  assert service.resumed_seed(0, 5) not in (0, service.resumed_seed(0, 6))
  assert served.resumed_at(5).name == "resume-test-from-5"
  assert reviews_config.data.seed == 0   # the caller's config is left as it was
  # The pipeline is built whole (the service shares it out), batched per replica.
  assert all(c.num_input_pipelines == 1 and c.input_pipeline_id == 0 for c, _ in built)
  assert first[0]["token_ids"].shape[0] == resumed[0]["token_ids"].shape[0] == 4


def test_job_names_are_per_model_dir():
  assert service.job_name("/runs/a") == service.job_name("/runs/a/")
  assert service.job_name("/runs/a") != service.job_name("/other/a")
  assert service.job_name("gs://bucket/my run").startswith("tfllm-my_run-")


@pytest.mark.parametrize("address", ["localhost:5050", "http://localhost:5050",
                                     "grpc://localhost", "grpc://:5050", "grpc://host:port"])
def test_a_bad_service_address_is_one_line(address):
  config = config_lib.default_config()
  config.data.service_address = address
  with pytest.raises(config_lib.ConfigError) as error:
    config_lib.validate(config)
  message = str(error.value)
  assert "\n" not in message
  assert f"config.data.service_address={address!r}" in message and "grpc://HOST:PORT" in message


def test_document_context_on_the_service_is_refused_in_one_line():
  config = config_lib.default_config()
  config.task.update(dict(name="token_classification", labels=["O", "B-X", "I-X"]))
  config.data.update(service_address="grpc://dispatcher.internal:5050", context_tokens=16)
  with pytest.raises(config_lib.ConfigError, match=r"^config.data.context_tokens=16 cannot run "
                     r"on the tf.data service[^\n]*$"):
    config_lib.validate(config)
  config.data.context_tokens = 0
  config_lib.validate(config)


def test_two_replicas_read_per_replica_batches_of_one_shared_job(dispatcher, reviews_config):
  from tests.training.helpers import two_cpu_mirrored  # pylint: disable=g-import-not-at-top
  strategy = two_cpu_mirrored()
  assert strategy.num_replicas_in_sync == 2
  built = []

  def build(context, seed):
    built.append(context)
    return pipelines.make_dataset(reviews_config, "train", BYTE, input_context=context)

  served = service.ServiceInput(build, dispatcher, "two-replicas", seed=0)
  features, _, _ = next(iter(devices.distributed_dataset(strategy, served)))
  shards = strategy.experimental_local_results(features["token_ids"])
  # The global batch of 4, two examples per replica, from one whole pipeline.
  assert [shard.shape[0] for shard in shards] == [2, 2]
  assert [(c.num_input_pipelines, c.num_replicas_in_sync) for c in built] == [(1, 2)]


def test_a_dispatcher_that_does_not_answer_is_one_line_not_a_hang():
  from launch.local_multiworker import free_ports  # pylint: disable=g-import-not-at-top
  port, = free_ports(1)
  with pytest.raises(RuntimeError, match=rf"^no tf.data service dispatcher answers at "
                     rf"grpc://localhost:{port} within 1 s; start one [^\n]*$"):
    service.wait_for_dispatcher(f"grpc://localhost:{port}", timeout_s=1)

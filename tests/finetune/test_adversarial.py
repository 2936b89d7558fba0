"""Adversarial training on the word embeddings (`finetune.adversarial`): FGM, PGD, FreeLB."""

import json

import keras
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from tests.training.helpers import make_trainer, trainer_config, two_cpu_mirrored
from tfllm import config as config_lib
from tfllm.data import train_subset
from tfllm.finetune import adversarial
from tfllm.models import SequenceClassifier, TransformerBackbone

HIDDEN = 8
LABELS = np.array([0, 2, 1])


def tiny_model(seed=0):
  keras.utils.set_random_seed(seed)
  backbone = TransformerBackbone(vocab_size=40, num_layers=2, hidden_dim=HIDDEN, num_heads=2,
                                 intermediate_dim=16, max_sequence_length=8, causal=False,
                                 norm_first=False, num_token_types=2)
  model = SequenceClassifier(backbone, num_classes=3, pooling="mean", dropout=0.0)
  model(padded_features())
  return model


def padded_features():
  """3 sequences of 5 positions; the last two are padded to lengths 3 and 4."""
  ids = np.array([[3, 9, 4, 17, 2], [5, 6, 7, 0, 0], [11, 12, 13, 14, 0]], np.int32)
  return {"token_ids": ids, "padding_mask": ids > 0}


def loss_fn_of(model, features):
  def loss_fn(delta=None):
    extra = {} if delta is None else {"word_embeddings_delta": delta}
    logits = model(features, training=True, **extra)
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(LABELS, logits))
  return loss_fn


def section(**values):
  section = ml_collections.ConfigDict(adversarial.adversarial_defaults())
  section.update(values)
  return section


def perturbation(model, method, scale=1.0, **values):
  features = padded_features()
  attack = adversarial.AdversarialGradients(section(method=method, **values), HIDDEN)
  _, _, delta, _ = attack.first_perturbation(
      loss_fn_of(model, features), model.trainable_variables, lambda loss: loss * scale,
      tf.constant(scale), features)
  return delta.numpy()


def sequence_norms(delta):
  return np.sqrt(np.sum(np.square(delta.astype(np.float64)), axis=(1, 2)))


def test_backbone_call_is_encode_of_embed_and_a_zero_delta_changes_nothing():
  model = tiny_model()
  features = padded_features()
  backbone = model.backbone
  hidden = backbone(features).numpy()
  np.testing.assert_array_equal(
      hidden, backbone.encode(backbone.embed(features["token_ids"]),
                              features["padding_mask"]).numpy())
  logits = model(features).numpy()
  zero = tf.zeros([3, 5, HIDDEN])
  np.testing.assert_array_equal(logits, model(features, word_embeddings_delta=zero).numpy())
  # A delta moves the word embeddings only: the same as adding it to the token table's rows.
  delta = np.random.default_rng(0).normal(size=(3, 5, HIDDEN)).astype(np.float32)
  words = backbone.token_embedding(features["token_ids"]).numpy() + delta
  expected = words + backbone.position_encoding(tf.constant(words)).numpy() + \
      backbone.token_type_embedding(np.zeros((3, 5), np.int32)).numpy()
  expected = backbone.encode(backbone.embedding_norm(expected), features["padding_mask"])
  np.testing.assert_allclose(backbone(features, word_embeddings_delta=delta).numpy(),
                             expected.numpy(), atol=1e-6)


@pytest.mark.parametrize("method", ["fgm", "pgd", "freelb"])
def test_perturbation_has_norm_epsilon_per_sequence_and_spares_padding(method):
  delta = perturbation(tiny_model(), method, epsilon=0.7, step_size=0.7)
  np.testing.assert_allclose(sequence_norms(delta), [0.7] * 3, rtol=1e-6)
  padding = ~padded_features()["padding_mask"]
  assert np.all(delta[padding] == 0.0)
  assert np.all(np.abs(delta[~padding]).sum(-1) > 0)
  # pgd and freelb project onto the epsilon-ball: a longer step is cut back to epsilon.
  if method != "fgm":
    longer = perturbation(tiny_model(), method, epsilon=0.7, step_size=2.0)
    np.testing.assert_allclose(sequence_norms(longer), [0.7] * 3, rtol=1e-6)


def test_perturbation_does_not_depend_on_the_float16_loss_scale():
  keras.mixed_precision.set_global_policy("mixed_float16")
  model = tiny_model()
  small, large = (perturbation(model, "fgm", scale=s, epsilon=0.5) for s in (2.0**4, 2.0**10))
  assert small.dtype == large.dtype == np.float32
  np.testing.assert_allclose(sequence_norms(large), [0.5] * 3, rtol=1e-5)
  # Both scales are powers of two (exact in float16): the gradients differ only where the
  # smaller scale loses float16 precision, far below this tolerance.
  np.testing.assert_allclose(small, large, atol=2e-3)
  # A scale that overflows float16 (the optimizer skips that step) perturbs by nothing.
  np.testing.assert_array_equal(perturbation(model, "fgm", scale=2.0**24, epsilon=0.5), 0.0)


def test_fgm_direction_matches_a_finite_difference_gradient():
  model = tiny_model()
  features = padded_features()
  epsilon = 0.5
  delta = perturbation(model, "fgm", epsilon=epsilon)
  loss_fn = tf.function(loss_fn_of(model, features))
  # Central differences of the loss along each coordinate of each real token's embedding.
  # The loss runs in float32 (its logits are float32 under any policy): h = 1e-2 keeps the
  # rounding error (~1e-7 / h) and the truncation error (~h^2 * third derivative) near
  # 1e-5, against gradient entries of ~1e-2; hence the cosine tolerance below.
  h = 1e-2
  numeric = np.zeros((3, 5, HIDDEN))
  for i, j in zip(*np.nonzero(features["padding_mask"])):
    for k in range(HIDDEN):
      step = np.zeros((3, 5, HIDDEN), np.float32)
      step[i, j, k] = h
      numeric[i, j, k] = (float(loss_fn(tf.constant(step))) -
                          float(loss_fn(tf.constant(-step)))) / (2 * h)
  for i in range(3):
    expected = epsilon * numeric[i] / np.linalg.norm(numeric[i])
    cosine = np.sum(expected * delta[i]) / (epsilon * epsilon)
    assert cosine > 0.999, (i, cosine)
    np.testing.assert_allclose(delta[i], expected, atol=0.02 * epsilon)
  # The loss rises along r at first order by epsilon * ||g|| (per sequence, summed).
  rise = (float(loss_fn(tf.constant(1e-2 * delta))) - float(loss_fn(tf.constant(-1e-2 * delta))))
  np.testing.assert_allclose(rise / 2e-2, epsilon * sum(np.linalg.norm(numeric[i])
                                                        for i in range(3)), rtol=1e-2)


def adversarial_config(method="", **values):
  """The tiny classifier's config, 3 training steps, `finetune.adversarial` set to `values`."""
  config = trainer_config("sequence_classification", steps=3, steps_per_loop=3, eval_steps=0,
                       checkpoint_every_steps=0)
  config.finetune.adversarial.update(method=method, **values)
  return config_lib.validate(config)


def trained_weights(config, model_dir, **kwargs):
  trainer = make_trainer(config, model_dir, gradients=adversarial.gradients_fn(
      config, config.model.hidden_dim), **kwargs)
  result = trainer.train()
  return result, [v.numpy() for v in trainer.model.trainable_variables]


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
  """The tiny classifier trained without adversarial training: (TrainResult, weights)."""
  return trained_weights(adversarial_config(), tmp_path_factory.mktemp("plain"))


@pytest.mark.parametrize("method, steps", [("fgm", 1), ("pgd", 3), ("freelb", 2)])
def test_epsilon_zero_gives_the_plain_step_exactly(tmp_path, plain_run, method, steps):
  plain_result, plain = plain_run
  result, weights = trained_weights(adversarial_config(method, epsilon=0.0, steps=steps),
                                    tmp_path / method)
  assert plain_result.losses == result.losses
  for a, b in zip(plain, weights):
    np.testing.assert_array_equal(a, b)


def test_pgd_changes_the_step_and_one_device_equals_mirrored(tmp_path, plain_run):
  config = adversarial_config("pgd", epsilon=0.5, steps=2, step_size=0.3)
  one, one_weights = trained_weights(config, tmp_path / "one")
  mirrored, mirrored_weights = trained_weights(config, tmp_path / "mirrored",
                                               strategy=two_cpu_mirrored())
  np.testing.assert_allclose(one.losses, mirrored.losses, atol=1e-5)
  for a, b in zip(one_weights, mirrored_weights):
    np.testing.assert_allclose(a, b, atol=1e-5)
  _, plain = plain_run
  assert max(np.max(np.abs(a - b)) for a, b in zip(plain, one_weights)) > 1e-4


def test_the_adversarial_step_compiles_with_xla(tmp_path):
  config = adversarial_config("freelb", epsilon=0.5, steps=2, step_size=0.3)
  graph, _ = trained_weights(config, tmp_path / "graph")
  xla, _ = trained_weights(config, tmp_path / "xla", jit_compile=True)
  np.testing.assert_allclose(graph.losses, xla.losses, atol=1e-5)


@pytest.mark.parametrize("key, value, message", [
    ("method", "vat", "config.finetune.adversarial.method='vat'"),
    ("epsilon", -1.0, "config.finetune.adversarial.epsilon=-1.0 is out of range"),
    ("steps", 0, "config.finetune.adversarial.steps=0 is out of range"),
])
def test_bad_values_name_the_key(key, value, message):
  config = trainer_config("sequence_classification")
  config.finetune.adversarial[key] = value
  with pytest.raises(config_lib.ConfigError, match="^" + message.replace("(", r"\(")) as error:
    config_lib.validate(config)
  assert "\n" not in str(error.value)


def test_unsupported_tasks_and_distillation_are_refused():
  config = trainer_config("causal_lm")
  config.finetune.adversarial.method = "fgm"
  with pytest.raises(config_lib.ConfigError, match="not supported for "
                     "config.task.name='causal_lm'; accepted tasks: sequence_classification"):
    adversarial.gradients_fn(config, 32)
  config = trainer_config("sequence_classification")
  config.finetune.adversarial.method = "pgd"
  config.finetune.distill.teacher_model_dir = "/tmp/teacher"
  with pytest.raises(config_lib.ConfigError, match="cannot be combined with "
                     "config.finetune.distill.teacher_model_dir"):
    adversarial.gradients_fn(config, 32)
  config.finetune.adversarial.method = ""
  assert adversarial.gradients_fn(config, 32) is None


@pytest.mark.slow
def test_a_low_resource_fgm_job_trains_on_its_saved_subset(tfds_dir, tmp_path, finetune_section):
  from tests.finetune.test_job import short_config  # pylint: disable=import-outside-toplevel
  from tests.finetune.test_recipes import load_recipe  # pylint: disable=import-outside-toplevel
  from tfllm import training  # pylint: disable=import-outside-toplevel
  config = short_config(load_recipe("distill_bert_tiny"), tfds_dir, steps=2)
  config.data.update(train_examples=48, train_examples_seed=5)
  config.train.jit_compile = "on"    # the adversarial step compiles with XLA in the job too
  config.finetune.adversarial.update(method="fgm", epsilon=0.5)
  lines = []
  summary = training.run(config, str(tmp_path), strategy_name="one_device", log=lines.append)
  assert summary["step"] == 2 and np.isfinite(summary["eval_metrics"]["loss"])
  assert "adversarial training: fgm (epsilon 0.5, loss_weight 1)" in lines
  with open(tmp_path / "train_examples.json") as f:
    saved = json.load(f)
  assert saved["split"] == "train[:128]" and saved["split_examples"] == 128
  assert saved["indices"] == [int(i) for i in train_subset.selected_indices(128, 48, 5)]

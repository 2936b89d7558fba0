"""Loss sums, eval metrics and the FLOPs formula, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import tensorflow as tf

from tests.training.helpers import trainer_config
from tfllm.metrics import ClassificationF1, EntityF1, losses, tables
from tfllm.metrics.base import EvalMetric, LossAndAccuracy
from tfllm.metrics.tables import eval_metrics
from tfllm.training import flops


def test_weighted_cross_entropy_sums_by_hand():
  logits = tf.constant([[[0.0, 0.0], [2.0, 0.0]]])           # [1, 2, 2]
  labels = tf.constant([[1, 0]])
  weights = tf.constant([[1.0, 3.0]])
  ce_sum, w_sum = losses.cross_entropy_sums(logits, labels, weights)
  expected = math.log(2) + 3 * -math.log(math.exp(2) / (math.exp(2) + 1))
  assert float(ce_sum) == pytest.approx(expected, rel=1e-6)
  assert float(w_sum) == 4.0


def test_loss_accuracy_perplexity_from_sums():
  config = trainer_config("causal_lm")
  metric = LossAndAccuracy(config.task)
  logits = tf.constant([[[3.0, 0.0], [0.0, 3.0], [3.0, 0.0]]])
  labels = tf.constant([[0, 0, 0]])
  weights = tf.constant([[1.0, 1.0, 0.0]])
  sums = {k: float(v) for k, v in metric.sums({}, logits, labels, weights).items()}
  result = metric.result(sums)
  p = math.exp(3) / (math.exp(3) + 1)
  expected_loss = (-math.log(p) - math.log(1 - p)) / 2
  assert result["loss"] == pytest.approx(expected_loss, rel=1e-6)
  assert result["accuracy"] == pytest.approx(0.5)
  assert result["perplexity"] == pytest.approx(math.exp(expected_loss), rel=1e-6)


def test_multi_task_loss_is_the_weighted_sum_of_head_losses():
  config = trainer_config("multi_task")   # heads: sentiment (weight 1), tags (weight 0.5)
  metric = LossAndAccuracy(config.task)
  totals = {"sentiment/ce": 2.0, "sentiment/weight": 4.0, "sentiment/correct": 1.0,
            "tags/ce": 6.0, "tags/weight": 3.0, "tags/correct": 3.0}
  result = metric.result(totals)
  assert result["sentiment/loss"] == 0.5 and result["tags/loss"] == 2.0
  assert result["loss"] == pytest.approx(0.5 + 0.5 * 2.0)
  assert result["tags/accuracy"] == 1.0 and "perplexity" not in result


def test_a_task_row_of_the_metric_table_joins_the_evaluation(monkeypatch):

  class Count(EvalMetric):
    def sums(self, features, logits, labels, sample_weight):
      return {"count/n": tf.reduce_sum(tf.cast(sample_weight, tf.float32))}

    def result(self, totals):
      return {"count": totals["count/n"]}

  # A table of this one row (the real table is restored after the test).
  monkeypatch.setattr(tables, "TASK_METRICS",
                      {"token_classification": (lambda config, tokenizer: Count(),)})
  names = [type(m).__name__ for m in eval_metrics(trainer_config("token_classification"))]
  assert names == ["LossAndAccuracy", "Count"]
  assert [type(m).__name__ for m in eval_metrics(trainer_config("causal_lm"))] == [
      "LossAndAccuracy"]


def test_training_flops_per_token_and_mfu():
  # 6N + 12 L H Q T, e.g. GPT-2 small: N=124M, L=12, H=12, Q=64, T=1024.
  assert flops.training_flops_per_token(124_000_000, 12, 12, 64, 1024) == (
      6 * 124e6 + 12 * 12 * 12 * 64 * 1024)
  assert flops.model_flops_utilization(1000.0, 1e9, 1e12, 2) == pytest.approx(0.5)


@pytest.mark.parametrize("device,dtype,tf32,peak", [
    ("NVIDIA H100 80GB HBM3", "bfloat16", True, 989e12),
    ("NVIDIA H100 80GB HBM3", "float16", True, 989e12),
    ("NVIDIA H100 80GB HBM3", "float32", True, 495e12),    # TF32 tensor cores (TF's default)
    ("NVIDIA H100 80GB HBM3", "float32", False, 67e12),
    ("NVIDIA H100 PCIe", "bfloat16", True, 756e12),
    ("NVIDIA H200", "bfloat16", True, 989e12),
    ("NVIDIA A100-SXM4-80GB", "float32", True, 156e12),
    ("NVIDIA A100-SXM4-80GB", "bfloat16", True, 312e12),
    ("Tesla V100-SXM2-16GB", "float16", True, 125e12),
    ("Tesla V100-SXM2-16GB", "float32", True, 15.7e12),    # no TF32 units
    ("Tesla V100-SXM2-16GB", "bfloat16", True, None),      # no bf16 units: no MFU
    ("NVIDIA L4", "bfloat16", True, 121e12),
    ("Tesla T4", "float16", True, 65e12),
    ("TPU v4", "bfloat16", True, 275e12),
    ("TPU v4", "float32", True, 275e12),                   # float32 matmuls in bf16 passes
    ("TPU v4", "float32", False, None),
    ("TPU v5e", "bfloat16", True, 197e12),
    ("TPU v5 lite", "bfloat16", True, 197e12),
    ("TPU v5p", "bfloat16", True, 459e12),
    ("TPU v6e", "bfloat16", True, 918e12),
    ("TPU v3", "bfloat16", True, 61.5e12),                  # a core: 2 TF devices a chip
    ("TPU v2", "bfloat16", True, 22.5e12),
    ("Intel Xeon CPU", "float32", True, None),
])
def test_peak_flops_by_device_and_compute_dtype(device, dtype, tf32, peak):
  assert flops.peak_flops(device, dtype, tf32=tf32) == peak


@pytest.mark.parametrize("accelerator_type,kind", [
    ("v2-8", "TPU v2"), ("v3-32", "TPU v3"), ("v4-8", "TPU v4"), ("v5litepod-16", "TPU v5e"),
    ("v5e-4", "TPU v5e"), ("v5p-128", "TPU v5p"), ("v6e-8", "TPU v6e"), ("V4", "TPU v4"),
    ("nvidia-h100", None)])
def test_tpu_kind_of_cloud_tpu_accelerator_types(accelerator_type, kind):
  assert flops.tpu_kind(accelerator_type) == kind


class _FakeCloudTpuClient:
  def accelerator_type(self):
    return "v5litepod-8"


class _FakeTpuResolver:
  _cloud_tpu_client = _FakeCloudTpuClient()


def _fake_tpu_strategy(resolver=None):
  fake = type("FakeTPUStrategy", (tf.distribute.TPUStrategy,),
              dict(cluster_resolver=property(lambda self: resolver)))
  return object.__new__(fake)


def test_device_kind_of_a_tpu_from_its_resolver_or_the_tpu_vm_environment():
  assert flops.device_kind(_fake_tpu_strategy(_FakeTpuResolver()), environ={}) == "TPU v5e"
  assert flops.device_kind(_fake_tpu_strategy(),
                           environ={"TPU_ACCELERATOR_TYPE": "v4-32"}) == "TPU v4"
  assert flops.device_kind(_fake_tpu_strategy(), environ={}) == "TPU"
  peak = flops.device_peak("bfloat16", _fake_tpu_strategy(), environ={
      "TPU_ACCELERATOR_TYPE": "v6e-8"})
  assert (peak.flops_per_second, peak.source) == (918e12, "table: TPU v6e bfloat16")


def _fake_gpu(monkeypatch, name):
  gpu = tf.config.PhysicalDevice("/physical_device:GPU:0", "GPU")
  real = tf.config.list_physical_devices
  monkeypatch.setattr(tf.config, "list_physical_devices",
                      lambda kind=None: [gpu] if kind == "GPU" else real(kind))
  monkeypatch.setattr(tf.config.experimental, "get_device_details",
                      lambda device: {"device_name": name, "compute_capability": (9, 0)})


def test_device_peak_of_a_gpu_follows_the_compute_dtype(monkeypatch):
  _fake_gpu(monkeypatch, "NVIDIA H100 80GB HBM3")
  assert flops.device_kind() == "NVIDIA H100 80GB HBM3"
  bf16 = flops.device_peak("bfloat16")
  assert (bf16.flops_per_second, bf16.source) == (989e12, "table: NVIDIA H100 80GB HBM3 bfloat16")
  tf.config.experimental.enable_tensor_float_32_execution(False)
  try:
    assert flops.device_peak("float32").flops_per_second == 67e12
  finally:
    tf.config.experimental.enable_tensor_float_32_execution(True)
  assert flops.device_peak("float32").flops_per_second == 495e12
  assert flops.device_peak("float32", override=1e12).flops_per_second == 1e12


def test_no_peak_on_a_cpu_says_why():
  peak = flops.device_peak("float32")
  assert (peak.flops_per_second, peak.device) == (None, "CPU")
  assert peak.source == "no float32 peak known for CPU"


@pytest.mark.parametrize("policy,peak", [("float32", 495e12), ("mixed_bfloat16", 989e12),
                                         ("mixed_float16", 989e12)])
def test_the_trainer_divides_by_the_peak_of_its_compute_dtype(monkeypatch, policy, peak):
  from tfllm.training import experiment  # pylint: disable=g-import-not-at-top
  _fake_gpu(monkeypatch, "NVIDIA H100 80GB HBM3")
  config = trainer_config()
  strategy = tf.distribute.get_strategy()   # its worker_devices raise: the peak must not ask
  peak_of = experiment.mfu_peak
  assert peak_of(config, strategy, policy).flops_per_second == peak
  config.train.peak_flops_per_device = 5e12
  assert peak_of(config, strategy, policy).flops_per_second == 5e12


def test_the_bench_uses_the_same_table():
  from tfllm.bench import mfu  # pylint: disable=g-import-not-at-top
  assert mfu.table_peak_flops("NVIDIA A100-SXM4-40GB", "float32") == flops.peak_flops(
      "NVIDIA A100-SXM4-40GB", "float32")
  assert mfu.Peak is flops.Peak and mfu.device_description is flops.device_kind


def test_sampling_is_deterministic_and_greedy_follows_the_argmax():
  from tfllm.training.sampling import sample_continuation

  def model(features, training=False):  # always predicts (last token + 1) mod 5
    ids = features["token_ids"]
    return tf.one_hot((ids + 1) % 5, 5) * 10.0

  assert sample_continuation(model, [1, 2], 4, sequence_length=8, temperature=0) == [
      3, 4, 0, 1]
  a = sample_continuation(model, [1], 6, 8, temperature=5.0, seed=3)
  assert a == sample_continuation(model, [1], 6, 8, temperature=5.0, seed=3)
  with pytest.raises(ValueError, match="at least one token"):
    sample_continuation(model, [], 1, 8)


def _results(task, logits, labels, weights):
  """Every multi-task metric's results of one batch, as the eval loop computes them."""
  metrics = (LossAndAccuracy(task), ClassificationF1(task), EntityF1(task))
  totals = {}
  for metric in metrics:
    totals.update({k: float(v) for k, v in metric.sums({}, logits, labels, weights).items()})
  return {key: value for metric in metrics for key, value in metric.result(totals).items()}


def test_multi_task_evaluation_leaves_out_a_head_no_batch_reached():
  task = trainer_config("multi_task").task
  task.heads.sentiment.labels = ["neg", "pos"]
  task.heads.tags.labels = ["O", "B-PER", "I-PER"]
  # A sentiment batch: the tags head's labels carry weight 0 (multitask_data's layout).
  logits = {"sentiment": tf.constant([[2.0, 0.0], [0.0, 2.0]]),
            "tags": tf.zeros([2, 3, 3])}
  labels = {"sentiment": tf.constant([0, 0]), "tags": tf.zeros([2, 3], tf.int32)}
  weights = {"sentiment": tf.ones([2]), "tags": tf.zeros([2, 3])}
  results = _results(task, logits, labels, weights)
  assert results["sentiment/accuracy"] == 0.5 and "sentiment/class/macro/f1" in results
  assert not [key for key in results if key.startswith("tags/")]
  assert results["loss"] == pytest.approx(results["sentiment/loss"])
  # A tags batch whose sentences have no entity (all O): the head was evaluated, so it is
  # reported (F1 0 of 0 entities), and now the sentiment head is the one left out.
  weights = {"sentiment": tf.zeros([2]), "tags": tf.ones([2, 3])}
  results = _results(task, logits, labels, weights)
  assert results["tags/entity/micro/support"] == 0 and "tags/accuracy" in results
  assert not [key for key in results if key.startswith("sentiment/")]

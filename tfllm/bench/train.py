"""Training-step throughput: tokens/s, step time, MFU and peak memory, optionally next to
KerasHub's model of the same shape.

Every candidate runs the same step: forward, mean token cross-entropy, gradients and a Keras
AdamW update of all trainable variables, in one `tf.function` (XLA when `jit_compile`), on a
fixed synthetic batch (the input pipeline is measured by the `pipeline` mode). The tfllm
candidate is the model `tfllm.models.build(config)` returns (a causal LM's own head); an
encoder is compared as backbone + tied-embedding logits over every position, on both sides.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Optional

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tfllm.bench import collectives, keras_hub_models, measure, mfu
from tfllm.layers import tensor_parallel as tp
from tfllm.models import build, build_backbone
from tfllm.models import tensor_parallel as tp_models


@dataclasses.dataclass
class Candidate:
  """One model under test.

  Attributes:
    name: "tfllm" or "keras_hub".
    counted: the model whose weights make the parameter count (and FLOPs' N).
    variables: the variables the step trains.
    logits_fn: `features -> float32 logits [batch, seq, vocab]`, training mode.
    features: the batch's inputs in the model's own keys.
    loss_fn: `(features, labels) -> mean token cross-entropy`; None: the one of `logits_fn`'s
      joined logits (a tensor-parallel model's comes from its vocabulary shards).
  """
  name: str
  counted: keras.Model
  variables: List[tf.Variable]
  logits_fn: Callable
  features: Dict[str, tf.Tensor]
  loss_fn: Optional[Callable] = None

  def loss(self, features, labels):
    if self.loss_fn is not None:
      return self.loss_fn(features, labels)
    logits = self.logits_fn(features)
    return ops.mean(keras.losses.sparse_categorical_crossentropy(labels, logits,
                                                                 from_logits=True))

  @property
  def num_parameters(self) -> int:
    return int(sum(int(np.prod(v.shape)) for v in self.variables))


def synthetic_tokens(vocab_size: int, batch_size: int, sequence_length: int, seed: int = 0):
  """`(token_ids, labels)` int32 `[batch, seq]`: uniform random ids, labels shifted by one."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, vocab_size, size=(batch_size, sequence_length + 1)).astype("int32")
  return tf.constant(ids[:, :-1]), tf.constant(ids[:, 1:])


def tfllm_candidate(config, token_ids) -> Candidate:
  """The tfllm model of `config`: its causal LM (tensor-parallel over
  `config.train.model_parallel` devices when > 1), or its encoder backbone + tied logits."""
  features = {"token_ids": token_ids, "padding_mask": tf.ones_like(token_ids, tf.bool)}
  if config.model.num_token_types:
    features["token_type_ids"] = tf.zeros_like(token_ids)
  if config.train.model_parallel > 1:
    model = tp_models.build_tensor_parallel(config)

    def sharded_loss(f, labels):
      total, count = model.cross_entropy_sums(model(f, training=True), labels)
      return total / count

    return Candidate("tfllm", model, model.trainable_variables,
                     lambda f: model(f, training=True), features, loss_fn=sharded_loss)
  if config.model.causal:
    model = build(config)
    return Candidate("tfllm", model, model.trainable_variables,
                     lambda f: model(f, training=True), features)
  backbone = build_backbone(config.model)
  backbone(features)

  def logits(f):
    return ops.cast(backbone.token_embedding(backbone(f, training=True), reverse=True),
                    "float32")

  return Candidate("tfllm", backbone, backbone.trainable_variables, logits, features)


def keras_hub_candidate(config, token_ids) -> Candidate:
  """KerasHub's model of the same shape (`keras_hub_models`)."""
  kind = keras_hub_models.comparison_kind(config.model)
  padding = tf.ones_like(token_ids, tf.bool)
  if kind == "gpt2":
    backbone = keras_hub_models.gpt2_backbone(config.model)
    features = {"token_ids": token_ids, "padding_mask": padding}

    def logits(f):
      return ops.cast(backbone.token_embedding(backbone(f, training=True), reverse=True),
                      "float32")

    return Candidate("keras_hub", backbone, backbone.trainable_variables, logits, features)
  backbone = keras_hub_models.bert_backbone(config.model)
  features = {"token_ids": token_ids, "segment_ids": tf.zeros_like(token_ids),
              "padding_mask": padding}

  def encoder_logits(f):
    hidden = backbone(f, training=True)["sequence_output"]
    return ops.cast(backbone.token_embedding(hidden, reverse=True), "float32")

  # The pooler feeds no logits here (tfllm's encoder has none): it is neither trained nor
  # counted.
  pooler = {id(v) for v in backbone.get_layer("pooled_dense").trainable_variables}
  variables = [v for v in backbone.trainable_variables if id(v) not in pooler]
  return Candidate("keras_hub", backbone, variables, encoder_logits, features)


def make_train_step(candidate: Candidate, labels, jit_compile: bool,
                    learning_rate: float = 1e-4, optimizer=None) -> Callable[[], tf.Tensor]:
  """`step() -> loss`: one AdamW update of `candidate` on its fixed batch (`optimizer`: a
  built one, default `adamw(candidate, learning_rate)`)."""
  step, arguments = train_step_function(candidate, labels, jit_compile, learning_rate,
                                        optimizer)
  return lambda: step(*arguments)


def adamw(candidate: Candidate, learning_rate: float = 1e-4) -> keras.optimizers.Optimizer:
  """A Keras AdamW (loss-scaled under `mixed_float16`) built for `candidate`'s variables."""
  optimizer = keras.optimizers.AdamW(learning_rate=learning_rate)
  if keras.mixed_precision.global_policy().name == "mixed_float16":
    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
  optimizer.build(candidate.variables)
  return optimizer


def train_step_function(candidate: Candidate, labels, jit_compile: bool,
                        learning_rate: float = 1e-4, optimizer=None):
  """`(step, arguments)`: the `tf.function` of one AdamW update of `candidate` and the
  arguments `step(*arguments)` takes (its fixed batch); the HLO mode compiles it alone.
  `optimizer`: a built one (default: `adamw(candidate, learning_rate)`)."""
  optimizer = optimizer or adamw(candidate, learning_rate)
  variables = candidate.variables

  @tf.function(jit_compile=jit_compile)
  def step(features, labels):
    with tf.GradientTape() as tape:
      loss = candidate.loss(features, labels)
      scaled = optimizer.scale_loss(loss)
    gradients = tape.gradient(scaled, variables)
    optimizer.apply_gradients(zip(gradients, variables))
    return loss

  return step, (candidate.features, labels)


def check_same_shape(candidates: List[Candidate]) -> int:
  """The common parameter count, or ValueError naming each candidate's count."""
  counts = {c.name: c.num_parameters for c in candidates}
  if len(set(counts.values())) != 1:
    raise ValueError(f"the compared models differ in shape: parameters {counts}")
  return next(iter(counts.values()))


def benchmark_train(config, batch_size: Optional[int] = None, steps: int = 10,
                    repeats: int = 5, jit_compile: bool = True, compare: Optional[str] = None,
                    peak: Optional[mfu.Peak] = None, log: Callable[[str], None] = print) -> Dict:
  """Times training steps of the tfllm model of `config` (and KerasHub's, if `compare`).

  Args:
    config: full validated config; `model` gives the shape, `data.sequence_length` the
      length, `train.global_batch_size` the default batch.
    batch_size: examples per step (default `config.train.global_batch_size`).
    steps: steps per timed repeat (one repeat = `steps` calls of the step function).
    repeats: timed rounds; candidates alternate within each round.
    jit_compile: XLA-compile the step (both sides).
    compare: None or "keras_hub".
    peak: the device peak for MFU (`mfu.device_peak()`); None = no MFU.
    log: progress lines.

  Returns:
    A JSON-ready dict (see `tfllm.bench.report.train_table`).
  """
  if compare not in (None, "", "keras_hub"):
    raise ValueError(f"compare={compare!r} is not accepted; use keras_hub or nothing")
  degree = int(config.train.model_parallel)
  if degree > 1:
    if compare:
      raise ValueError(f"config.train.model_parallel={degree}: --compare={compare} is not "
                       "accepted (KerasHub has no tensor-parallel model on TF); leave it out")
    if jit_compile:
      # One program over several devices is not one XLA cluster (as in tfllm-train).
      log(f"[train] model_parallel={degree}: the step runs without XLA")
      jit_compile = False
  if steps < 1:
    raise ValueError(f"steps={steps} must be >= 1")
  batch_size = int(batch_size or config.train.global_batch_size)
  sequence_length = int(config.data.sequence_length)
  if sequence_length > config.model.max_sequence_length:
    raise ValueError(f"data.sequence_length={sequence_length} exceeds "
                     f"model.max_sequence_length={config.model.max_sequence_length}")
  token_ids, labels = synthetic_tokens(config.model.vocab_size, batch_size, sequence_length)
  candidates = [tfllm_candidate(config, token_ids)]
  if compare:
    candidates.append(keras_hub_candidate(config, token_ids))
    check_same_shape(candidates)
  model = config.model
  head_dim = model.head_dim or model.hidden_dim // model.num_heads

  runners, details = {}, {}
  for candidate in candidates:
    optimizer = adamw(candidate)
    step = make_train_step(candidate, labels, jit_compile, optimizer=optimizer)
    # Where the weights and AdamW slots live, measured on the variables' devices.
    device_bytes = tp.variable_bytes_by_device(list(candidate.variables) +
                                               list(optimizer.variables))
    log(f"[train] {candidate.name}: compiling and warming up "
        f"({candidate.num_parameters:,} parameters)")
    for _ in range(2):
      step().numpy()

    def run(step=step):
      loss = None
      for _ in range(steps):
        loss = step()
      return loss.numpy()

    runners[candidate.name] = run
    communication = None
    if degree > 1:
      log(f"[train] weights + AdamW per device: " + ", ".join(
          f"{device} {size / 2**20:.1f} MiB" for device, size in sorted(device_bytes.items())))
      communication = collectives.collective_share(step)
      log(f"[train] collectives: {communication['share'] * 100:.1f}% of the op time "
          f"({communication['collective_ms']:.1f} of {communication['op_ms']:.1f} ms over "
          f"{communication['calls']} profiled steps; copies between devices "
          f"{communication['transfer_ms']:.1f} ms)")
    flops_per_token = mfu.training_flops_per_token(candidate.counted, model.num_layers,
                                                   model.num_heads, head_dim, sequence_length)
    details[candidate.name] = dict(
        parameters=candidate.num_parameters, model_parallel=degree,
        device_bytes=device_bytes, collectives=communication,
        flops_parameters=mfu.flops_parameter_count(candidate.counted),
        flops_per_token=flops_per_token)

  log(f"[train] timing {repeats} rounds of {steps} steps, alternating {list(runners)}")
  timings = measure.time_alternately(runners, repeats, memory=measure.PeakMemory())
  tokens_per_step = batch_size * sequence_length
  results = {}
  for name, timing in timings.items():
    step_seconds = [s / steps for s in timing["seconds"]]
    tokens_per_second = [tokens_per_step / s for s in step_seconds]
    entry = dict(details[name], step_seconds=measure.summarize(step_seconds),
                 step_cpu_seconds=measure.summarize([s / steps for s in timing["cpu_seconds"]]),
                 tokens_per_second=measure.summarize(tokens_per_second),
                 memory=measure.max_memory(timing["memory"]), mfu=None)
    if peak is not None and peak.flops_per_second:
      entry["mfu"] = measure.summarize(
          [t * entry["flops_per_token"] / peak.flops_per_second for t in tokens_per_second])
    results[name] = entry
  ratios = {}
  if compare:
    ratios["tokens_per_second tfllm/keras_hub"] = measure.ratio_summary(
        timings["keras_hub"]["seconds"], timings["tfllm"]["seconds"])
    ratios["cpu time per step keras_hub/tfllm"] = measure.ratio_summary(
        timings["keras_hub"]["cpu_seconds"], timings["tfllm"]["cpu_seconds"])
  return dict(
      mode="train", batch_size=batch_size, sequence_length=sequence_length, steps=steps,
      repeats=repeats, jit_compile=bool(jit_compile),
      dtype_policy=keras.mixed_precision.global_policy().name,
      shape=dict(num_layers=model.num_layers, hidden_dim=model.hidden_dim,
                 num_heads=model.num_heads, head_dim=head_dim,
                 intermediate_dim=model.intermediate_dim, vocab_size=model.vocab_size,
                 attention_block_size=model.attention_block_size),
      formula=mfu.FORMULA, peak=None if peak is None else dataclasses.asdict(peak),
      models=results, ratios=ratios)

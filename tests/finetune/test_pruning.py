"""Magnitude pruning: schedule, mask rules against NumPy, masks applied inside the train step
(one device and mirrored), exact resume mid-schedule, config errors."""

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from tests.training.helpers import make_trainer, trainer_config, two_cpu_mirrored
from tfllm import config as config_lib
from tfllm.finetune import pruning as pruning_lib


def _pruning(**values):
  section = ml_collections.ConfigDict(config_lib.default_config().finetune.pruning.to_dict())
  section.update(values)
  return section


def _pruned_config(steps=12, **pruning):
  config = trainer_config("sequence_classification", steps=steps, steps_per_loop=3,
                       checkpoint_every_steps=6, eval_steps=0)
  config.train.optimizer.decay_steps = 12
  config.finetune.pruning.update(dict(dict(target_sparsity=0.75, initial_sparsity=0.25,
                                           begin_step=2, end_step=8, frequency=3), **pruning))
  return config_lib.validate(config)


# ---------------------------------------------------------------- schedule


def test_schedule_follows_zhu_and_gupta():
  p = _pruning(target_sparsity=0.8, initial_sparsity=0.1, begin_step=10, end_step=40,
               frequency=10)
  for t in range(0, 60):
    expected = 0.0 if t < 10 else 0.8 + (0.1 - 0.8) * (1 - min(1.0, (t - 10) / 30)) ** 3
    assert pruning_lib.sparsity_at(t, p, 100) == pytest.approx(expected, abs=1e-12)
    in_graph = pruning_lib.sparsity_tensor(tf.constant(t, tf.int64), p, 100)
    if t >= 10:
      assert float(in_graph) == pytest.approx(expected, abs=1e-12)
    assert bool(pruning_lib.due_tensor(tf.constant(t, tf.int64), p, 100)) == (t in (10, 20, 30, 40))
    assert pruning_lib.mask_due(t, p, 100) == (t in (10, 20, 30, 40))
  # end_step 0 = train.steps; an end off the frequency grid still gets its update.
  p = _pruning(target_sparsity=0.5, begin_step=0, end_step=0, frequency=4)
  assert pruning_lib.mask_due(10, p, 10) and not pruning_lib.mask_due(9, p, 10)
  assert pruning_lib.sparsity_at(10, p, 10) == 0.5


# ---------------------------------------------------------------- mask rules vs NumPy


def _numpy_keep_largest(values, sparsity):
  flat = values.reshape(-1)
  pruned = int(np.round(sparsity * flat.size))
  order = np.argsort(-flat, kind="stable")   # ties: the lower index first, as top_k
  mask = np.zeros(flat.size, np.float32)
  mask[order[:flat.size - pruned]] = 1.0
  return mask.reshape(values.shape)


def _magnitudes(seed=0):
  rng = np.random.default_rng(seed)
  shapes = [(8, 12), (12, 8), (16, 4)]
  # Rounded values: many ties, which the rule must break like the reference.
  return [np.round(np.abs(rng.normal(size=s)) * (i + 1), 1).astype(np.float32)
          for i, s in enumerate(shapes)]


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9])
def test_per_layer_and_global_thresholds_match_numpy(sparsity):
  mags = _magnitudes()
  per_layer = pruning_lib.unstructured_masks([tf.constant(m) for m in mags],
                                             tf.constant(sparsity, tf.float64), "per_layer")
  for got, m in zip(per_layer, mags):
    np.testing.assert_array_equal(got.numpy(), _numpy_keep_largest(m, sparsity))
  global_masks = pruning_lib.unstructured_masks([tf.constant(m) for m in mags],
                                                tf.constant(sparsity, tf.float64), "global")
  flat = np.concatenate([m.reshape(-1) for m in mags])
  expected = np.split(_numpy_keep_largest(flat, sparsity),
                      np.cumsum([m.size for m in mags])[:-1])
  for got, want, m in zip(global_masks, expected, mags):
    np.testing.assert_array_equal(got.numpy(), want.reshape(m.shape))
  # Global and per-layer differ here: the layers' scales differ (x1, x2, x3).
  assert not all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(per_layer, global_masks))


def test_two_of_four_keeps_the_two_largest_of_each_input_group():
  magnitude = _magnitudes(1)[0]            # [8 inputs, 12 outputs]
  mask = pruning_lib.n_m_mask(tf.constant(magnitude), 2, 4).numpy()
  groups = mask.reshape(2, 4, 12)
  np.testing.assert_array_equal(groups.sum(axis=1), np.full((2, 12), 2.0))
  for g in range(2):
    for col in range(12):
      block = magnitude[4 * g:4 * g + 4, col]
      keep = np.argsort(-block, kind="stable")[:2]
      np.testing.assert_array_equal(np.nonzero(groups[g, :, col])[0], np.sort(keep))


# ---------------------------------------------------------------- config


@pytest.mark.parametrize("key, value, words", [
    ("structure", "4:2", "N:M"),
    ("structure", "sparse", "N:M"),
    ("target_sparsity", 1.0, "out of range"),
    ("scope", "layer", "per_layer"),
    ("frequency", 0, "out of range"),
    ("include", ("(",), "regular expression"),
])
def test_bad_pruning_values_raise_one_line(key, value, words):
  config = config_lib.default_config()
  config.finetune.pruning[key] = value
  with pytest.raises(config_lib.ConfigError, match=words) as error:
    config_lib.validate(config)
  assert "\n" not in str(error.value) and "config.finetune.pruning" in str(error.value)


@pytest.mark.parametrize("values, words", [
    (dict(target_sparsity=0.5, initial_sparsity=0.6), "initial_sparsity"),
    (dict(structure="2:4", target_sparsity=0.5), "must be 0"),
    (dict(structure="2:4", scope="global"), "per_layer"),
    (dict(target_sparsity=0.5, begin_step=10, end_step=5), "end_step"),
    (dict(target_sparsity=0.5, strategy="lora"), "lora"),
])
def test_inconsistent_pruning_settings_raise(values, words):
  config = config_lib.default_config()
  strategy = values.pop("strategy", None)
  if strategy:
    config.finetune.strategy = strategy
  config.finetune.pruning.update(values)
  with pytest.raises(config_lib.ConfigError, match=words):
    config_lib.validate(config)


# ---------------------------------------------------------------- inside the train step


def _kernels_and_masks(trainer):
  hook = trainer.step_hooks[0]
  masks = {path: hook.state.masks[pruning_lib._key(path)].numpy() for path in hook.paths}  # pylint: disable=protected-access
  weights = {pruning_lib.relative_path(trainer.model, v): v.numpy()
             for v in trainer.model.weights}
  return weights, masks


def _compiled_functions(trainer):
  """{name: op types it runs, nested functions (branches, calls) included} of each
  XLA-compiled function in the trainer's traced train loop."""
  loop, = trainer._train_loop_fn._list_all_concrete_functions()  # pylint: disable=protected-access
  library = {f.signature.name: f for f in loop.graph.as_graph_def().library.function}

  def ops(name, seen):
    if name in seen or name not in library:
      return set()
    seen.add(name)
    found = set()
    for node in library[name].node_def:
      found.add(node.op)
      for attr in node.attr.values():
        for function in [attr.func] + list(attr.list.func):
          found |= ops(function.name, seen)
    return found

  return {name: ops(name, set()) for name, f in library.items()
          if "_XlaMustCompile" in f.attr and f.attr["_XlaMustCompile"].b}


def test_masks_zero_the_weights_after_updates_and_leave_the_rest_dense(tmp_path):
  config = _pruned_config(steps=12)
  config.train.jit_compile = "on"   # the job's default on one CPU: the step under XLA
  trainer = make_trainer(config, tmp_path)
  assert trainer.jit_compile
  trainer.train()
  weights, masks = _kernels_and_masks(trainer)
  hook = trainer.step_hooks[0]
  # The default selection: the backbone's dense kernels, nothing else.
  assert sorted(masks) == sorted(p for p in weights if p.startswith("backbone/")
                                 and p.endswith("/kernel"))
  for path, mask in masks.items():
    # 0.75 of each kernel pruned (the schedule ended at step 8), and the kernel zero there
    # although AdamW moved those weights at every step since.
    assert np.mean(mask == 0) == pytest.approx(0.75, abs=1 / mask.size), path
    assert np.all(weights[path][mask == 0] == 0), path
    assert np.all(weights[path][mask == 1] != 0), path
  for path, value in weights.items():
    if path not in masks:   # embeddings, norms, biases, the classifier: no forced zeros
      assert np.count_nonzero(value == 0) < max(2, value.size // 50), path
  scalars = hook.summary_scalars()
  assert scalars["sparsity/overall"] == pytest.approx(0.75, abs=0.01)
  assert len(scalars) == len(masks) + 1
  assert pruning_lib.weight_sparsity(trainer.model, config.finetune.pruning) == pytest.approx(
      scalars["sparsity/overall"])
  # The mask rule (a top-k of each kernel) is compiled apart from the step: inside the
  # step's XLA program its branch ran at every step, due or not (docs/finetuning.md).
  compiled = _compiled_functions(trainer)
  step, = (ops for name, ops in compiled.items() if "_replica_train_step" in name)
  assert "TopKV2" not in step
  hook, = (ops for name, ops in compiled.items() if "_replica_after_update" in name)
  assert "TopKV2" in hook


def test_two_of_four_in_training(tmp_path):
  config = _pruned_config(steps=4, target_sparsity=0.0, initial_sparsity=0.0,
                          structure="2:4", begin_step=1)
  trainer = make_trainer(config, tmp_path)
  trainer.train()
  weights, masks = _kernels_and_masks(trainer)
  for path in masks:
    kernel = weights[path]
    nonzero = (kernel != 0).reshape(kernel.shape[0] // 4, 4, -1).sum(axis=1)
    np.testing.assert_array_equal(nonzero, 2, err_msg=path)


def test_mirrored_replicas_hold_identical_masks_equal_to_one_device(tmp_path):
  config = _pruned_config(steps=9)
  single = make_trainer(config, tmp_path / "one")
  single.train()
  mirrored = make_trainer(config, tmp_path / "two", strategy=two_cpu_mirrored())
  mirrored.train()
  hook = mirrored.step_hooks[0]
  for mask in hook.state.masks.values():
    copies = [v.numpy() for v in mask.values]
    assert len(copies) == 2
    np.testing.assert_array_equal(copies[0], copies[1])
  for kernel in hook._kernels:  # pylint: disable=protected-access
    copies = [v.numpy() for v in kernel.value.values]
    np.testing.assert_array_equal(copies[0], copies[1])
  # Same data, same updates up to summation order: the same weights pruned.
  _, single_masks = _kernels_and_masks(single)
  _, mirrored_masks = _kernels_and_masks(mirrored)
  for path, mask in single_masks.items():
    assert np.mean(mask != mirrored_masks[path]) < 0.01, path


def test_resume_mid_schedule_is_exact(tmp_path):
  # One threshold over every kernel here (the per-layer rule runs in the tests above).
  straight = make_trainer(_pruned_config(steps=12, scope="global"), tmp_path / "straight")
  straight.train()
  # Stops at step 6 of the schedule's 2..8.
  make_trainer(_pruned_config(steps=6, scope="global"), tmp_path / "resumed").train()
  relaunched = make_trainer(_pruned_config(steps=12, scope="global"), tmp_path / "resumed")
  assert relaunched.restore().endswith("ckpt-6")
  _, restored_masks = _kernels_and_masks(relaunched)
  restored_zeros = sum(int(np.sum(m == 0)) for m in restored_masks.values())
  total = sum(m.size for m in restored_masks.values())
  assert 0 < restored_zeros < 0.75 * total
  relaunched.train()
  weights_a, masks_a = _kernels_and_masks(straight)
  weights_b, masks_b = _kernels_and_masks(relaunched)
  for path in masks_a:
    np.testing.assert_array_equal(masks_a[path], masks_b[path], err_msg=path)
  assert sum(int(np.sum(m == 0)) for m in masks_a.values()) == round(0.75 * total)
  for path in weights_a:
    np.testing.assert_array_equal(weights_a[path], weights_b[path], err_msg=path)

